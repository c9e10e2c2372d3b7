"""Every measured figure the README quotes from a stored result file equals that file's number, to the precision the
README prints; the stored reports hold the keys those figures come from; benchmarks/results/README.md lists every
stored result. Numbers are read from the README and from the files, never written here: edit a figure without
re-running (or re-run without editing the figure) and a test here fails."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open

from adadiff.policy import PolicyConfig, PolicyFeatures, init_policy
from adadiff.trainer import evaluate as evaluate_module
from adadiff.trainer.evaluate import evaluate_policy
from adadiff.trainer.report import markdown, write_report
from adadiff.trainer.table import RewardTable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # one line: figures wrap across lines
NUMBER = r"([+-]?\d[\d,]*(?:\.\d+)?)"  # a figure as printed: sign, thousands commas, decimals


def load(source: str):
    """A stored result: JSON as a dict, text as a string, anything else (the model folder) as its path."""
    path = ROOT / source
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    return path


def text(pattern: str) -> Callable[[str], float]:
    """A getter for a text result: the first group of the first match of ``pattern``, as a number."""
    def get(content: str) -> float:
        found = re.search(pattern, content, re.DOTALL)
        assert found, f"the stored result no longer holds {pattern!r}: re-run its command or update this test"
        return float(found.group(1).replace(",", ""))
    return get


def printed(value: float, shown: str) -> str:
    """``value`` printed as ``shown`` is: same decimals, sign mark and thousands commas; halves round up once float32
    noise below 1e-6 is gone (a stored 0.5849999785 is the 0.585 a reader rounds to 0.59)."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    rounded = Decimal(format(value, ".6f")).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    return format(rounded, ("+" if shown.startswith("+") else "") + ("," if "," in shown else "") + f".{decimals}f")


def readme_figures(pattern: str) -> tuple[str, ...]:
    """The figures, as printed, of the one README sentence that ``pattern`` matches."""
    found = re.findall(pattern.replace("#", NUMBER), README)
    assert len(found) == 1, (f"README should say {pattern!r} exactly once (found {len(found)}): if its wording "
                             f"changed, update the pattern here")
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def param_count(part: str) -> Callable[[Path], float]:
    """Millions of parameters in the embedded model's ``part``, from the tensor shapes in its safetensors header."""
    def get(model: Path) -> float:
        with safe_open(next((model / part).glob("*.safetensors")), "pt") as handle:
            return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys()) / 1e6
    return get


@dataclass(frozen=True)
class Claim:
    """A README sentence (``#`` marks each figure) and, per figure, where the stored result holds it."""
    readme: str
    source: str
    getters: tuple[Callable, ...]

    def __str__(self) -> str:
        return f"{self.source}: {self.readme[:60]}"


def claim(readme: str, source: str, *getters: Callable) -> Claim:
    return Claim(readme, source, getters)


DEMO, CHEAP, RUN, RUN_LOG = ("benchmarks/results/demo_report.json", "benchmarks/results/cheap_table.txt",
                             "benchmarks/results/convergence_run_report.json", "benchmarks/results/convergence_run.txt")
CHEAP_KNOWN = "benchmarks/results/cheap_table_known_answer.txt"
POLICY_SPEED, FIT_SPEED = "benchmarks/results/policy_speed.txt", "benchmarks/results/fit_speed.txt"
KNOWN_QUALITY = "benchmarks/results/known_answer_quality.json"
ANALYSIS, MODEL = "trainer/embedded/reports/analysis.json", "trainer/embedded/model"
DEFAULT_POLICY = r"what fit writes by default.*?"  # the first block of policy_speed.txt
CROSS_SEED = "cross_seed_oracle"


def no_signal(result: dict) -> dict:
    """The known-answer benchmark's row for the table whose difficulties ignore the words."""
    return next(row for row in result["rows"] if row["table"] == "no signal")


