"""What a comparison's rows say: per metric each arm's mean and sd, the paired difference to the baseline arm, the
one-line verdict, report.md, summary.json and per_seed.png (matplotlib is imported only to draw)."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spg_hf.compare.comparison import Comparison, describe_config_files, read_rows
from spg_hf.compare.metrics import DIRECTION_FLAGS, SECONDARY_METRICS, Direction, metric_direction, resolve_metric
from spg_hf.compare.runner import duration
from spg_hf.compare.stats import describe, pair_by_seed


def compared_metrics(comparison: Comparison, rows: Sequence[dict]) -> list[str]:
    """The main metric, then every secondary metric all rows have and the asked-for ones."""
    first = rows[0]["metrics"], f"{rows[0]['output_dir']}'s metrics"
    main = resolve_metric(comparison.metric, *first)
    asked = [resolve_metric(name, *first) for name in comparison.also]
    secondary = [name for name in SECONDARY_METRICS if all(name in row["metrics"] for row in rows)]
    return list(dict.fromkeys([main, *secondary, *asked]))


def summarize(comparison: Comparison, rows: Sequence[dict]) -> dict:
    """Per compared metric: which way it is better (the main metric as the comparison says, else by name), each
    arm's mean and std over its seeds, its value per seed, and each other arm's paired difference to the baseline
    arm (better-than-baseline counted as won)."""
    arms = [arm for arm in comparison.arm_names if any(row["arm"] == arm for row in rows)]
    metrics = compared_metrics(comparison, rows)
    by_arm = {arm: {row["seed"]: row for row in rows if row["arm"] == arm} for arm in arms}
    summary: dict[str, Any] = {"baseline": comparison.baseline, "main_metric": metrics[0], "metrics": {}}
    for metric in metrics:
        direction = metric_direction(metric, comparison.greater_is_better if metric == metrics[0] else None)
        better_higher = direction.higher_is_better
        values = {arm: {seed: by_arm[arm][seed]["metrics"][metric] for seed in sorted(by_arm[arm])} for arm in arms}
        per_arm = {arm: describe(list(values[arm].values())) | {"per_seed": values[arm]} for arm in arms}
        paired = {}
        if comparison.baseline in values:
            for arm in arms:
                pair = pair_by_seed(values[arm], values[comparison.baseline], better_higher)
                if arm != comparison.baseline and pair is not None:
                    paired[arm] = pair
        summary["metrics"][metric] = {
            "higher_is_better": better_higher,
            "direction_source": direction.source,
            "arms": per_arm,
            "paired": paired,
        }
    summary["verdict"] = verdict(summary)
    return summary


def format_number(value: float, sign: bool = False) -> str:
    """4 significant digits, "n/a" for NaN; `sign` shows a plus on positive differences."""
    return "n/a" if math.isnan(value) else f"{value:{'+' if sign else ''}.4g}"


def _interval(pair: Mapping[str, float]) -> str:
    if math.isnan(pair["ci_low"]):
        return "n/a"
    return f"[{format_number(pair['ci_low'], sign=True)}, {format_number(pair['ci_high'], sign=True)}]"


def direction_of(section: Mapping[str, Any]) -> Direction:
    """The direction a summary's metric section was compared in."""
    return Direction(section["higher_is_better"], section["direction_source"])


def verdict(summary: Mapping[str, Any]) -> str:
    """One line: each arm ahead of, level with or behind the baseline on the main metric at 95%, with the
    metric's direction and the interval; undecided with fewer than two paired seeds."""
    main = summary["main_metric"]
    section = summary["metrics"][main]
    baseline = summary["baseline"]
    if len(section["arms"]) < 2:
        return f"no verdict: only {', '.join(section['arms'])} has runs, nothing to pair it with."
    if not section["paired"]:
        return f"no verdict yet: no seed has both {baseline} and another arm finished."
    parts = []
    for arm, pair in section["paired"].items():
        better = pair["ci_low"] > 0 if section["higher_is_better"] else pair["ci_high"] < 0
        worse = pair["ci_high"] < 0 if section["higher_is_better"] else pair["ci_low"] > 0
        if pair["n"] < 2:
            standing = f"{arm} undecided (1 paired seed)"
        else:
            standing = f"{arm} {'ahead of' if better else 'behind' if worse else 'level with'} {baseline}"
        parts.append(
            f"{standing}: {main} {format_number(pair['mean'], sign=True)} ({direction_of(section)}), "
            f"95% interval {_interval(pair)}, "
            f"better on {pair['wins']} of {pair['n']} seeds"
        )
    return "; ".join(parts) + "."


