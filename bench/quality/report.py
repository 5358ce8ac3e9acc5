"""The report, written from the raw rows alone: table.md, summary.json, PNG plots and missing.md."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from bench.quality.doc import Document, update_document
from bench.quality.plan import (
    BASELINE,
    METRIC_NAMES,
    TASK_METRICS,
    TASK_TITLES,
    VARIANTS,
    Comparison,
    Run,
    describe_variant,
    legacy_comparison,
    row_arm,
)
from bench.quality.stats import recipe, summarize
from spg_hf.compare import RAW_FILE, draw_per_seed, higher_is_better, load_rows, save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

AXIS_LABELS = {"train_samples": "training examples", "epochs": "epochs", "lr": "learning rate"}


def points(value: float) -> str:
    """A metric in [0, 1] shown in points (x100), as GLUE tables do."""
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def mean_std(summary: dict[str, float]) -> str:
    if math.isnan(summary["std"]):
        return points(summary["mean"])
    return f"{points(summary['mean'])} ± {points(summary['std'])}"


def interval(pair: dict[str, float]) -> str:
    if math.isnan(pair["ci_low"]):
        return "n/a"
    return f"[{100 * pair['ci_low']:+.2f}, {100 * pair['ci_high']:+.2f}]"


def _pair_cells(pair: dict | None) -> list[str]:
    if pair is None:
        return ["", "", ""]
    ties = f" ({pair['ties']} tied)" if pair["ties"] else ""
    return [f"{100 * pair['mean']:+.2f}", interval(pair), f"{pair['wins']}/{pair['n']}{ties}"]


def render_table(summary: Sequence[dict], baseline: str = BASELINE) -> str:
    """Markdown for a single-recipe sweep: one table per task, metrics in points, the paired difference to
    `baseline` on the main metric."""
    lines = [
        f"Metrics in points (x100): mean ± sample std over seeds. Difference: per seed, method - {baseline} on the "
        "main metric (same seed, data, epochs, lr, batch size), mean and 95% Student-t interval; won: seeds where "
        f"the method scored higher than {baseline}. Train time: mean train_runtime in seconds.",
        "",
        "Methods: " + "; ".join(f"{name} = {describe_variant(name)}" for name in VARIANTS) + ".",
    ]
    for task in summary:
        metric_names = TASK_METRICS[task["task"]]
        main_name = METRIC_NAMES.get(task["main_metric"], task["main_metric"])
        header = ["method", "seeds", *(METRIC_NAMES.get(m, m) for m in metric_names)]
        header += [f"{main_name} diff vs {baseline}", "95% interval", "won", "train time (s)"]
        lines += ["", f"### {TASK_TITLES[task['task']]} (main metric: {main_name})", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant, method in task["methods"].items():
            cells = [variant, str(len(method["seeds"]))]
            cells += [mean_std(method["metrics"][m]) for m in metric_names]
            cells += _pair_cells(task["paired"].get(variant))
            cells.append(f"{method['train_runtime']['mean']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:g}"


def render_comparison(summary: Sequence[dict]) -> str:
    """Markdown for one comparison of arms with their own recipes: per task, each arm's recipe and metrics, and
    each treatment's paired difference to its baseline arm."""
    lines = []
    for task in summary:
        metric_names = list(next(iter(task["methods"].values()))["metrics"])
        main_name = METRIC_NAMES.get(task["main_metric"], task["main_metric"])
        header = ["arm", "variant", "epochs", "lr", "examples", "seeds"]
        header += [METRIC_NAMES.get(m, m) for m in metric_names]
        header += ["vs", f"{main_name} diff", "95% interval", "won", "train time (s)"]
        lines += [f"### {TASK_TITLES[task['task']]} (main metric: {main_name})", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arm, method in task["methods"].items():
            arm_recipe = method["recipe"]
            samples = arm_recipe["train_samples"]
            cells = [arm, arm_recipe["variant"], _number(arm_recipe["epochs"]), _number(arm_recipe["lr"])]
            cells += ["all" if samples is None else str(samples), str(len(method["seeds"]))]
            cells += [mean_std(method["metrics"][m]) for m in metric_names]
            pair = task["paired"].get(arm)
            cells += [pair["baseline"] if pair else "", *_pair_cells(pair)]
            cells.append(f"{method['train_runtime']['mean']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def render_comparisons(sections: Sequence[tuple[Comparison, list[dict]]]) -> str:
    """table.md of a sweep of arms: the legend, then a section per comparison that has runs."""
    lines = [
        "Metrics in points (x100): mean ± sample std over seeds. Difference: per seed, arm - its baseline arm (named "
        "in 'vs') on the main metric, mean and 95% Student-t interval; won: seeds where the arm scored higher. "
        "Paired arms share seed and, when they train on a subset, the subset (drawn with the seed). Examples: "
        "training examples seen per epoch. Train time: mean train_runtime in seconds.",
        "",
        "Variants: " + "; ".join(f"{name} = {describe_variant(name)}" for name in VARIANTS) + ".",
    ]
    for comparison, summary in sections:
        lines += ["", f"## {comparison.title} (`{comparison.name}`)", "", render_comparison(summary).rstrip("\n")]
    return "\n".join(lines) + "\n"


def plot_main_metric(summary: Sequence[dict], rows: Sequence[dict], path: Path) -> None:
    """One panel per task: every seed's main metric as a dot per arm, same seeds joined, arm means as bars."""
    figure, axes = plt.subplots(1, len(summary), figsize=(3.2 * len(summary) + 0.8, 3.6), squeeze=False)
    for axis, task in zip(axes[0], summary, strict=True):
        main = task["main_metric"]
        arms = list(task["methods"])
        by_seed: dict[int, dict[str, float]] = {}
        for row in rows:
            if row["task"] == task["task"] and row_arm(row) in arms:
                by_seed.setdefault(row["seed"], {})[row_arm(row)] = 100 * row["metrics"][main]
        means = [100 * task["methods"][arm]["metrics"][main]["mean"] for arm in arms]
        draw_per_seed(axis, arms, by_seed, means)
        axis.set_title(f"{TASK_TITLES[task['task']]} {METRIC_NAMES.get(main, main)}")
    save_figure(figure, axes, "main metric (points); bar = mean", path)


def plot_versus(summary: Sequence[dict], rows: Sequence[dict], x: str, path: Path) -> None:
    """One panel per task: the main metric against a recipe setting (training examples, epochs or lr), one line
    per variant through its arms' means, each seed a dot."""
    figure, axes = plt.subplots(1, len(summary), figsize=(3.4 * len(summary) + 0.8, 3.6), squeeze=False)
    for axis, task in zip(axes[0], summary, strict=True):
        main = task["main_metric"]
        task_rows = [row for row in rows if row["task"] == task["task"] and row_arm(row) in task["methods"]]
        by_variant: dict[str, dict[float, list[float]]] = {}
        for row in task_rows:
            # The whole training set has no size flag: the trainer's own count (rows written since arms exist) is used.
            value = recipe(row)[x] or row.get(x)
            if value is not None:
                by_variant.setdefault(row["variant"], {}).setdefault(value, []).append(100 * row["metrics"][main])
        for number, (variant, values) in enumerate(sorted(by_variant.items())):
            xs = sorted(values)
            color = f"C{number}"
            axis.plot(xs, [np.mean(values[value]) for value in xs], "-o", color=color, label=variant, zorder=2)
            for value in xs:
                axis.scatter([value] * len(values[value]), values[value], s=10, color=color, alpha=0.4, zorder=1)
        if x != "epochs":
            axis.set_xscale("log")
        axis.set_xlabel(AXIS_LABELS[x])
        axis.set_title(f"{TASK_TITLES[task['task']]} {METRIC_NAMES.get(main, main)}")
        axis.grid(alpha=0.3)
    save_figure(figure, axes, "main metric (points); line = mean", path)


def eval_curve(state_path: Path, metric: str) -> tuple[list[float], list[float]]:
    """(epochs, metric) of the evaluations logged during training (eval_strategy epoch) in a trainer_state.json."""
    if not state_path.is_file():
        return [], []
    entries = [entry for entry in json.loads(state_path.read_text())["log_history"] if metric in entry]
    return [entry["epoch"] for entry in entries], [entry[metric] for entry in entries]


def plot_eval_curves(summary: Sequence[dict], rows: Sequence[dict], out: Path, path: Path) -> bool:
    """One panel per task: the dev main metric after each epoch, one line per arm (mean over its seeds), to show
    where longer training starts to overfit. Returns False (writes nothing) when no run evaluated per epoch."""
    panels = []
    for task in summary:
        main = task["main_metric"]
        curves = {}
        for arm in task["methods"]:
            per_seed = [
                eval_curve(out / row["output_dir"] / "trainer_state.json", main)
                for row in rows
                if row["task"] == task["task"] and row_arm(row) == arm
            ]
            per_seed = [curve for curve in per_seed if len(curve[0]) > 1]
            length = min((len(epochs) for epochs, _ in per_seed), default=0)
            if length:
                curves[arm] = (per_seed[0][0][:length], np.mean([values[:length] for _, values in per_seed], axis=0))
        if curves:
            panels.append((task, curves))
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.6), squeeze=False)
    for axis, (task, curves) in zip(axes[0], panels, strict=True):
        for arm, (epochs, values) in curves.items():
            axis.plot(epochs, 100 * np.asarray(values), "-o", markersize=3, label=arm)
        main = task["main_metric"]
        axis.set_title(f"{TASK_TITLES[task['task']]} dev {METRIC_NAMES.get(main, main)}")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    save_figure(figure, axes, "main metric (points), mean over seeds", path)
    return True


