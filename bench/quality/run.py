"""Running a plan with spg_hf.compare's run loop: one run_glue_spg.py subprocess per run (a crash or leak in one
run cannot spoil the others), `jobs` at a time, one raw row per finished run appended to <out>/raw.jsonl, so a
restart resumes where it stopped. What is GLUE-sweep specific stays here: the rows' task, arm and variant fields,
the task's metrics, and rows taken over from earlier results folders."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.quality.plan import METRIC_NAMES, TASK_METRICS, Run, Settings, row_arm
from bench.quality.report import points
from spg_hf.compare import RAW_FILE, Job, RunFailed, append_rows, load_rows, run_jobs


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
    append_rows(raw_path, adopted)
    return adopted


def job_of(run: Run, settings: Settings, script: Path) -> Job:
    """The run as spg_hf.compare runs it. Wall time scales with epochs and differs between the whole training set
    and a subset, so runs are estimated per epoch from finished runs of the same task and kind."""
    flags = tuple(settings.script_flags(run))
    return Job(
        key=run.key,
        arm=run.arm,
        label=str(run),
        command=(sys.executable, str(script), *flags),
        flags=flags,
        folder=run.folder,
        log=run.folder / "run.log",
        cost_kind=(run.task, run.train_samples is None),
        cost_units=run.epochs,
    )


def glue_row(run: Run, measured: dict) -> dict:
    """A finished run's raw row: its task, arm, variant and seed, the task's main metric, then what was measured.
    Raises RunFailed when the metrics lack one of the task's."""
    metrics = measured["metrics"]
    missing = [name for name in TASK_METRICS[run.task] if name not in metrics]
    if missing:
        raise RunFailed(f"{run}: its eval metrics lack {missing}; they have {sorted(metrics)}.")
    main = TASK_METRICS[run.task][0]
    return {
        "task": run.task,
        "arm": run.arm,
        "variant": run.variant,
        "seed": run.seed,
        "main_metric": main,
        "main": metrics[main],
    } | measured


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
    by_key = {run.key: run for run in runs}
    failures = run_jobs(
        [job_of(run, settings, script) for run in runs],
        out,
        row_key=lambda row: (row["task"], row_arm(row), row["seed"]),
        finish=lambda job, measured: glue_row(by_key[job.key], measured),
        headline=lambda row: f"{METRIC_NAMES.get(row['main_metric'], row['main_metric'])} {points(row['main'])}",
        report=report,
        threads=threads,
        parallel=jobs,
    )
    return len(failures)
