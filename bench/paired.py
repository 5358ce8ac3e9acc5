"""Paired-seed evidence runs shared by the small benchmarks (image_digits, squad_lm): a resumable raw.jsonl of one row
per (method, seed, recipe), and a table of each method's metric with the paired difference and its 95% t interval."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from spg_hf.compare import describe, paired_difference


def run_paired(
    out: Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    recipe: dict,
    train_once: Callable[[str, int], dict],
) -> list[dict]:
    """Train every (seed, method) pair not yet in out/raw.jsonl with this recipe, appending each row as it finishes
    (so a rerun resumes), and return all rows of this recipe."""
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()] if raw.exists() else []
    rows = [row for row in rows if all(row.get(key) == value for key, value in recipe.items())]
    done = {(row["method"], row["seed"]) for row in rows}
    for seed in seeds:
        for method in methods:
            if (method, seed) in done:
                continue
            row = {"method": method, "seed": seed, **recipe, **train_once(method, seed)}
            print(json.dumps(row), flush=True)
            with raw.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def paired_table(
    rows: Sequence[dict],
    metric: str,
    label: str,
    baseline: str = "plain",
    treatment: str = "spg",
    scale: float = 1.0,
    digits: int = 2,
    extra_columns: Sequence[str] = (),
) -> str:
    """Markdown: per method the metric's mean ± std over the seeds both methods finished and the per-seed values
    (and the mean of any extra columns), then treatment - baseline paired by seed with its 95% t interval. 'Won'
    counts seeds where the treatment's metric is higher, so give a metric where higher is better, or read the
    sign as the table says."""
    by_method = {
        method: {row["seed"]: row for row in rows if row["method"] == method} for method in (baseline, treatment)
    }
    seeds = sorted(set(by_method[baseline]) & set(by_method[treatment]))
    if not seeds:
        return f"No seed has both {baseline} and {treatment} finished.\n"
    header = f"| method | {label} (mean ± std) | per seed |" + "".join(
        f" {column} (mean) |" for column in extra_columns
    )
    lines = [header, "|---" * (3 + len(extra_columns)) + "|"]
    values = {method: [scale * by_method[method][seed][metric] for seed in seeds] for method in by_method}
    for method in (baseline, treatment):
        summary = describe(values[method])
        extras = "".join(f" {_mean_of_present(by_method[method], seeds, column)} |" for column in extra_columns)
        lines.append(
            f"| {method} | {summary['mean']:.{digits}f} ± {summary['std']:.{digits}f} | "
            + ", ".join(f"{value:.{digits}f}" for value in values[method])
            + f" |{extras}"
        )
    pair = paired_difference(values[treatment], values[baseline])
    lines += [
        "",
        f"{treatment} - {baseline} over seeds {seeds}: {pair['mean']:+.{digits}f}, 95% interval "
        f"[{pair['ci_low']:+.{digits}f}, {pair['ci_high']:+.{digits}f}]; {treatment} higher on {pair['wins']} of "
        f"{len(seeds)} (ties {pair['ties']}).",
    ]
    return "\n".join(lines) + "\n"


def _mean_of_present(rows_by_seed: dict[int, dict], seeds: Sequence[int], column: str) -> str:
    """The mean of a column over the seeds whose rows have a value (e.g. SPG's survival, absent for plain), or '-'."""
    values = [rows_by_seed[seed].get(column) for seed in seeds]
    present = [value for value in values if value is not None]
    return f"{describe(present)['mean']:.4g}" if present else "-"
