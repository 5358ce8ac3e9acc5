"""Does SPG pay on your task? `spg-hf compare` runs one training command under two or more arms (flag overrides),
paired by seed, and reports each arm's metrics, the per-seed paired difference to the baseline arm with its 95%
Student-t interval, and a one-line verdict.

    spg-hf compare --out reports/rte -- python run_glue_spg.py configs/glue/rte_minilm_cpu.yaml
    spg-hf compare --out reports/rte_lr --seeds 5 --jobs 2 --threads 1 \\
        --arm plain="--spg_enabled false --learning_rate 2e-5 --num_train_epochs 3" \\
        --arm spg="--spg_enabled true --learning_rate 2e-5 --num_train_epochs 5" \\
        -- accelerate launch --num_processes 2 run_glue_spg.py configs/glue/rte_bert_base_spg.yaml
    spg-hf compare --out reports/rte --report-only          # rebuild the report from the finished runs

The command is anything that takes `--seed` and `--output_dir` (appended after the arm's flags) and writes its eval
metrics into the output folder as HF's example scripts do (eval_results.json, or all_results.json). `{seed}` in the
command or an arm's flags is replaced by the run's seed (e.g. to continue from a model trained with the same seed).

Without --arm the arms are `plain` (--spg_enabled false, the baseline) and `spg` (--spg_enabled true: the config's
SPG settings, else the library's defaults). Every finished run is one row of <out>/raw.jsonl: a restart of the same
command skips them and redoes a run that was cut off. Besides the rows: report.md (verdict, paired tables, every run),
summary.json, per_seed.png (with matplotlib installed) and each run's folder and log.

The run loop, the resumable rows and the paired statistics are also what bench/quality (the GLUE sweeps) runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

RAW_FILE = "raw.jsonl"
COMPARISON_FILE = "comparison.json"
# Where HF's example scripts write their eval metrics (Trainer.save_metrics): eval_results.json, or only the
# combined all_results.json.
METRICS_FILES = ("eval_results.json", "all_results.json")
# What stays in a run's folder after its metrics are read: metrics, the training log history and the script's
# output. Model weights, tokenizer copies, checkpoints and the like are deleted (unless outputs are kept).
KEPT_FILES = frozenset({*METRICS_FILES, "train_results.json", "trainer_state.json", "run.log"})
# The main metric of a metrics file, when none is named: the first of these it has (GLUE's CoLA, STS-B, MRPC/QQP
# and the others; SQuAD v1.1 / v2.0; audio classification).
MAIN_METRIC_PREFERENCE = ("matthews_correlation", "pearson", "f1", "exact_match", "exact", "accuracy")
# Reported beside the main metric whenever every run has them (the example scripts' eval loss and, for
# classification, expected calibration error).
SECONDARY_METRICS = ("eval_loss", "eval_expected_calibration_error")
DEFAULT_ARMS = {"plain": ("--spg_enabled", "false"), "spg": ("--spg_enabled", "true")}
LOG_TAIL_LINES = 15


class CompareError(Exception):
    """Input that cannot give a comparison (a command that writes no metrics, an unknown metric, an arm whose
    flags the command rejects, rows of another experiment in the results folder): everything stops."""


class RunFailed(RuntimeError):
    """One run failed; it is reported with its log's last lines and the other runs go on."""


# ---- statistics ----


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    return {
        "n": n,
        "mean": float(array.mean()) if n else math.nan,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }


def paired_difference(
    treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95, higher_is_better: bool = True
) -> dict:
    """Per-seed differences treatment - baseline: their mean, std, Student-t interval for the mean difference, and
    how many seeds the treatment won (was better: higher, or lower for a loss), tied and lost. Both sequences are
    ordered by the same seeds."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(treatment)} and {len(baseline)}.")
    diffs = np.asarray(treatment, dtype=float) - np.asarray(baseline, dtype=float)
    summary = describe(diffs)
    n = summary["n"]
    if n > 1:
        half_width = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * summary["std"] / math.sqrt(n)
    else:
        half_width = math.nan
    better = diffs if higher_is_better else -diffs
    return summary | {
        "ci_low": summary["mean"] - half_width,
        "ci_high": summary["mean"] + half_width,
        "confidence": confidence,
        "wins": int((better > 0).sum()),
        "ties": int((better == 0).sum()),
        "losses": int((better < 0).sum()),
    }


def pair_by_seed(
    treatment: Mapping[int, float], baseline: Mapping[int, float], higher_is_better: bool = True
) -> dict | None:
    """The paired difference over the seeds both arms have (seed -> value each), with those seeds first; None
    when they share none."""
    seeds = sorted(seed for seed in treatment if seed in baseline)
    if not seeds:
        return None
    difference = paired_difference(
        [treatment[seed] for seed in seeds], [baseline[seed] for seed in seeds], higher_is_better=higher_is_better
    )
    return {"seeds": seeds} | difference


def higher_is_better(metric: str) -> bool:
    """Losses and calibration errors are better lower; every other metric higher."""
    return not metric.endswith(("loss", "calibration_error"))


# ---- rows ----


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


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Appends one line per row. A line cut short by a crash is ended first, so it cannot swallow the next row."""
    if not rows:
        return
    cut_short = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as raw:
        raw.write("\n" if cut_short else "")
        raw.writelines(json.dumps(row) + "\n" for row in rows)