def survival_curves(state_path: Path) -> dict[int, tuple[list[int], list[float]]]:
    """module t -> (steps, survival fraction) from a trainer_state.json log history."""
    history = json.loads(state_path.read_text())["log_history"]
    curves: dict[int, tuple[list[int], list[float]]] = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith("spg/survival_"):
                steps, values = curves.setdefault(int(key.rsplit("_", 1)[1]), ([], []))
                steps.append(entry["step"])
                values.append(value)
    return curves


def plot_survival(task: str, rows: Sequence[dict], arms: Sequence[str], out: Path, path: Path) -> bool:
    """One panel per SPG arm (in the order of `arms`): spg/survival_t over training steps, one line per module t
    and seed. Returns False (writes nothing) when no run of the task logged survival."""
    panels = {}
    for row in rows:
        state = out / row["output_dir"] / "trainer_state.json"
        if row["task"] == task and state.is_file():
            curves = survival_curves(state)
            if curves:
                panels.setdefault(row_arm(row), []).append((row["seed"], curves))
    if not panels:
        return False
    shown = [arm for arm in arms if arm in panels]
    figure, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False, sharey=True)
    for axis, arm in zip(axes[0], shown, strict=True):
        for seed, curves in sorted(panels[arm], key=lambda item: item[0]):
            for t, (steps, values) in sorted(curves.items()):
                label = f"t={t}" if seed == min(s for s, _ in panels[arm]) else None
                axis.plot(steps, values, color=f"C{t - 1}", alpha=0.75, linewidth=1, label=label)
        axis.set_title(f"{TASK_TITLES[task]} {arm}")
        axis.set_xlabel("optimizer step")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("survival (fraction of batch reaching t)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def render_devices(rows: Sequence[dict]) -> str:
    """Where the runs trained, since their train times depend on it: a count per device and torch threads."""
    counts = Counter(
        row.get("device", "device not recorded")
        + (f", {row['threads']} torch thread{'s' if row['threads'] > 1 else ''} per run" if "threads" in row else "")
        for row in rows
    )
    return "Runs per device: " + "; ".join(f"{where}: {count}" for where, count in counts.items()) + ".\n"


def render_missing(planned: Sequence[Run], rows: Sequence[dict]) -> str:
    """The planned runs that have no row yet, one line per task and arm (in the order the plan first names them)."""
    finished = {(row["task"], row_arm(row), row["seed"]) for row in rows}
    missing: dict[tuple[str, str], list[int]] = {}
    for run in planned:
        if run.key not in finished:
            missing.setdefault((run.task, run.arm), []).append(run.seed)
    count = sum(map(len, missing.values()))
    if not count:
        return f"All {len(planned)} planned runs finished.\n"
    lines = [f"{len(planned) - count} of {len(planned)} planned runs finished; {count} missing:", ""]
    for (task, arm), seeds in missing.items():
        label = "seed" if len(seeds) == 1 else "seeds"
        lines.append(f"- {TASK_TITLES[task]} {arm}: {label} {', '.join(map(str, seeds))}")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path,
    planned: Sequence[Run] = (),
    comparisons: Sequence[Comparison] = (),
    baseline: str = BASELINE,
    document: Document | None = None,
    paired_metric: str | None = None,
) -> list[dict]:
    """Writes the report of the raw rows in `out`: missing.md when the plan is known; then, with comparisons,
    table.md and summary.json with a section per comparison, main_metric_<name>.png, versus_<name>.png (for a
    comparison with a plot axis) and curves_<name>.png (when its runs evaluated per epoch). Without comparisons
    (a single-recipe sweep), the older report: table.md, summary.json, main_metric.png, each method against
    plain, or only table_vs_<baseline>.md and summary_vs_<baseline>.json against another baseline. Survival
    plots per task in both cases. With a `document` (comparisons only), each comparison's tables and the missing
    runs are also copied between the document's markers. With a `paired_metric` (comparisons only), only
    table_<metric>.md and summary_<metric>.json, the same comparisons paired on that metric (e.g. eval_loss)."""
    rows = load_rows(out / RAW_FILE)
    missing = render_missing(planned, rows)
    if planned:
        (out / "missing.md").write_text(missing)
    if not rows:
        print(f"No finished runs in {out / RAW_FILE}; no report written.", flush=True)
        return []
    devices = "\n## Devices\n\n" + render_devices(rows)
    if paired_metric is not None:
        sections = [
            (comparison, summarize(rows, comparison.pairs, comparison.arms, paired_metric))
            for comparison in comparisons
        ]
        sections = [(comparison, summary) for comparison, summary in sections if summary]
        summary = [{"comparison": c.name, "title": c.title, "tasks": s} for c, s in sections]
        (out / f"summary_{paired_metric}.json").write_text(json.dumps(summary, indent=1) + "\n")
        better = "higher" if higher_is_better(paired_metric) else "lower"
        note = (
            f"Paired on {paired_metric}, not on the main metric: diff and interval are of {paired_metric}, won counts "
            f"seeds where the arm's {paired_metric} was {better} than its baseline's. Shown x100 like the other "
            "metrics.\n\n"
        )
        (out / f"table_{paired_metric}.md").write_text(note + render_comparisons(sections) + devices)
        print(f"Report written to {out}/table_{paired_metric}.md (+ summary_{paired_metric}.json).", flush=True)
        return summary
    if comparisons:
        sections = [(comparison, summarize(rows, comparison.pairs, comparison.arms)) for comparison in comparisons]
        if document is not None:
            quoted = {comparison.name: render_comparison(summary) or "No runs yet." for comparison, summary in sections}
            update_document(document, quoted | {"missing": missing})
        sections = [(comparison, summary) for comparison, summary in sections if summary]
        summary = [{"comparison": c.name, "title": c.title, "tasks": s} for c, s in sections]
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (out / "table.md").write_text(render_comparisons(sections) + devices)
        for comparison, tasks in sections:
            plot_main_metric(tasks, rows, out / f"main_metric_{comparison.name}.png")
            if comparison.x is not None:
                plot_versus(tasks, rows, comparison.x, out / f"versus_{comparison.name}.png")
            plot_eval_curves(tasks, rows, out, out / f"curves_{comparison.name}.png")
        arms = list(dict.fromkeys(arm for comparison in comparisons for arm in comparison.arms))
        suffix = ""
    else:
        arms = [variant for variant in VARIANTS if variant in {row_arm(row) for row in rows}]
        comparison = legacy_comparison(arms, baseline)
        summary = summarize(rows, comparison.pairs, arms)
        suffix = "" if baseline == BASELINE else f"_vs_{baseline}"
        (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")
        (out / f"table{suffix}.md").write_text(render_table(summary, baseline) + devices)
        if not suffix:  # the plots show each method's own values, whatever it is paired against
            plot_main_metric(summary, rows, out / "main_metric.png")
    if not suffix:
        for task in dict.fromkeys(row["task"] for row in rows):
            plot_survival(task, rows, arms, out, out / f"survival_{task}.png")
    quoted_in = f"; its tables copied into {document.path}" if document is not None else ""
    written = f"{out}/table{suffix}.md (+ summary{suffix}.json{'' if suffix else ', PNGs'}){quoted_in}"
    print(f"Report written to {written}.", flush=True)
    return summary
