"""`spg-hf compare`: does SPG pay on your task? One training command run under named arms, paired by seed, with a
verdict. One file per job:

- `stats.py`: the paired statistics (numpy and scipy only);
- `metrics.py`: which metric is compared and which way it is better;
- `rows.py`: the results folder's rows (raw.jsonl);
- `runner.py`: the run loop (subprocesses, parallel runs, resuming, stopping), also bench/quality's;
- `comparison.py`: the arms, seeds and command of one comparison;
- `report.py`: summary, verdict, report.md and the per-seed plot;
- `cli.py`: `spg-hf compare` / `python -m spg_hf.compare`.

What bench/ and the tests use is exported here.
"""

from spg_hf.compare.cli import main, parse_args, run_comparison, spg_hf_main, split_at_double_dash
from spg_hf.compare.comparison import DEFAULT_ARMS, Comparison
from spg_hf.compare.errors import CompareError, RunFailed
from spg_hf.compare.metrics import (
    MAIN_METRIC_PREFERENCE,
    SECONDARY_METRICS,
    Direction,
    higher_is_better,
    metric_direction,
    resolve_metric,
)
from spg_hf.compare.report import draw_per_seed, save_figure, summarize, verdict, write_report
from spg_hf.compare.rows import RAW_FILE, append_rows, load_rows
from spg_hf.compare.runner import KEPT_FILES, METRICS_FILES, Job, device_name, run_jobs
from spg_hf.compare.stats import describe, pair_by_seed, paired_difference

__all__ = [
    "DEFAULT_ARMS",
    "KEPT_FILES",
    "MAIN_METRIC_PREFERENCE",
    "METRICS_FILES",
    "RAW_FILE",
    "SECONDARY_METRICS",
    "Comparison",
    "CompareError",
    "Direction",
    "Job",
    "RunFailed",
    "append_rows",
    "describe",
    "device_name",
    "draw_per_seed",
    "higher_is_better",
    "load_rows",
    "main",
    "metric_direction",
    "pair_by_seed",
    "paired_difference",
    "parse_args",
    "resolve_metric",
    "run_comparison",
    "run_jobs",
    "save_figure",
    "spg_hf_main",
    "split_at_double_dash",
    "summarize",
    "verdict",
    "write_report",
]