# ---- running ----


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to make: `command` (without --output_dir) trains into `folder` and logs to `log`, both relative to
    the results folder. `key` is what its row is found by; `flags` what defines the experiment (a row of the same
    key with other flags is refused). Runs of one `cost_kind` take about the same time per `cost_units`."""

    key: Hashable
    arm: str
    label: str
    command: tuple[str, ...]
    flags: tuple[str, ...]
    folder: Path
    log: Path
    cost_kind: Hashable = None
    cost_units: float = 1.0

    def __str__(self) -> str:
        return self.label


@functools.cache
def device_name() -> str:
    """What a run trains on, for reading its wall time: Trainer takes the first GPU when one is visible."""
    import torch  # here, not at the top: planning and reporting need no torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores"


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


class _Children:
    """The runs' processes, so that a stop (bad input, Ctrl-C, SIGTERM) ends the ones still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, command: Sequence[str], log: Any, environment: Mapping[str, str]) -> int:
        with self._lock:
            if self._stopped:
                raise RunFailed("not started: the comparison stopped")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
            self._running.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for process in self._running:
                process.terminate()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _prune(folder: Path) -> None:
    for item in folder.iterdir():
        if item.name in KEPT_FILES:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def execute(job: Job, out: Path, threads: int, children: _Children, keep_outputs: bool = False) -> dict:
    """Run one job in a subprocess and return what every row holds: its metrics, train size and time, wall time,
    device, threads, folder, flags and finishing time. Raises RunFailed if it failed, CompareError if it exited
    cleanly without a metrics file."""
    folder, log_path = out / job.folder, out / job.log
    if folder.exists():  # left over from an interrupted attempt: never mix its files with the new run's
        shutil.rmtree(folder)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [*job.command, "--output_dir", str(folder)]
    environment = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n\n")
        log.flush()
        returncode = children.run(command, log, environment)
    wall = time.monotonic() - start
    if returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-LOG_TAIL_LINES:])
        raise RunFailed(f"{job} failed (exit code {returncode}); log: {log_path}\n{tail}")
    metrics_path = next((folder / name for name in METRICS_FILES if (folder / name).is_file()), None)
    if metrics_path is None:
        raise CompareError(
            f"{job}: the command exited cleanly but wrote none of {', '.join(METRICS_FILES)} into its --output_dir "
            f"{folder}; it needs a script that saves its eval metrics as HF's example scripts do (log: {log_path})."
        )
    history = _read_json(folder / "trainer_state.json").get("log_history", [])
    if not keep_outputs:
        _prune(folder)
    return {
        "metrics": json.loads(metrics_path.read_text()),
        "train_samples": _read_json(folder / "train_results.json").get("train_samples"),
        "train_runtime": next(
            (entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None
        ),
        "wall_s": round(wall, 1),
        "device": device_name(),
        "threads": threads,
        "output_dir": str(job.folder),
        "flags": list(job.flags),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def check_finished(
    jobs: Sequence[Job], rows: Sequence[dict], row_key: Callable[[dict], Hashable], raw_path: Path
) -> dict[Job, dict]:
    """The jobs that already have a row, with that row. A row made with other flags is an error: mixing settings
    under one results folder would make the paired comparison meaningless."""
    finished = {row_key(row): row for row in rows}
    done = {}
    for job in jobs:
        row = finished.get(job.key)
        if row is None:
            continue
        if row["flags"] != list(job.flags):
            raise CompareError(
                f"{raw_path} already holds {job} with other flags:\n  {shlex.join(row['flags'])}\n"
                f"now asked for:\n  {shlex.join(job.flags)}\nUse another --out, or the same settings to resume."
            )
        done[job] = row
    return done


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (e.g. `kill` of a background comparison) unwinds like Ctrl-C, so the running runs are ended too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_jobs(
    jobs: Sequence[Job],
    out: Path,
    row_key: Callable[[dict], Hashable],
    finish: Callable[[Job, dict], dict],
    headline: Callable[[dict], str],
    report: Callable[[], object] = lambda: None,
    threads: int = 1,
    parallel: int = 1,
    keep_outputs: bool = False,
) -> list[str]:
    """Run every job without a row in <out>/raw.jsonl yet, `parallel` at a time in order, and append each one's
    row (`finish` turns what `execute` measured into it, raising RunFailed or CompareError) as it ends, calling
    `report` after each (and at the start, when earlier rows exist); `headline` says a row's result in the progress
    line. Returns the failed runs' messages.

    A command that cannot work costs at most one run: when nothing has run yet the first job runs alone, and a
    failure of an arm's first run stops everything (the arm's flags are the likely cause); later failures are
    reported and the other runs go on."""
    out.mkdir(parents=True, exist_ok=True)
    raw_path = out / RAW_FILE
    done = check_finished(jobs, load_rows(raw_path), row_key, raw_path)
    todo = [job for job in jobs if job not in done]
    # The first run of each arm without a finished run tells whether the arm's flags work.
    arm_probes = {}
    for job in todo:
        if all(finished.arm != job.arm for finished in done):
            arm_probes.setdefault(job.arm, job)
    # Each remaining run is estimated from finished runs of its kind, per cost unit (e.g. per epoch), those of
    # earlier starts included; a kind without finished runs from all finished runs.
    walls: dict[Hashable, list[float]] = {}
    for job, row in done.items():
        walls.setdefault(job.cost_kind, []).append(row["wall_s"] / job.cost_units)

    def eta(unfinished: Sequence[Job]) -> str:
        all_walls = [wall for kind in walls.values() for wall in kind]
        if not all_walls:
            return "unknown until a run ends"
        per_unit = {kind: np.mean(values) for kind, values in walls.items()}
        fallback = np.mean(all_walls)
        return duration(sum(per_unit.get(job.cost_kind, fallback) * job.cost_units for job in unfinished) / parallel)

    print(
        f"{len(jobs)} planned runs: {len(done)} already finished, {len(todo)} to run, {parallel} at a time; "
        f"ETA {eta(todo)}.",
        flush=True,
    )
    if done:  # rows left by an earlier start: report them before the first new run ends
        report()
    failures: list[str] = []
    unfinished = list(todo)
    children = _Children()
    started_at = time.monotonic()

    def start(job: Job, pool: ThreadPoolExecutor) -> Future:
        number = todo.index(job) + 1
        print(f"{job}: started {time.strftime('%H:%M:%S')} (run {number} of {len(todo)})", flush=True)
        return pool.submit(execute, job, out, threads, children, keep_outputs)

    with _sigterm_exits(), ThreadPoolExecutor(max_workers=parallel) as pool:
        try:
            waiting = iter(todo)
            first = 1 if not done else parallel
            running = {start(job, pool): job for job in itertools.islice(waiting, first)}
            while running:
                future = next(as_completed(running))
                job = running.pop(future)
                unfinished.remove(job)
                finished = len(todo) - len(unfinished)
                try:
                    row = finish(job, future.result())
                except RunFailed as error:
                    if arm_probes.get(job.arm) == job:
                        raise CompareError(
                            f"the first run of arm {job.arm!r} failed; its flags or the command are likely wrong, "
                            f"so nothing else is run.\n{error}"
                        ) from None
                    print(f"[{finished}/{len(todo)}] FAILED {error}", flush=True)
                    failures.append(str(error))
                else:
                    append_rows(raw_path, [row])
                    walls.setdefault(job.cost_kind, []).append(row["wall_s"] / job.cost_units)
                    print(
                        f"[{finished}/{len(todo)}] {job}: {headline(row)} in {duration(row['wall_s'])}; "
                        f"{len(unfinished)} left, elapsed {duration(time.monotonic() - started_at)}, "
                        f"ETA for the rest {eta(unfinished)}",
                        flush=True,
                    )
                    # Keeps the report current, so partial results can be read or committed any time.
                    report()
                for later in itertools.islice(waiting, parallel - len(running)):
                    running[start(later, pool)] = later
        except BaseException:
            children.stop()
            pool.shutdown(cancel_futures=True)
            raise
    if failures:
        print(f"{len(failures)} runs failed (rerun the same command to retry them).", flush=True)
    return failures


# ---- the comparison: arms of one command, paired by seed ----


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One command run under named arms (flag overrides, in order) for each seed, paired against `baseline`."""

    command: tuple[str, ...]
    arms: tuple[tuple[str, tuple[str, ...]], ...]
    baseline: str
    seeds: tuple[int, ...]
    metric: str | None = None  # None: the metrics file's main metric (MAIN_METRIC_PREFERENCE)
    also: tuple[str, ...] = ()  # more metrics to pair, beside SECONDARY_METRICS

    @property
    def arm_names(self) -> list[str]:
        return [name for name, _ in self.arms]

    def jobs(self) -> list[Job]:
        """Seed by seed, every arm (paired runs side by side)."""
        jobs = []
        for seed in self.seeds:
            for arm, flags in self.arms:
                argv = tuple(part.replace("{seed}", str(seed)) for part in (*self.command, *flags))
                argv += ("--seed", str(seed))
                jobs.append(
                    Job(
                        key=(arm, seed),
                        arm=arm,
                        label=f"{arm} seed {seed}",
                        command=argv,
                        flags=argv,
                        folder=Path(arm) / f"seed{seed}",
                        log=Path(arm) / f"seed{seed}.log",
                        cost_kind=arm,
                    )
                )
        return jobs

    def to_json(self) -> dict:
        return {
            "command": list(self.command),
            "arms": {name: list(flags) for name, flags in self.arms},
            "baseline": self.baseline,
            "seeds": list(self.seeds),
            "metric": self.metric,
            "also": list(self.also),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            command=tuple(data["command"]),
            arms=tuple((name, tuple(flags)) for name, flags in data["arms"].items()),
            baseline=data["baseline"],
            seeds=tuple(data["seeds"]),
            metric=data["metric"],
            also=tuple(data["also"]),
        )


def resolve_metric(requested: str | None, metrics: Mapping[str, Any], source: str) -> str:
    """The name of the metric to compare in a metrics file: `requested` (with or without the eval_ prefix), or the
    file's main metric. Raises CompareError naming what the file has."""
    numeric = sorted(name for name, value in metrics.items() if isinstance(value, int | float))
    if requested is not None:
        for name in (requested, f"eval_{requested}"):
            if name in numeric:
                return name
        raise CompareError(f"metric {requested!r} is not in {source}; it has {', '.join(numeric)}.")
    for main in MAIN_METRIC_PREFERENCE:
        for name in (f"eval_{main}", main):
            if name in numeric:
                return name
    raise CompareError(
        f"{source} has none of the usual main metrics ({', '.join(MAIN_METRIC_PREFERENCE)}); name one with "
        f"--metric. It has {', '.join(numeric)}."
    )


def compared_metrics(comparison: Comparison, rows: Sequence[dict]) -> list[str]:
    """The main metric, then every secondary metric all rows have and the asked-for ones."""
    first = rows[0]["metrics"], f"{rows[0]['output_dir']}'s metrics"
    main = resolve_metric(comparison.metric, *first)
    asked = [resolve_metric(name, *first) for name in comparison.also]
    secondary = [name for name in SECONDARY_METRICS if all(name in row["metrics"] for row in rows)]
    return list(dict.fromkeys([main, *secondary, *asked]))


def summarize(comparison: Comparison, rows: Sequence[dict]) -> dict:
    """Per compared metric: each arm's mean and std over its seeds, its value per seed, and each other arm's paired
    difference to the baseline arm (better-than-baseline counted as won: higher, or lower for a loss)."""
    arms = [arm for arm in comparison.arm_names if any(row["arm"] == arm for row in rows)]
    metrics = compared_metrics(comparison, rows)
    by_arm = {arm: {row["seed"]: row for row in rows if row["arm"] == arm} for arm in arms}
    summary: dict[str, Any] = {"baseline": comparison.baseline, "main_metric": metrics[0], "metrics": {}}
    for metric in metrics:
        better_higher = higher_is_better(metric)
        values = {arm: {seed: by_arm[arm][seed]["metrics"][metric] for seed in sorted(by_arm[arm])} for arm in arms}
        per_arm = {arm: describe(list(values[arm].values())) | {"per_seed": values[arm]} for arm in arms}
        paired = {}
        if comparison.baseline in values:
            for arm in arms:
                pair = pair_by_seed(values[arm], values[comparison.baseline], better_higher)
                if arm != comparison.baseline and pair is not None:
                    paired[arm] = pair
        summary["metrics"][metric] = {"higher_is_better": better_higher, "arms": per_arm, "paired": paired}
    summary["verdict"] = verdict(summary)
    return summary


def _number(value: float, sign: bool = False) -> str:
    return "n/a" if math.isnan(value) else f"{value:{'+' if sign else ''}.4g}"


def _interval(pair: Mapping[str, float]) -> str:
    if math.isnan(pair["ci_low"]):
        return "n/a"
    return f"[{_number(pair['ci_low'], sign=True)}, {_number(pair['ci_high'], sign=True)}]"


def verdict(summary: Mapping[str, Any]) -> str:
    """One line: each arm ahead of, level with or behind the baseline on the main metric at 95%, with the
    interval; undecided with fewer than two paired seeds."""
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
            f"{standing}: {main} {_number(pair['mean'], sign=True)}, 95% interval {_interval(pair)}, "
            f"better on {pair['wins']} of {pair['n']} seeds"
        )
    return "; ".join(parts) + "."


def render_report(
    comparison: Comparison, rows: Sequence[dict], summary: Mapping[str, Any], failures: Sequence[str]
) -> str:
    """report.md: the verdict, the command and arms, a paired table per metric, every run, failed runs."""
    lines = [
        f"# Does SPG pay? {summary['verdict']}",
        "",
        f"Command: `{shlex.join(comparison.command)}` with `--seed <seed> --output_dir <arm>/seed<seed>` appended.",
        "",
        "Arms: "
        + "; ".join(
            f"{name}{' (baseline)' if name == comparison.baseline else ''} `{shlex.join(flags) or '(no flags)'}`"
            for name, flags in comparison.arms
        )
        + ".",
        "",
        f"Difference: per seed, arm - {comparison.baseline}, mean and 95% Student-t interval over the paired seeds; "
        "won: seeds where the arm was better (higher; for a loss or calibration error, lower).",
    ]
    for metric, section in summary["metrics"].items():
        role = "main metric, " if metric == summary["main_metric"] else ""
        lines += ["", f"## {metric} ({role}{'higher' if section['higher_is_better'] else 'lower'} is better)", ""]
        lines += [
            f"| arm | seeds | mean ± sd | per seed | diff vs {comparison.baseline} | 95% interval | won |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, values in section["arms"].items():
            pair = section["paired"].get(arm)
            spread = "" if math.isnan(values["std"]) else f" ± {_number(values['std'])}"
            cells = [arm, str(values["n"]), _number(values["mean"]) + spread]
            cells.append(", ".join(_number(value) for value in values["per_seed"].values()))
            if pair is None:
                cells += ["", "", ""]
            else:
                ties = f" ({pair['ties']} tied)" if pair["ties"] else ""
                cells += [_number(pair["mean"], sign=True), _interval(pair), f"{pair['wins']}/{pair['n']}{ties}"]
            lines.append("| " + " | ".join(cells) + " |")
    metrics = list(summary["metrics"])
    lines += ["", "## Runs", "", "| arm | seed | " + " | ".join(metrics) + " | wall time | device | output |"]
    lines.append("|---" * (len(metrics) + 5) + "|")
    for row in sorted(rows, key=lambda row: (comparison.arm_names.index(row["arm"]), row["seed"])):
        cells = [row["arm"], str(row["seed"]), *(_number(row["metrics"][metric]) for metric in metrics)]
        cells += [duration(row["wall_s"]), row["device"], row["output_dir"]]
        lines.append("| " + " | ".join(cells) + " |")
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
        axis.set_title(f"{metric} ({'higher' if section['higher_is_better'] else 'lower'} is better)", fontsize=9)
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
    """report.md, summary.json and per_seed.png from the rows in `out`; returns the verdict (None without rows)."""
    rows = [row for row in load_rows(out / RAW_FILE) if row["arm"] in comparison.arm_names]
    if not rows:
        return None
    summary = summarize(comparison, rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(render_report(comparison, rows, summary, failures))
    plot_per_seed(summary, out / "per_seed.png")
    return summary["verdict"]


def run_comparison(
    comparison: Comparison, out: Path, threads: int = 1, parallel: int = 1, keep_outputs: bool = False
) -> int:
    """Run every arm and seed not yet in <out>, writing the report as runs finish; returns how many failed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPARISON_FILE).write_text(json.dumps(comparison.to_json(), indent=1) + "\n")

    def finish(job: Job, measured: dict) -> dict:
        source = f"{out / job.folder}'s metrics"
        for requested in (comparison.metric, *comparison.also):  # None: the main metric, which must be there
            resolve_metric(requested, measured["metrics"], source)
        arm, seed = job.key
        return {"arm": arm, "seed": seed, "arm_flags": list(dict(comparison.arms)[arm])} | measured

    def headline(row: dict) -> str:
        metric = resolve_metric(comparison.metric, row["metrics"], row["output_dir"])
        return f"{metric} {_number(row['metrics'][metric])}"

    failures: list[str] = []
    report = functools.partial(write_report, out, comparison, failures)
    failures += run_jobs(
        comparison.jobs(),
        out,
        row_key=lambda row: (row["arm"], row["seed"]),
        finish=finish,
        headline=headline,
        report=report,
        threads=threads,
        parallel=parallel,
        keep_outputs=keep_outputs,
    )
    final = report()
    if final is not None:
        print(f"Report: {out / 'report.md'}\n{final}", flush=True)
    return len(failures)


# ---- command line ----


def parse_arm(text: str) -> tuple[str, tuple[str, ...]]:
    """`name=flags` (the flags as a shell would split them) -> (name, flags)."""
    name, separator, flags = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f'{text!r}: expected NAME=FLAGS, e.g. plain="--spg_enabled false".')
    try:
        return name.strip(), tuple(shlex.split(flags))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}.") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spg-hf compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Everything after `--` is the training command.\n\n" + __doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder (rows, report, each run's folder)")
    parser.add_argument(
        "--arm",
        dest="arms",
        action="append",
        type=parse_arm,
        metavar="NAME=FLAGS",
        help="an arm: its name and the flags it adds to the command (repeat; default: "
        + ", ".join(f'{name}="{shlex.join(flags)}"' for name, flags in DEFAULT_ARMS.items())
        + ")",
    )
    parser.add_argument("--baseline", help="the arm the others are paired against (default: the first arm)")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (paired runs per arm; default 3)")
    parser.add_argument("--first-seed", dest="first_seed", type=int, default=1, help="seeds start here (default 1)")
    parser.add_argument(
        "--metric",
        help="the metric to compare, as in the metrics file, eval_ prefix optional (default: the first of "
        + ", ".join(MAIN_METRIC_PREFERENCE)
        + " it has)",
    )
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="METRIC",
        help=f"more metrics to pair (always paired when present: {', '.join(SECONDARY_METRICS)})",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument(
        "--threads", type=int, help="torch/OpenMP threads per run (default: the CPU cores divided by --jobs)"
    )
    parser.add_argument(
        "--keep-outputs",
        dest="keep_outputs",
        action="store_true",
        help="keep each run's whole output folder (default: only metrics, trainer_state.json and logs stay)",
    )
    parser.add_argument(
        "--report-only", dest="report_only", action="store_true", help="rebuild the report from the finished runs"
    )
    return parser


def split_at_double_dash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the options, what follows the first `--`: a command or flags passed on unchanged)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Comparison]:
    options, command = split_at_double_dash(argv)
    parser = build_parser()
    args = parser.parse_args(options)
    for name in ("seeds", "jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.report_only:
        saved = args.out / COMPARISON_FILE
        if not saved.is_file():
            parser.error(f"--report-only: {saved} not found (no comparison was run into {args.out}).")
        comparison = Comparison.from_json(json.loads(saved.read_text()))
        # The report can pair other metrics of the same rows.
        chosen = {"metric": args.metric or comparison.metric, "also": tuple(args.also) or comparison.also}
        return args, dataclasses.replace(comparison, **chosen)
    if not command:
        parser.error("give the training command after `--`, e.g. -- python run_glue_spg.py config.yaml")
    arms = dict(args.arms or DEFAULT_ARMS.items())
    if args.arms and len(arms) != len(args.arms):
        parser.error("two --arm options have the same name.")
    baseline = args.baseline or next(iter(arms))
    if baseline not in arms:
        parser.error(f"--baseline {baseline}: no such arm; arms: {', '.join(arms)}.")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    comparison = Comparison(
        command=tuple(command),
        arms=tuple(arms.items()),
        baseline=baseline,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        metric=args.metric,
        also=tuple(args.also),
    )
    return args, comparison


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m spg_hf.compare` / `spg-hf compare`: 0 when every run finished, 1 when some failed."""
    args, comparison = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.report_only:
            final = write_report(args.out, comparison)
            print(final or f"No finished runs in {args.out / RAW_FILE}; no report written.")
            return 0
        return 1 if run_comparison(comparison, args.out, args.threads, args.jobs, args.keep_outputs) else 0
    except CompareError as error:
        raise SystemExit(f"spg-hf compare: error: {error}") from None


def spg_hf_main(argv: Sequence[str] | None = None) -> int:
    """The `spg-hf` console script: `spg-hf compare ...` (the only subcommand)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "compare":
        print("usage: spg-hf compare [options] -- <training command>   (spg-hf compare --help for more)")
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