CLAIMS = [
    # `make demo` (README "Set-up")
    claim(r"objective the policy takes # mean steps \(#% fewer than 50\) at #% less IQS, # ± # \*below\*", DEMO,
          lambda r: r["policy"]["mean_steps"], lambda r: r["saving_vs_max"]["steps_pct"],
          lambda r: r["iqs_drop_vs_max_pct"], lambda r: -r["fixed_matched"]["policy_minus"],
          lambda r: r["fixed_matched"]["policy_minus_se"]),
    claim(r"use a fixed # steps \(#% less IQS than 50 steps, #% fewer steps\)", DEMO,
          *(lambda r, k=k: r["fixed_within_tolerance"][k] for k in ("steps", "iqs_drop_pct", "saving_pct"))),
    # `make benchmark` (README "Size and speed", "Fit speed")
    claim(r"is # MB for SD1\.5, # MB for SDXL", POLICY_SPEED,
          text(DEFAULT_POLICY + r"sd15 .*?file (\S+) MB"), text(DEFAULT_POLICY + r"sdxl .*?file (\S+) MB")),
    claim(r"a decision takes # ms \(SD1\.5\), # ms \(SD2\) and # ms \(SDXL\) median", POLICY_SPEED,
          *(text(DEFAULT_POLICY + family + r" .*?median (\S+) ms") for family in ("sd15", "sd2 ", "sdxl"))),
    claim(r"default fit of a #-prompt known-answer table", FIT_SPEED, text(r"table: (\d+) prompts")),
    claim(r"\*\*# s\*\* for # passes \(# updates; a reference 2048² fp32 matrix product took # ms, load average #\)",
          FIT_SPEED, text(r"fit: (\S+) s for"), text(r"for (\d+) passes"), text(r"passes, (\d+) updates"),
          text(r"matmul\): (\S+) ms"), text(r"load average (\S+)")),
    claim(r"the policy takes # mean steps \(true oracle #\) at #% IQS drop", FIT_SPEED,
          text(r"curves: (\S+) mean steps"), text(r"true oracle (\S+)\)"), text(r"IQS drop (\S+)%")),
    # benchmarks/cheap_table.py (README "What it costs")
    claim(r"a full table took # sampling steps and # s per prompt", CHEAP,
          text(r"full +table: +(\S+) sampling steps"), text(r"full +table: .*?and +(\S+) s per")),
    claim(r"a bisected one # steps and # s, with #% of its units inferred: \*\*#x fewer sampling steps\*\*", CHEAP,
          text(r"bisect table: +(\S+) sampling"), text(r"bisect table: .*?and +(\S+) s per"),
          text(r"bisect table: .*?\((\d+)% of units"), text(r"steps: (\S+)x fewer")),
    claim(r"# mean steps each, IQS # ± # and # ± #, paired difference \(bisected minus full\) # ± #", CHEAP,
          text(r"full +table: .*?prompts: (\S+) mean steps"), text(r"full +table: .*?IQS (\S+) ±"),
          text(r"full +table: .*?IQS \S+ ± (\S+),"), text(r"bisect table: .*?IQS (\S+) ±"),
          text(r"bisect table: .*?IQS \S+ ± (\S+),"), text(r"paired on held-out prompts: (\S+) ±"),
          text(r"paired on held-out prompts: \S+ ± (\S+) ")),
    claim(r"# mean steps each", CHEAP, text(r"bisect table: .*?prompts: (\S+) mean steps")),
    claim(r"its own mean steps by two standard errors \(# ± # and # ± #\)", CHEAP,
          text(r"full +table: .*?matched (\S+) ±"), text(r"full +table: .*?matched \S+ ± (\S+),"),
          text(r"bisect table: .*?matched (\S+) ±"), text(r"bisect table: .*?matched \S+ ± (\S+),")),
    # benchmarks/cheap_table.py --known-answer (README "What it costs")
    claim(r"a bisected table costs #x / #x / #x fewer sampling steps at seed noise 0 / 0\.01 / 0\.02", CHEAP_KNOWN,
          *(text(rf"sigma={sigma} +sampling steps: (\S+)x") for sigma in (r"0\.0", r"0\.01", r"0\.02"))),
    claim(r"so are their policies: #% against #% of the true oracle's saving, paired difference # ± # IQS",
          CHEAP_KNOWN, text(r"sigma=0\.0 +bisect table: .*?policy: +(\S+)%"),
          text(r"sigma=0\.0 +full +table: .*?policy: +(\S+)%"), text(r"sigma=0\.0 +bisect minus full .*?: (\S+) ±"),
          text(r"sigma=0\.0 +bisect minus full .*?± (\S+) IQS")),
    claim(r"It kept #% / #% of the true oracle's saving against the full table's #% / #%, with slightly more IQS "
          r"\(# ± # / # ± #\)", CHEAP_KNOWN,
          *(text(rf"sigma={sigma} +{name} +table: .*?policy: +(\S+)%") for name in ("bisect", "full")
            for sigma in (r"0\.01", r"0\.02")),
          *(text(rf"sigma={sigma} +bisect minus full .*?{part}") for sigma in (r"0\.01", r"0\.02")
            for part in (r": (\S+) ±", r"± (\S+) IQS"))),
    claim(r"the full run's oracle: # mean steps", RUN, lambda r: r["oracle"]["mean_steps"]),
    claim(r"saves #% of the steps against 50 at an IQS \(SSIM to the 50-step image, capped at 0\.95\) of # against #, "
          r"a #% drop", RUN, lambda r: r["saving_vs_max"]["steps_pct"], lambda r: r["policy"]["iqs"],
          lambda r: r["fixed"]["50"]["iqs"], lambda r: r["iqs_drop_vs_max_pct"]),
    claim(r"took # min of wall time at #% of a CPU", RUN_LOG, text(r"Elapsed .*?: (\d+):"),
          text(r"Percent of CPU this job got: (\d+)%")),
    # known-answer settings (README "Known-answer benchmark"), both objectives
    *(claim(r"judged on # held-out prompts' noise-free curves after a default fit on # training prompts x # seeds "
            r"\(token width #", f"benchmarks/results/known_answer_{objective}.json",
            *(lambda r, k=k: r["settings"][k] for k in ("test_prompts", "train_prompts", "seeds", "width")))
      for objective in ("quality", "reinforce")),
    claim(r"names the fixed count \(# steps\) that keeps quality within 1%", KNOWN_QUALITY,
          lambda r: float(re.search(r"use a fixed (\d+) steps", no_signal(r)["evaluate_says"])[1])),
    # the embedded model (README "The embedded demo model")
    claim(r"folder \(fp16, # MB of files\)", MODEL,
          lambda model: sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) / 1e6),
    claim(r"AutoencoderKL \(#M\)", MODEL, param_count("vae")),
    claim(r"UNet2DConditionModel \(48, 96, 96\), #M", MODEL, param_count("unet")),
    claim(r"on # held-out prompts x # seeds at guidance # \(`trainer/embedded/reports/`, # min\)", ANALYSIS,
          lambda r: r["n_prompts"], lambda r: r["n_seeds"], lambda r: r["guidance_scale"],
          lambda r: r["render_and_score_seconds"] / 60),
    claim(r"background #, colour #, size #, texture #, shape #, count # \(touching objects merge\), alignment #",
          ANALYSIS, *(lambda r, k=k: r["checker_accuracy"][k]["ratio"]
                      for k in ("background", "colour", "size", "texture", "shape", "count", "alignment"))),
    claim(r"Mean IQS rises from # at 5 steps to # at 10 and # at 20", ANALYSIS,
          *(lambda r, k=k: r["mean_iqs_by_steps"]["all"][k] for k in ("5", "10", "20"))),
    claim(r"# for prompts with grain, # without; they agree across seeds within one option for # of prompts "
          r"\(exact #\), and the prompt explains # of their variance", ANALYSIS,
          lambda r: r["oracle_mean_steps_grainy_or_not"]["grainy"],
          lambda r: r["oracle_mean_steps_grainy_or_not"]["not_grainy"], lambda r: r["oracle_seed_agreement"],
          lambda r: r["oracle_seed_agreement_exact"], lambda r: r["oracle_variance_explained"]),
    claim(r"oracle: # mean steps \(#% saving\), IQS drop #% against 50 steps, # \(# SE\) \*below\* a fixed # steps and "
          r"# \(# SE\) above a random policy", ANALYSIS,
          lambda r: r[CROSS_SEED]["mean_steps"], lambda r: r[CROSS_SEED]["saving_pct"],
          lambda r: r[CROSS_SEED]["iqs_drop_pct"], lambda r: -r[CROSS_SEED]["advantage_over_fixed"],
          lambda r: -r[CROSS_SEED]["advantage_in_se"], lambda r: r[CROSS_SEED]["mean_steps"],
          lambda r: r[CROSS_SEED]["advantage_over_shuffled"], lambda r: r[CROSS_SEED]["advantage_over_shuffled_in_se"]),
]