def render_report(
    comparison: Comparison, rows: Sequence[dict], summary: Mapping[str, Any], failures: Sequence[str]
) -> str:
    """report.md: the verdict, the experiment (command, config files, arms), metrics whose direction was assumed,
    a paired table per metric, every run with its command, failed runs."""
    lines = [
        f"# Does SPG pay? {summary['verdict']}",
        "",
        f"Command: `{shlex.join(comparison.command)}` with `--seed <seed> --output_dir <arm>/seed<seed>` appended.",
        "",
        f"Config files: {describe_config_files(comparison.config_files)}.",
        "",
        "Arms: "
        + "; ".join(
            f"{name}{' (baseline)' if name == comparison.baseline else ''} `{shlex.join(flags) or '(no flags)'}`"
            for name, flags in comparison.arms
        )
        + ".",
        "",
        f"Difference: per seed, arm - {comparison.baseline}, mean and 95% Student-t interval over the paired seeds; "
        "won: seeds where the arm was better, in the direction its heading gives.",
    ]
    assumed = [metric for metric, section in summary["metrics"].items() if section["direction_source"] == "assumed"]
    if assumed:
        lines += [
            "",
            f"**Direction assumed:** spg-hf does not know which way {', '.join(assumed)} is better and took higher "
            f"as better. If lower is better, say so: `--metric <metric> {DIRECTION_FLAGS[False]}` (with "
            "`--report-only` to reread these runs).",
        ]
    for metric, section in summary["metrics"].items():
        role = "main metric, " if metric == summary["main_metric"] else ""
        lines += ["", f"## {metric} ({role}{direction_of(section)})", ""]
        lines += [
            f"| arm | seeds | mean ± sd | per seed | diff vs {comparison.baseline} | 95% interval | won |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, values in section["arms"].items():
            pair = section["paired"].get(arm)
            spread = "" if math.isnan(values["std"]) else f" ± {format_number(values['std'])}"
            cells = [arm, str(values["n"]), format_number(values["mean"]) + spread]
            cells.append(", ".join(format_number(value) for value in values["per_seed"].values()))
            if pair is None:
                cells += ["", "", ""]
            else:
                ties = f" ({pair['ties']} tied)" if pair["ties"] else ""
                cells += [format_number(pair["mean"], sign=True), _interval(pair), f"{pair['wins']}/{pair['n']}{ties}"]
            lines.append("| " + " | ".join(cells) + " |")
    metrics = list(summary["metrics"])
    runs = sorted(rows, key=lambda row: (comparison.arm_names.index(row["arm"]), row["seed"]))
    lines += ["", "## Runs", "", "| arm | seed | " + " | ".join(metrics) + " | wall time | device | output |"]
    lines.append("|---" * (len(metrics) + 5) + "|")
    for row in runs:
        cells = [row["arm"], str(row["seed"]), *(format_number(row["metrics"][metric]) for metric in metrics)]
        cells += [duration(row["wall_s"]), row["device"], row["output_dir"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each run's command (its --output_dir is inside this folder):", ""]
    lines += [
        f"- {row['arm']} seed {row['seed']}: `{shlex.join([*row['flags'], '--output_dir', row['output_dir']])}`"
        for row in runs
    ]
    if failures:
        lines += ["", "## Failed runs (rerun the same command to retry them)", ""]
        lines += [f"```\n{failure.rstrip()}\n```" for failure in failures]
    return "\n".join(lines) + "\n"


def draw_per_seed(
    axis: Any, arms: Sequence[str], by_seed: Mapping[int, Mapping[str, float]], means: Sequence[float]
) -> None:
    """One matplotlib panel: each seed's values across the arms as dots joined by a grey line, each arm's mean as a
    bar. Arms a seed lacks are skipped."""
    for seed in sorted(by_seed):
        xs = [i for i, arm in enumerate(arms) if arm in by_seed[seed]]
        ys = [by_seed[seed][arms[i]] for i in xs]
        axis.plot(xs, ys, "-", color="0.8", zorder=1)
        axis.scatter(xs, ys, s=22, zorder=2, label=f"seed {seed}")
    axis.hlines(means, np.arange(len(arms)) - 0.25, np.arange(len(arms)) + 0.25, color="k", zorder=3)
    crowded = len(arms) > 3
    axis.set_xticks(range(len(arms)), arms, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axis.set_xlim(-0.5, len(arms) - 0.5)
    axis.grid(axis="y", alpha=0.3)


def plot_per_seed(summary: Mapping[str, Any], path: Path) -> bool:
    """per_seed.png: a panel per compared metric. Returns False (writes nothing) without matplotlib, which is an
    optional dependency (the test and bench extras)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sections = summary["metrics"]
    figure, axes = plt.subplots(1, len(sections), figsize=(3.4 * len(sections) + 0.8, 3.6), squeeze=False)
    for axis, (metric, section) in zip(axes[0], sections.items(), strict=True):
        arms = list(section["arms"])
        by_seed: dict[int, dict[str, float]] = {}
        for arm, values in section["arms"].items():
            for seed, value in values["per_seed"].items():
                by_seed.setdefault(seed, {})[arm] = value
        draw_per_seed(axis, arms, by_seed, [section["arms"][arm]["mean"] for arm in arms])
        axis.set_title(f"{metric} ({direction_of(section)})", fontsize=9)
    save_figure(figure, axes, "per seed; bar = mean", path)
    return True


def save_figure(figure: Any, axes: Any, ylabel: str, path: Path) -> None:
    """How the per-panel plots end: the y label on the first panel, the legend on the last, 110 dpi, closed."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(out: Path, comparison: Comparison, failures: Sequence[str] = ()) -> str | None:
    """report.md, summary.json and per_seed.png from the rows in `out`, which hold `comparison`'s experiment only
    (checked before they were written); returns the verdict (None without rows)."""
    rows = read_rows(out)
    if not rows:
        return None
    summary = summarize(comparison, rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(render_report(comparison, rows, summary, failures))
    plot_per_seed(summary, out / "per_seed.png")
    return summary["verdict"]
