"""Token-level SPG: every labelled position is a trajectory (token classification, masked and causal LM).

The per-family matrix (SPG trains and logs, SPG off equals Trainer, saved folders load, the shared head reproduces
the logits) is in tests/test_heads.py; here: the loss against a hand computation, the causal shift, ignored
positions, and tied embeddings."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from helpers import no_dropout, tiny_model, token_dataset, training_args

from spg_hf import SPGTrainer
from spg_hf.spg import SURVIVOR_EPS
from spg_hf.trainer import overrides

WEIGHTS = [0.4, 0.2, 0.1]


# Over SHORT_RUN: the paper's chain without dropout, at WEIGHTS, so the loss can be recomputed by hand.
SETTINGS = dict(spg_weights=WEIGHTS, spg_dropout=0.0, spg_activation="none")


def hand_loss(model, chain, inputs: dict, targets: torch.Tensor, normalize: str) -> torch.Tensor:
    """The paper's loss written out per position over the full sequence, no shortcut: CE_0 mean over the labelled
    positions, then each module on every position, masked by the survivors."""
    with torch.no_grad():
        hidden = model.base_model(input_ids=inputs["input_ids"])[0]
        head = model.get_output_embeddings() if hasattr(model, "lm_head") else model.classifier
        labelled = targets != -100
        logits = head(hidden)[labelled]
        goal = targets[labelled]
        total = F.cross_entropy(logits, goal)
        alive = (logits.argmax(-1) == goal).float()
        for weight, replica in zip(WEIGHTS, chain.replicas, strict=True):
            hidden = replica(hidden)
            logits = head(hidden)[labelled]
            losses = F.cross_entropy(logits, goal, reduction="none")
            denominator = alive.sum() + SURVIVOR_EPS if normalize == "survivors" else alive.numel()
            total = total + weight * (alive * losses).sum() / denominator
            alive = alive * (logits.argmax(-1) == goal).float()
    return total


@pytest.mark.parametrize("normalize", ["survivors", "batch"])
@pytest.mark.parametrize("class_name", ["LlamaForCausalLM", "BertForTokenClassification"])
def test_loss_matches_hand_computation(output_dir, class_name, normalize):
    model = tiny_model(class_name, **({} if "Llama" in class_name else no_dropout()), num_labels=2)
    inputs = {"input_ids": torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))}
    causal = "CausalLM" in class_name
    # Labels the model already predicts on about half the positions, so that trajectories survive module 1.
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1)
    generator = torch.Generator().manual_seed(1)
    keep = torch.rand(predicted.shape, generator=generator) < 0.5
    targets = torch.where(keep, predicted, torch.randint(0, 2, predicted.shape, generator=generator))
    targets[:, -1 if causal else 0] = -100
    targets[0, 3:6] = -100
    # The model's loss pairs logits at p with labels[p + 1]: labels are the targets shifted right.
    labels = torch.cat([torch.full((4, 1), -100), targets[:, :-1]], dim=1) if causal else targets
    trainer = SPGTrainer(model=model, args=training_args(output_dir, SETTINGS, spg_normalize=normalize))
    trainer._hp_search_setup(None)  # attaches the chain as train() does
    chain = model.spg_chain
    with torch.no_grad():
        for parameter in chain.parameters():  # a chain that has learned, close enough to keep some survivors
            parameter.normal_(0, 0.02)
    model.train()
    loss = trainer.compute_loss(model, inputs | {"labels": labels})
    expected = hand_loss(model, chain, inputs, targets, normalize)
    survival = trainer._spg_run.main.survival_sum
    assert survival[1] > 0, "no position survived module 1: the check would not exercise the masks"
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("class_name", ["BertForMaskedLM", "RobertaForMaskedLM", "GPT2LMHeadModel"])
def test_tied_embeddings_stay_tied(output_dir, class_name):
    model = tiny_model(class_name)
    trainer = SPGTrainer(
        model=model,
        args=training_args(output_dir, SETTINGS, learning_rate=1e-2),
        train_dataset=token_dataset(task="masked_lm"),
    )
    trainer.train()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert not hasattr(model, "spg_chain")


@pytest.mark.parametrize("normalize, warned", [("survivors", True), ("batch", False)])
def test_few_surviving_tokens_warn_once_under_survivors_normalisation(output_dir, caplog, normalize, warned):
    # A random language model predicts about 1 in 99 tokens right: far below LOW_TOKEN_SURVIVAL.
    trainer = SPGTrainer(
        model=tiny_model("LlamaForCausalLM"),
        args=training_args(output_dir, SETTINGS, spg_normalize=normalize),
        train_dataset=token_dataset(task="causal_lm"),
    )
    with caplog.at_level(logging.WARNING, logger=overrides.__name__):
        trainer.train()
    survival = [log["spg/survival_1"] for log in trainer.state.log_history if "spg/survival_1" in log]
    assert len(survival) == 3 and max(survival) < overrides.LOW_TOKEN_SURVIVAL
    messages = [record.getMessage() for record in caplog.records if "reach module 1" in record.getMessage()]
    assert len(messages) == (1 if warned else 0)
    if warned:
        assert "spg_normalize='batch'" in messages[0]