@pytest.mark.parametrize("claim", CLAIMS, ids=str)
def test_each_readme_figure_equals_its_stored_result(claim):
    """A figure in the README is its stored result's number, rounded as the README prints it."""
    shown = readme_figures(claim.readme)
    assert len(shown) == len(claim.getters), "one getter per figure"
    result = load(claim.source)
    expected = tuple(printed(get(result), figure) for get, figure in zip(claim.getters, shown))
    assert shown == expected, f"README says {shown}, {claim.source} says {expected}: re-run its command"


KNOWN_ANSWER_METRICS = {"share": ("share_of_true_oracle_saving", 100.0), "IQS drop": ("true_iqs_drop_pct", 1.0),
                        "minus fixed": ("minus_fixed_matched", 1.0), "minus random": ("minus_random", 1.0)}


def known_answer_table() -> list[tuple[str, dict[tuple[str, str], str]]]:
    """The README's known-answer table: (row label, {(objective, metric): cell text})."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| table |") and "share" in line)
    columns, objective = [], None
    for cell in lines[start].strip("|").split("|")[1:]:
        objective = next((name for name in ("quality", "reinforce") if f"`{name}`" in cell), objective)
        metric = next(name for name in KNOWN_ANSWER_METRICS if name in cell)
        columns.append((objective, metric))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        label, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows.append((label, dict(zip(columns, cells))))
    return rows


def stored_row(objective: str, label: str) -> dict:
    stored = json.loads((RESULTS / f"known_answer_{objective}.json").read_text(encoding="utf-8"))["rows"]
    def same(row: dict) -> bool:
        if label.startswith("sigma "):
            return row["table"].startswith("sigma=") and float(row["table"][6:]) == float(label[6:])
        return row["table"] == label
    matches = [row for row in stored if same(row)]
    assert len(matches) == 1, f"README row {label!r} has no single row in known_answer_{objective}.json"
    return matches[0]


@pytest.mark.parametrize("objective", ["quality", "reinforce"])
def test_the_known_answer_table_is_the_stored_benchmark(objective):
    """Every cell of the README's known-answer table is the stored benchmark's figure, and the table has a row for
    each stored table of the benchmark (``make known-answer`` -> benchmarks/results/known_answer_*.json)."""
    rows = known_answer_table()
    stored = json.loads((RESULTS / f"known_answer_{objective}.json").read_text(encoding="utf-8"))["rows"]
    assert len(rows) == len(stored), f"README has {len(rows)} known-answer rows, the {objective} run {len(stored)}"
    for label, cells in rows:
        row = stored_row(objective, label)
        for (column_objective, metric), cell in cells.items():
            if column_objective != objective:
                continue
            key, scale = KNOWN_ANSWER_METRICS[metric]
            shown = re.findall(NUMBER, cell)
            expected = [printed(scale * row[key], shown[0])]
            if "±" in cell:
                expected.append(printed(row[key + "_se"], shown[1]))
            if "steps for every prompt" in cell:
                expected.append(printed(row["mean_steps"], shown[len(expected)]))
            assert shown == expected, f"{label}, {objective} {metric}: README {shown}, stored {expected}"


@pytest.mark.parametrize("objective", ["quality", "reinforce"])
def test_the_known_answer_printout_and_json_come_from_one_run(objective):
    """known_answer_*.txt (what the benchmark printed) and known_answer_*.json (what it wrote) hold the same tables,
    the same shares of the oracle's saving and the same verdicts."""
    printout = (RESULTS / f"known_answer_{objective}.txt").read_text(encoding="utf-8")
    rows = json.loads((RESULTS / f"known_answer_{objective}.json").read_text(encoding="utf-8"))["rows"]
    assert len(re.findall(r"of the true oracle's saving", printout)) == len(rows)
    for row in rows:
        shown = re.search(re.escape(row["table"]) + r": +(\S+)% of the true oracle's saving", printout)
        assert shown and shown[1] == printed(100 * row["share_of_true_oracle_saving"], shown[1]), row["table"]
        assert f"says: {row['evaluate_says']}" in printout, row["table"]


