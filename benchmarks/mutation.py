"""Mutation testing of the decision-making code with mutmut 3 (`make mutation`).

mutmut names a mutant after the module path it derives from the file path, and activates it only when that name
equals the running function's ``__module__``. This repository's root *is* the package ``adadiff``, so mutmut run
from the root would name ``policy/decision.py`` ``policy.decision`` while the tests import
``adadiff.policy.decision``: no mutant would ever run. The driver therefore stages a copy of the package as
``STAGE/adadiff/`` and runs mutmut in STAGE, where the two names agree. Each group mutates its modules and runs only
the fast test files that exercise them (mutmut further narrows each mutant to the tests that reached its function).

    python benchmarks/mutation.py [GROUP ...]      # groups: policy, trainer, hosts, policy-files (default: all)

Per group it prints mutmut's result counts and the surviving mutants, and writes them to
``benchmarks/results/mutation_<group>.txt``. ``benchmarks/results/mutation.md`` explains each survivor.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_POLICY_TESTS = ["tests/test_policy_decision.py", "tests/test_policy_network.py", "tests/test_policy_features.py",
                 "tests/test_policy_file.py", "tests/test_bad_inputs_policy.py", "tests/test_policy_contracts.py"]
# Tests that take seconds each (a CLI in a subprocess, a 4 GB allocation refused, long Hypothesis runs): every
# surviving mutant of a function they reach would rerun them, so they stay out (the CLI is not a mutated module).
_SLOW_TESTS = ["tests/test_bad_inputs_policy.py::test_inspect_subprocess_exits_2_without_traceback_on_a_refused_file",
               "tests/test_bad_inputs_policy.py::test_a_crafted_huge_config_is_refused_without_allocating"]

# Run in this order: the decision itself first, then the trainer's fit and evaluation, the hosts' decision paths,
# and the rest of the policy package (file format, feature extraction, bounded parsing).
GROUPS = {
    "policy": {
        "mutate": ["policy/decision.py", "policy/network.py"],
        "tests": _POLICY_TESTS,
    },
    "trainer": {
        "mutate": ["trainer/fit.py", "trainer/evaluate.py", "trainer/table.py"],
        "tests": ["tests/test_trainer_fit.py", "tests/test_trainer_evaluate.py", "tests/test_table_search.py",
                  "tests/test_bad_inputs_trainer.py", "tests/test_trainer_contracts.py"],
    },
    "hosts": {
        "mutate": ["nodes/step_inputs.py", "a1111_script/job.py"],
        "tests": ["tests/test_comfy_nodes.py", "tests/test_a1111_extension.py", "tests/test_a1111_samplers.py",
                  "tests/test_hosts_contracts.py"],
    },
    "policy-files": {
        "mutate": ["policy/features.py", "policy/fileformat.py", "policy/bounded.py", "policy/cache.py",
                   "policy/describe.py", "policy/errors.py"],
        "tests": _POLICY_TESTS,
    },
}

# Never copied into the stage: the environment, caches and earlier runs.
SKIP = {".venv", ".cache", ".git", "build", "mutants", "__pycache__", ".pytest_cache", ".hypothesis", "outputs"}


def stage(group: str, where: Path) -> Path:
    """A fresh STAGE/adadiff copy of the repository plus the mutmut configuration for ``group``."""
    if where.exists():
        shutil.rmtree(where)
    package = where / "adadiff"
    shutil.copytree(ROOT, package, ignore=lambda _dir, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    spec = GROUPS[group]
    tests = [t for t in spec["tests"] if (ROOT / t).exists()]
    lines = ["[mutmut]", "source_paths ="]
    lines += [f"    adadiff/{path}" for path in spec["mutate"]]
    lines += ["also_copy =", "    adadiff/", "pytest_add_cli_args_test_selection ="]
    lines += [f"    adadiff/{path}" for path in tests]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -q"]
    lines += [f"    --deselect=adadiff/{test}" for test in _SLOW_TESTS]
    lines += ["process_isolation = forkserver", "use_git_change_detection = false", ""]
    (where / "setup.cfg").write_text("\n".join(lines))
    return where


def run(group: str, where: Path, children: int) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the staged copy, not a worktree shim, must be the `adadiff` the tests import
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run(mutmut + ["run", "--max-children", str(children)], cwd=where, env=env, check=True)
    results = subprocess.run(mutmut + ["results", "--all", "true"], cwd=where, env=env, check=True,
                             capture_output=True, text=True).stdout
    return results


def summarise(group: str, results: str) -> str:
    statuses: dict[str, list[str]] = {}
    for line in results.splitlines():
        match = re.match(r"\s*(\S+): (.+)$", line)
        if match:
            statuses.setdefault(match.group(2).strip(), []).append(match.group(1))
    total = sum(len(names) for names in statuses.values())
    killed = len(statuses.get("killed", [])) + len(statuses.get("timeout", []))
    out = [f"mutmut {group}: {total} mutants, {killed} killed, {total - killed} not killed "
           f"({100 * (total - killed) / max(total, 1):.1f}% surviving)"]
    for status, names in sorted(statuses.items()):
        out.append(f"  {status}: {len(names)}")
    for status, names in sorted(statuses.items()):
        if status not in ("killed", "timeout"):
            out += [f"    {status}: {name}" for name in sorted(names)]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", default=list(GROUPS), help=f"any of {', '.join(GROUPS)}")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once")
    args = parser.parse_args()
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    for group in args.groups:
        where = stage(group, args.stage / group)
        summary = summarise(group, run(group, where, args.children))
        print(summary)
        results_dir = ROOT / "benchmarks" / "results"
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / f"mutation_{group}.txt").write_text(summary)


if __name__ == "__main__":
    main()
