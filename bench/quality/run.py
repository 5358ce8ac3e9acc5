"""Running a plan: one run_glue_spg.py subprocess per run (a crash or leak in one run cannot spoil the others),
`jobs` at a time, one raw row per finished run appended to <out>/raw.jsonl, so a restart resumes where it stopped."""

from __future__ import annotations

import functools
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from bench.quality.plan import METRIC_NAMES, RAW_FILE, TASK_METRICS, Run, Settings, load_rows, row_arm
from bench.quality.report import points

# What stays in a run's folder after its metrics are read: metrics, the training log history (for the survival
# and per-epoch plots) and the script's output. Model weights, tokenizer copies and the like are deleted.
KEPT_FILES = frozenset({"eval_results.json", "train_results.json", "all_results.json", "trainer_state.json", "run.log"})


def check_finished(runs: Sequence[Run], rows: Sequence[dict], settings: Settings, raw_path: Path) -> dict[Run, dict]:
    """The planned runs that already have a row, with that row. A row made with other flags is an error: mixing
    settings under one results folder would make the paired comparison meaningless."""
    finished = {(row["task"], row_arm(row), row["seed"]): row for row in rows}
    done = {}
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
        done[run] = row
    return done


def adopt_rows(runs: Sequence[Run], settings: Settings, out: Path, sources: Sequence[Path]) -> list[dict]:
    """Rows of earlier results folders whose flags are exactly those of a planned run without a row, copied into
    <out>/raw.jsonl as that run's (with reused_from naming the folder, output_dir pointing into it): an identical
    experiment is not run twice. Returns the adopted rows."""
    raw_path = out / RAW_FILE
    have = {(row["task"], row_arm(row), row["seed"]) for row in load_rows(raw_path)}
    by_flags = {}
    for source in sources:
        for row in load_rows(source / RAW_FILE):
            by_flags.setdefault(tuple(row["flags"]), (source, row))
    adopted = []
    for run in runs:
        found = by_flags.get(tuple(settings.script_flags(run)))
        if run.key in have or found is None:
            continue
        source, row = found
        adopted.append(
            row
            | {
                "arm": run.arm,
                "output_dir": os.path.relpath(source / row["output_dir"], out),
                "reused_from": str(source),
            }
        )
    if adopted:
        with open(raw_path, "a") as raw:
            raw.writelines(json.dumps(row) + "\n" for row in adopted)
    return adopted


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
    history = _read_json(folder / "trainer_state.json").get("log_history", [])
    train_runtime = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None)
    train_samples = _read_json(folder / "train_results.json").get("train_samples")
    _prune(folder)
    return {
        "task": run.task,
        "arm": run.arm,
        "variant": run.variant,
        "seed": run.seed,
        "main_metric": TASK_METRICS[run.task][0],
        "main": metrics[TASK_METRICS[run.task][0]],
        "metrics": metrics,
        "train_samples": train_samples,
        "train_runtime": train_runtime,
        "wall_s": round(wall, 1),
        "device": device_name(),
        "threads": threads,
        "output_dir": str(run.folder),
        "flags": flags,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


@functools.cache
def device_name() -> str:
    """What a run trains on, for reading its wall time: Trainer takes the first GPU when one is visible."""
    import torch  # here, not at the top: planning and reporting need no torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores"


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


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _cost(run: Run) -> tuple[str, bool]:
    """Runs alike in cost for the time estimate: same task, whole training set or a subset."""
    return (run.task, run.train_samples is None)


def run_sweep(
    runs: Sequence[Run],
    settings: Settings,
    out: Path,
    script: Path,
    threads: int,
    jobs: int,
    report: Callable[[], object],
) -> int:
    """Run every planned run without a row yet, `jobs` at a time in plan order, appending rows as they finish and
    calling `report` after each (and at the start, when earlier rows exist). Returns the number that failed."""
    raw_path = out / RAW_FILE
    done = check_finished(runs, load_rows(raw_path), settings, raw_path)
    todo = [run for run in runs if run not in done]
    # Wall time scales with epochs: each remaining run is estimated from finished runs of its kind, per epoch,
    # those of earlier starts included.
    walls: dict[tuple[str, bool], list[float]] = {}
    for run, row in done.items():
        walls.setdefault(_cost(run), []).append(row["wall_s"] / run.epochs)

    def eta(unfinished: Sequence[Run]) -> str:
        all_walls = [wall for kind in walls.values() for wall in kind]
        if not all_walls:
            return "unknown until a run ends"
        return _duration(sum(np.mean(walls.get(_cost(run), all_walls)) * run.epochs for run in unfinished) / jobs)

    print(
        f"{len(runs)} planned runs: {len(done)} already finished, {len(todo)} to run, {jobs} at a time; "
        f"ETA {eta(todo)}.",
        flush=True,
    )
    if done:  # rows taken over or left by an earlier start: report them before the first new run ends
        report()
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
            walls.setdefault(_cost(run), []).append(row["wall_s"] / run.epochs)
            print(
                f"[{finished}/{len(todo)}] {run}: {METRIC_NAMES.get(row['main_metric'], row['main_metric'])} "
                f"{points(row['main'])} in {_duration(row['wall_s'])}; ETA for the rest {eta(unfinished)}",
                flush=True,
            )
            # Keeps table, plots and missing.md current, so partial results can be read or committed any time.
            report()
    if failures:
        print(f"{len(failures)} runs failed (rerun to retry): {', '.join(map(str, failures))}", flush=True)
    return len(failures)
