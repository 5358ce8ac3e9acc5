"""The run loop: each job a subprocess with its own log, `parallel` at a time, one row appended per finished run,
progress with an ETA, and a stop (bad input, Ctrl-C, SIGTERM) that ends the runs still going. `spg-hf compare` and
bench/quality both run on it."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from spg_hf.compare.errors import CompareError, RunFailed
from spg_hf.compare.rows import RAW_FILE, append_rows, load_rows

# Where HF's example scripts write their eval metrics (Trainer.save_metrics): eval_results.json, or only the
# combined all_results.json.
METRICS_FILES = ("eval_results.json", "all_results.json")
# What stays in a run's folder after its metrics are read: metrics, the training log history and the script's
# output. Model weights, tokenizer copies, checkpoints and the like are deleted (unless outputs are kept).
KEPT_FILES = frozenset({*METRICS_FILES, "train_results.json", "trainer_state.json", "run.log"})
LOG_TAIL_LINES = 15


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
    """Hours and minutes, e.g. 1h05m."""
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
