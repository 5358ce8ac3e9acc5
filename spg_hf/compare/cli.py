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

Which way a metric is better: lower for losses, error rates (cer, wer), regression errors (mse, rmse, mae),
perplexity and calibration errors, higher for accuracy, F1, correlations, exact match and the like, by name with or
without an eval_/test_ prefix. --greater-is-better / --lower-is-better say it for the --metric; for a metric it
does not know the report says that it assumed higher.

One experiment per folder: every row records the command, the arms' flags, the metric and its direction flag, and
the content hash of each config file (.yaml, .yml, .json, .toml, .cfg, .ini) the command or the arms name. A command
whose experiment differs from the folder's rows is refused before anything runs or is written; give it another
--out, or --force-new to move the folder aside (to <out>.moved-<date>-<time>) and start afresh. More seeds, another
--baseline or --also extend or reread the same experiment. --report-only rebuilds the report from the rows alone.

The run loop, the resumable rows and the paired statistics are also what bench/quality (the GLUE sweeps) runs on.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from spg_hf.compare.comparison import DEFAULT_ARMS, Comparison, check_one_experiment, move_aside, read_rows
from spg_hf.compare.errors import CompareError
from spg_hf.compare.metrics import DIRECTION_FLAGS, MAIN_METRIC_PREFERENCE, SECONDARY_METRICS, resolve_metric
from spg_hf.compare.report import format_number, write_report
from spg_hf.compare.runner import Job, run_jobs


def run_comparison(
    comparison: Comparison,
    out: Path,
    threads: int = 1,
    parallel: int = 1,
    keep_outputs: bool = False,
    force_new: bool = False,
) -> int:
    """Run every arm and seed not yet in <out>, writing the report as runs finish; returns how many failed. Raises
    CompareError, before anything is written, when <out> holds rows of another experiment; `force_new` first moves
    a non-empty <out> aside (move_aside) instead."""
    if force_new and (aside := move_aside(out)) is not None:
        print(f"Moved the earlier contents of {out} to {aside}.", flush=True)
    check_one_experiment(comparison, read_rows(out), out)
    experiment, report_settings = comparison.experiment(), comparison.report_settings()

    def finish(job: Job, measured: dict) -> dict:
        source = f"{out / job.folder}'s metrics"
        for requested in (comparison.metric, *comparison.also):  # None: the main metric, which must be there
            resolve_metric(requested, measured["metrics"], source)
        arm, seed = job.key
        return {"arm": arm, "seed": seed, "experiment": experiment, "report_settings": report_settings} | measured

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
    direction = parser.add_mutually_exclusive_group()
    for higher, flag in DIRECTION_FLAGS.items():
        direction.add_argument(
            flag,
            dest="greater_is_better",
            action="store_const",
            const=higher,
            help=f"the --metric is better {'higher' if higher else 'lower'} (default: by its name, else higher, "
            "as the report then says)",
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
        "--force-new",
        dest="force_new",
        action="store_true",
        help="move a non-empty --out aside to <out>.moved-<date>-<time> (nothing is deleted) and start afresh",
    )
    parser.add_argument(
        "--report-only",
        dest="report_only",
        action="store_true",
        help="rebuild the report from the finished runs' rows (--metric, --also, --baseline and the direction "
        "flags may reread them)",
    )
    return parser


def split_at_double_dash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the options, what follows the first `--`: a command or flags passed on unchanged)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Comparison | None]:
    """The options, and the comparison to run (None with --report-only: the rows define it, see reread)."""
    options, command = split_at_double_dash(argv)
    parser = build_parser()
    args = parser.parse_args(options)
    for name in ("seeds", "jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.report_only:
        if command or args.force_new:
            parser.error(
                "--report-only rebuilds the report from the rows; it takes no training command or --force-new."
            )
        return args, None
    if not command:
        parser.error("give the training command after `--`, e.g. -- python run_glue_spg.py config.yaml")
    arms = dict(args.arms or DEFAULT_ARMS.items())
    if args.arms and len(arms) != len(args.arms):
        parser.error("two --arm options have the same name.")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        comparison = Comparison.define(
            command=command,
            arms=list(arms.items()),
            baseline=args.baseline or next(iter(arms)),
            seeds=range(args.first_seed, args.first_seed + args.seeds),
            metric=args.metric,
            also=args.also,
            greater_is_better=args.greater_is_better,
        )
    except CompareError as error:
        parser.error(str(error))
    return args, comparison


def reread(args: argparse.Namespace) -> Comparison:
    """For --report-only: the comparison the rows of --out were made by, with what the options change in how they
    are read. A direction flag goes with the metric: a new --metric without one is judged by its name."""
    recorded = Comparison.from_rows(read_rows(args.out), args.out)
    keeps_metric = args.metric is None and args.greater_is_better is None
    return dataclasses.replace(
        recorded,
        metric=args.metric or recorded.metric,
        greater_is_better=recorded.greater_is_better if keeps_metric else args.greater_is_better,
        also=tuple(args.also) or recorded.also,
        baseline=args.baseline or recorded.baseline,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m spg_hf.compare` / `spg-hf compare`: 0 when every run finished, 1 when some failed."""
    args, comparison = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if comparison is None:
            print(write_report(args.out, reread(args)))
            return 0
        failed = run_comparison(comparison, args.out, args.threads, args.jobs, args.keep_outputs, args.force_new)
        return 1 if failed else 0
    except CompareError as error:
        raise SystemExit(f"spg-hf compare: error: {error}") from None


def spg_hf_main(argv: Sequence[str] | None = None) -> int:
    """The `spg-hf` console script: `spg-hf compare ...` (the only subcommand)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "compare":
        print("usage: spg-hf compare [options] -- <training command>   (spg-hf compare --help for more)")
        return 2
    return main(argv[1:])
