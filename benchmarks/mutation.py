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
                 "tests/test_policy_file.py", "tests/test_bad_inputs_policy.py", "tests/test_policy_contracts.py",
                 "tests/test_policy_file_messages.py"]
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
        "mutate": ["trainer/fit.py", "trainer/loss_threshold.py", "trainer/evaluate.py", "trainer/table.py"],
        "tests": ["tests/test_trainer_fit.py", "tests/test_trainer_loss_threshold.py", "tests/test_trainer_evaluate.py",
                  "tests/test_table_search.py", "tests/test_bad_inputs_trainer.py", "tests/test_trainer_contracts.py"],
    },
    # The webui job's decision path and its settings. The host tests that run a real ComfyUI (a server subprocess)
    # or load the extension the webui's way (under another package name) reach code mutmut cannot switch, so the
    # in-process tests of these modules are the ones that count. ComfyUI's decision path (nodes/step_inputs.py) has
    # in-process tests too (test_comfy_decision_path.py), but each mutant's process would import ComfyUI again (~30 s
    # of CPU, an hour for its ~185 mutants), and mutmut's CPU limit cuts such runs short as timeouts, which count as
    # killed: it is left out (see benchmarks/results/mutation.md).
    "hosts": {
        "mutate": ["a1111_script/job.py", "a1111_script/settings.py"],
        "tests": ["tests/test_a1111_settings.py", "tests/test_hosts_contracts.py"],
    },
    "policy-files": {
        "mutate": ["policy/features.py", "policy/fileformat.py", "policy/bounded.py", "policy/cache.py",
                   "policy/describe.py", "policy/errors.py"],
        "tests": [*_POLICY_TESTS, "tests/test_a1111_settings.py"],  # the webui's policy store: cache and describe
    },
}

# Surviving mutants judged equivalent (no input the code accepts tells them apart), one per line with the reason after
# "#"; benchmarks/results/mutation.md explains each. A rerun skips them and the summary marks them.
EQUIVALENT = ROOT / "benchmarks" / "results" / "mutation_equivalent.txt"


def equivalent() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    entries = (line.split("#", 1) for line in EQUIVALENT.read_text(encoding="utf-8").splitlines() if line.strip())
    return {name.strip(): (reason[0].strip() if reason else "") for name, *reason in entries}


# Never copied into the stage: the environment, caches and earlier runs.
SKIP = {".venv", ".cache", ".git", "build", "mutants", "__pycache__", ".pytest_cache", ".hypothesis", "outputs"}


def stage(group: str, where: Path) -> Path:
    """A fresh STAGE/adadiff copy of the repository plus the mutmut configuration for ``group``."""
    if where.exists():
        shutil.rmtree(where)
    package = where / "adadiff"
    shutil.copytree(ROOT, package, ignore=lambda _dir, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    write_config(group, where)
    return where


def write_config(group: str, where: Path) -> None:
    """mutmut's configuration for ``group``: the modules it mutates and the test files it runs, as GROUPS says now."""
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


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the staged copy, not a worktree shim, must be the `adadiff` the tests import
    return env


def run(where: Path, children: int) -> None:
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)], cwd=where, env=_env(),
                   check=True)


def rerun_unkilled(where: Path, children: int, survivors_only: bool = False) -> None:
    """After adding tests: bring the repository's tests into a staged run and test again only the mutants it has not
    killed (survivors, mutants without tests, and those a stopped run never reached); killed ones stay killed, since
    tests were only added (to the files or to the group's list). mutmut maps the new tests to the functions they
    reach before running."""
    write_config(where.name, where)
    for copy in (where / "adadiff" / "tests", where / "mutants" / "adadiff" / "tests"):
        shutil.copytree(ROOT / "tests", copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    names = [line.strip().rsplit(": ", 1)[0] for line in results(where).splitlines()
             if ": " in line and line.strip().rsplit(": ", 1)[1] not in ("killed", "timeout")
             and line.strip().rsplit(": ", 1)[0] not in equivalent()
             and not (survivors_only and line.strip().endswith(": not checked"))]
    if names:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names], cwd=where,
                       env=_env(), check=True)


def results(where: Path) -> str:
    """mutmut's verdict on every mutant of a staged run, finished or not ("not checked": not run yet)."""
    return subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=where, env=_env(),
                          check=True, capture_output=True, text=True).stdout


def changed_lines(where: Path, name: str) -> list[str]:
    """The lines a mutant changes, as mutmut shows them."""
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=where, env=_env(), capture_output=True,
                          text=True).stdout
    return [f"      {line.strip()}" for line in diff.splitlines() if re.match(r"[-+](?![-+])", line)]


def summarise(group: str, verdicts: str, where: Path | None = None) -> str:
    """Per module: mutants tried, killed (a test failed or timed out) and not killed; the names of those not killed.
    Mutants not yet run ("not checked", after a stopped run) are counted apart, never as killed."""
    by_module: dict[str, dict[str, list[str]]] = {}
    for line in verdicts.splitlines():
        match = re.match(r"\s*(\S+)__mutmut_\d+: (.+)$", line)
        if match:
            name, status = line.strip().rsplit(": ", 1)
            module = re.sub(r"\.x[_ǁ].*$", "", match.group(1))
            by_module.setdefault(module, {}).setdefault(status, []).append(name)
    out, left_out = [], []
    for module, statuses in sorted(by_module.items()):
        killed = len(statuses.get("killed", [])) + len(statuses.get("timeout", []))
        not_run = len(statuses.get("not checked", []))
        tried = sum(len(names) for names in statuses.values()) - not_run
        unkilled = [n for status, names in statuses.items() if status not in ("killed", "timeout", "not checked")
                    for n in names]
        same = sum(name in equivalent() for name in unkilled)
        line = (f"{module}: {tried} mutants tried, {killed} killed, {tried - killed} not killed "
                f"({100 * (tried - killed) / max(tried, 1):.1f}% surviving; {same} of them equivalent)")
        out.append(line + (f"; {not_run} not run" if not_run else ""))
        for status, names in sorted(statuses.items()):
            if status not in ("killed", "timeout", "not checked"):
                for name in sorted(names):
                    reason = equivalent().get(name)
                    mark = f" (equivalent: {reason})" if reason is not None else ""
                    left_out += [f"  {status}: {name}{mark}"] + (changed_lines(where, name) if where else [])
    return "\n".join([f"mutmut {group}"] + out + ["not killed:"] + left_out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", default=list(GROUPS), help=f"any of {', '.join(GROUPS)}")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once")
    parser.add_argument("--rerun-unkilled", action="store_true",
                        help="in the staged runs, test again with the current tests only the mutants not yet killed")
    parser.add_argument("--survivors-only", action="store_true",
                        help="with --rerun-unkilled: only the mutants that ran and survived, not those never reached")
    parser.add_argument("--summarise-only", action="store_true",
                        help="summarise the staged runs as they stand (e.g. one stopped early) without running")
    args = parser.parse_args()
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    for group in args.groups:
        where = args.stage / group
        if args.rerun_unkilled:
            rerun_unkilled(where, args.children, args.survivors_only)
        elif not args.summarise_only:
            run(stage(group, where), args.children)
        summary = summarise(group, results(where), where)
        print(summary)
        results_dir = ROOT / "benchmarks" / "results"
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / f"mutation_{group}.txt").write_text(summary)


if __name__ == "__main__":
    main()
