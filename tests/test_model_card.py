"""The model card SPGTrainer writes (offline): tagged `spg`, naming the method, its settings and the paper."""

from __future__ import annotations

import os

from helpers import text_dataset, tiny_bert
from huggingface_hub import ModelCard

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.model_card import CITATION, PAPER_URL


def trained_trainer(output_dir: str, **overrides) -> SPGTrainer:
    args = SPGTrainingArguments(
        output_dir,
        use_cpu=True,
        per_device_train_batch_size=8,
        max_steps=2,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **overrides,
    )
    trainer = SPGTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(size=16))
    trainer.train()
    trainer.save_model()
    return trainer


def test_spg_run_card_has_tag_method_settings_and_citation(output_dir):
    trainer = trained_trainer(output_dir, spg_weights=[0.5, 0.25], spg_dropout=[0.1, 0.3], cold_start_steps=1)
    # Called twice, as push_to_hub does at every save: the card is rewritten, not extended.
    trainer.create_model_card(tags="text-classification")
    trainer.create_model_card(tags=["text-classification"])

    card = ModelCard.load(os.path.join(output_dir, "README.md"))
    assert {"spg", "generated_from_trainer", "text-classification"} <= set(card.data.tags)
    text = card.text
    assert "Sequential Policy Gradient (SPG), a method introduced in [" in text and f"]({PAPER_URL})" in text
    assert "a chain of 2 temporary modules" in text
    for line in (
        "- spg_weights: [0.5, 0.25]",
        "- spg_dropout: [0.1, 0.3]",
        "- spg_activation: relu",
        "- cold_start_steps: 1",
    ):
        assert text.count(line) == 1, line
    # The method heads Trainer's "Training procedure" section, above its hyperparameters; the citation ends the card.
    assert text.index("## Training procedure") < text.index("### SPG settings") < text.index("### Training hyper")
    assert text.count("## Citation") == 1
    assert text.rstrip().endswith(f"```bibtex\n{CITATION}\n```")
    assert "arXiv:2506.15051" in CITATION and "Zheng Li" in CITATION


def test_plain_run_card_is_trainers(output_dir):
    trainer = trained_trainer(output_dir, spg_enabled=False)
    trainer.create_model_card()

    card = ModelCard.load(os.path.join(output_dir, "README.md"))
    assert card.data.tags == ["generated_from_trainer"]
    assert "SPG" not in card.text and "Citation" not in card.text