def report_keys(report) -> object:
    """The key tree of a report: what a reader of report.json can look up."""
    if isinstance(report, dict):
        return {key: report_keys(value) for key, value in report.items()}
    return type(report).__name__ if report is None else "value"


def test_the_stored_demo_report_has_the_layout_evaluate_writes_today(tmp_path, monkeypatch):
    """benchmarks/results/demo_report.json holds exactly the keys of a report written now for a quality policy on one
    seed and the same options, so the README's demo figures are read from the format the code writes today."""
    demo = json.loads((RESULTS / "demo_report.json").read_text(encoding="utf-8"))
    options = tuple(demo["options"])
    curve = torch.tensor([min(0.5 + 0.2 * i, 0.9) for i in range(len(options))])  # converges at the third option
    iqs = (curve + 0.01 * torch.rand(6, len(options)))[:, None, :]
    features = PolicyFeatures(torch.randn(6, 3, 8).half(), torch.ones(6, 3, dtype=torch.bool))
    table = RewardTable(tuple(f"prompt {i}" for i in range(6)), options, (0,), features, iqs, {}, torch.ones_like(iqs),
                        {})
    # choices that vary by prompt, as the demo's do (a mean between two options, a matched count to blend)
    monkeypatch.setattr(evaluate_module, "policy_choices", lambda policy, table: torch.tensor([1, 2, 2, 3, 2, 1]))
    policy = init_policy(PolicyConfig(options=options, token_dim=8, objective="quality"))
    fresh = json.loads(write_report(evaluate_policy(policy, table), tmp_path).read_text(encoding="utf-8"))
    assert report_keys(demo) == report_keys(fresh)


