"""An evaluation written for people: report.json, report.md, choices.csv, pareto.png, steps_by_complexity.png,
and the one-screen summary printed at the end of a run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

REPORT_FILES = ("report.json", "report.md", "choices.csv", "pareto.png", "steps_by_complexity.png")


def write_report(report: dict, folder: str | Path) -> Path:
    """Write every report file into ``folder``; returns the report.json path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = {k: v for k, v in report.items() if k != "per_prompt"}
    (folder / "report.json").write_text(json.dumps(numbers, indent=1), encoding="utf-8")
    (folder / "report.md").write_text(markdown(numbers), encoding="utf-8")
    with (folder / "choices.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "words", "steps", "oracle_steps"])
        writer.writeheader()
        writer.writerows(report["per_prompt"])
    _plot_pareto(numbers, folder / "pareto.png")
    _plot_steps_by_complexity(report["per_prompt"], folder / "steps_by_complexity.png")
    return folder / "report.json"


def _rows(report: dict) -> list[tuple[str, float, float, float | None, str]]:
    """(method, mean steps, IQS, IQS SE, policy minus it ± SE) for every comparison."""
    def versus(entry: dict) -> str:
        return f"{entry['policy_minus']:+.4f} ± {entry['policy_minus_se']:.4f}" if "policy_minus" in entry else ""

    policy = report["policy"]
    rows = [("**policy**", policy["mean_steps"], policy["iqs"], policy["iqs_se"], "")]
    for name, title in (("fixed_matched", "fixed, matched mean steps"),
                        ("random_same_distribution", "random, policy's step distribution"),
                        ("heuristic_wordcount", "word-count heuristic, same distribution"),
                        ("oracle", "per-prompt oracle")):
        entry = report[name]
        steps = entry.get("mean_steps", entry.get("steps"))
        rows.append((title, steps, entry["iqs"], entry.get("iqs_se"), versus(entry)))
    for steps, entry in report["fixed"].items():
        rows.append((f"fixed {steps}", float(steps), entry["iqs"], entry["iqs_se"], ""))
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# AdaDiff policy evaluation: {report['n_prompts']} held-out prompts x {report['n_seeds']} seed(s)",
        "",
        f"Policy saves **{report['saving_vs_max']['steps_pct']:.1f}%** of the steps and "
        f"**{report['saving_vs_max']['time_pct']:.1f}%** of the sampling time of the largest option "
        f"({report['options'][-1]} steps), at an IQS drop of **{report['iqs_drop_vs_max_pct']:.2f}%**.",
        "",
        "| method | mean steps | IQS | SE | policy minus it (paired SE) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for title, steps, iqs, se, versus in _rows(report):
        lines.append(f"| {title} | {steps:.2f} | {iqs:.4f} | {'' if se is None else f'{se:.4f}'} | {versus} |")
    share = report["share_of_oracle_saving"]
    lines += ["", f"**Verdict**: {report['verdict']['summary']}.", "",
              f"Share of the oracle's step saving reached: {'n/a' if share is None else f'{100 * share:.0f}%'} "
              f"(oracle: the fewest steps within {report['tolerance_pct']:g}% of the largest option's seed-averaged "
              f"IQS; its steps vary by {report['oracle']['steps_sd']:.1f} SD across prompts)."]
    lines += _cross_seed_lines(report["cross_seed_oracle"])
    check = report.get("seed_split_check")
    if check is not None:
        lines += ["", f"Seed-split check: a policy fitted on seeds {check['fit_seeds']} only and judged on the held-out "
                  f"prompts' seeds {check['judged_seeds']} takes {check['mean_steps']:.2f} mean steps "
                  f"({check['saving_pct']:.0f}% saving, {check['iqs_drop_pct']:.2f}% IQS drop): {check['verdict']}."]
    lines += ["", "Checks (the issue's bar):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} {name.replace('_', ' ')}" for name, ok in report["checks"].items()]
    lines += ["", "IQS is averaged over seeds per prompt; SE is over prompts. The matched fixed count blends the two "
              "neighbouring options to the policy's exact mean; the random baseline is the exact expectation of "
              "drawing from the policy's step histogram; the oracle takes, per prompt, the fewest steps whose IQS "
              f"is within {report['tolerance_pct']:g}% of the largest option's.", ""]
    return "\n".join(lines)


def _cross_seed_lines(cross: dict | None) -> list[str]:
    """What the oracle is worth when it must choose on some seeds and is judged on others."""
    if cross is None:
        return ["", "One seed only: the oracle cannot be checked on seeds it did not choose on (use --seeds 0,1)."]
    explained = cross["share_of_spread_from_prompt"]
    return ["", f"Cross-seed oracle (chosen on half the seeds, judged on the other half): {cross['mean_steps']:.2f} mean "
            f"steps, {cross['saving_pct']:.0f}% saving, {cross['iqs_drop_pct']:.2f}% IQS drop; the split-half "
            f"correlation of its per-prompt steps is "
            + ("n/a (no spread)" if explained is None else f"{explained:.2f}")
            + " (near 0: the oracle's per-prompt differences are the seeds', not the prompts')."]


def summary_text(report: dict, outputs: dict[str, str]) -> str:
    """The one-screen summary at the end of a run: the headline numbers, the checks and where the files are."""
    policy = report["policy"]
    largest = report["fixed"][str(report["options"][-1])]
    lines = [
        f"AdaDiff on {report['n_prompts']} held-out prompts:",
        f"  policy        {policy['mean_steps']:6.2f} mean steps   IQS {policy['iqs']:.4f} ± {policy['iqs_se']:.4f}",
        f"  fixed {report['options'][-1]:<7} {report['options'][-1]:6.2f} steps        IQS {largest['iqs']:.4f} ± "
        f"{largest['iqs_se']:.4f}",
        f"  saving {report['saving_vs_max']['steps_pct']:.1f}% of steps, {report['saving_vs_max']['time_pct']:.1f}% of "
        f"time; IQS drop {report['iqs_drop_vs_max_pct']:.2f}%",
    ]
    for name in ("fixed_matched", "random_same_distribution", "heuristic_wordcount"):
        entry = report[name]
        lines.append(f"  vs {name.replace('_', ' '):26} {entry['policy_minus']:+.4f} ± {entry['policy_minus_se']:.4f} IQS")
    lines.append(f"  oracle        {report['oracle']['mean_steps']:6.2f} mean steps   IQS {report['oracle']['iqs']:.4f}")
    lines.append(f"  verdict: {report['verdict']['summary']}")
    passed = sum(report["checks"].values())
    lines.append(f"  checks passed {passed}/{len(report['checks'])}: "
                 + ", ".join(f"{name}={'yes' if ok else 'NO'}" for name, ok in report["checks"].items()))
    lines += [f"  {name:14}{path}" for name, path in outputs.items()]
    return "\n".join(lines)


def _plot_pareto(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    steps = [float(s) for s in report["fixed"]]
    axes.errorbar(steps, [e["iqs"] for e in report["fixed"].values()], yerr=[e["iqs_se"] for e in report["fixed"].values()],
                  marker="o", color="0.45", capsize=2, label="fixed steps")
    points = (("policy", report["policy"]["mean_steps"], report["policy"]["iqs"], "tab:red", "*", 14),
              ("random, same distribution", report["random_same_distribution"]["mean_steps"],
               report["random_same_distribution"]["iqs"], "tab:blue", "s", 7),
              ("word-count heuristic", report["heuristic_wordcount"]["mean_steps"], report["heuristic_wordcount"]["iqs"],
               "tab:purple", "^", 7),
              ("oracle", report["oracle"]["mean_steps"], report["oracle"]["iqs"], "tab:green", "D", 7))
    for label, x, y, colour, marker, size in points:
        axes.plot([x], [y], marker=marker, color=colour, markersize=size, linestyle="none", label=label)
    axes.set_xlabel("mean sampling steps")
    axes.set_ylabel("IQS (mean over held-out prompts)")
    axes.set_title(f"Quality vs steps, {report['n_prompts']} held-out prompts")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _plot_steps_by_complexity(per_prompt: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_words: dict[int, list[tuple[int, int]]] = {}
    for row in per_prompt:
        by_words.setdefault(row["words"], []).append((row["steps"], row["oracle_steps"]))
    words = sorted(by_words)
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    axes.plot(words, [sum(s for s, _ in by_words[w]) / len(by_words[w]) for w in words], marker="o", color="tab:red",
              label="policy")
    axes.plot(words, [sum(o for _, o in by_words[w]) / len(by_words[w]) for w in words], marker="D", color="tab:green",
              linestyle="--", label="oracle")
    axes.scatter([r["words"] for r in per_prompt], [r["steps"] for r in per_prompt], s=6, alpha=0.15, color="tab:red")
    axes.set_xlabel("prompt length (words)")
    axes.set_ylabel("mean steps chosen")
    axes.set_title("Steps by prompt complexity")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
