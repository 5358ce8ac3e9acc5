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
import dataclasses
import functools
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from spg_hf.compare.comparison import COMPARISON_FILE, DEFAULT_ARMS, Comparison
from spg_hf.compare.errors import CompareError
from spg_hf.compare.metrics import MAIN_METRIC_PREFERENCE, SECONDARY_METRICS, resolve_metric
from spg_hf.compare.report import format_number, write_report
from spg_hf.compare.rows import RAW_FILE
from spg_hf.compare.runner import Job, run_jobs


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
        return f"{metric} {format_number(row['metrics'][metric])}"

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