def test_the_stored_demo_markdown_is_the_stored_demo_report():
    """demo_report.md is what ``make demo`` writes for demo_report.json today: the two copies come from one run."""
    demo = json.loads((RESULTS / "demo_report.json").read_text(encoding="utf-8"))
    assert (RESULTS / "demo_report.md").read_text(encoding="utf-8") == markdown(demo), (
        "demo_report.md and demo_report.json differ: copy both from one `make demo` run (or re-render the .md with "
        "adadiff.trainer.report.markdown)")


def test_every_stored_result_is_listed_with_its_command():
    """benchmarks/results/README.md's table lists every file stored next to it and in trainer/embedded/reports/, lists
    no file that is not there, and gives each a command."""
    listing = (RESULTS / "README.md").read_text(encoding="utf-8")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in listing.splitlines()
            if line.startswith("| `")]
    listed = {name: command for files, command, *_ in rows for name in re.findall(r"`([^`]+)`", files)}
    stored = {path.name for path in RESULTS.iterdir() if path.name != "README.md"}
    stored |= {f"trainer/embedded/reports/{path.name}" for path in (ROOT / "trainer/embedded/reports").iterdir()}
    assert set(listed) == stored, f"not listed: {sorted(stored - set(listed))}, gone: {sorted(set(listed) - stored)}"
    assert all(re.search(r"`[^`]+`", command) for command in listed.values()), "a listed file has no command"


def expand_braces(name: str) -> list[str]:
    """``known_answer_{quality,reinforce}.txt`` -> both names."""
    found = re.search(r"\{([^}]*)\}", name)
    return [name] if not found else [name[:found.start()] + one + name[found.end():] for one in found[1].split(",")]


def test_every_result_file_the_readme_names_is_stored():
    """A result file the README points a reader to (``benchmarks/results/...``, ``trainer/embedded/reports/...``) is
    in the repository."""
    named = {one for name in re.findall(r"(?:benchmarks/results|trainer/embedded/reports)/[^\s`)/]+", README)
             for one in expand_braces(name)}
    assert len(named) >= 5, f"the README names too few result files to be checked: {sorted(named)}"
    missing = sorted(name for name in named if not (ROOT / name).exists())
    assert not missing, f"README names result files that are not stored: {missing}"


def test_every_stored_mutation_survivor_is_judged_equivalent():
    """The README says every survivor of the last mutation runs is equivalent: each one the stored runs list must
    carry the reason `mutation.py` took from mutation_equivalent.txt."""
    runs = sorted(path for path in RESULTS.glob("mutation_*.txt") if path.name != "mutation_equivalent.txt")
    survivors = [line.strip() for path in runs for line in path.read_text(encoding="utf-8").splitlines()
                 if re.match(r"  [a-z ]+: adadiff\.", line)]
    assert runs and survivors, "no stored mutation run lists its survivors"
    assert [line for line in survivors if "(equivalent: " not in line] == []
    assert "every survivor equivalent" in README
