"""CTC speech recognition (`...ForCTC`, family `ctc_lm_head`): an utterance is a trajectory, alive while greedy CTC
decoding gets at least half of its target tokens right at their positions; its module terms are the model's own CTC
loss per utterance. The head matrix (tests/test_heads.py) covers the shared head, 3 SPG steps, the plain folder and
SPG off against Trainer for Wav2Vec2ForCTC and HubertForCTC."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import CTC_MAX_LABELS, CTC_VOCABULARY, ctc_dataset, losses, tiny_model, train_each, training_args
from test_core_integrations import ChainWatcher, assert_chain_trained
from torch import nn
from transformers import Trainer, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.heads import head_family_for
from spg_hf.objectives import OBJECTIVES, CTCTargets, ctc_correct, ctc_targets
from spg_hf.spg import ChainTerms, spg_loss

VOCAB = CTC_VOCABULARY
MAX_LABELS = CTC_MAX_LABELS
CLASSES = ["HubertForCTC", "Wav2Vec2ForCTC"]  # their tiny configs: helpers.TINY_CONFIGS


def batch(size: int = 3) -> dict:
    rows = ctc_dataset(size)[:size]
    return {name: torch.tensor(values) for name, values in rows.items()}


def one_hot_frames(frames: list[list[int]]) -> torch.Tensor:
    """Logits whose argmax on each frame is the given token."""
    return nn.functional.one_hot(torch.tensor(frames), VOCAB).float() * 5


# ---- the survival rule and the module terms, by hand ----


def test_survival_on_a_constructed_batch():
    B = 0  # blank
    frames = [
        # target [1, 2, 3]: decodes to 1 2 3 (repeats collapsed, blanks dropped): all right.
        [1, 1, B, 2, B, 3, 3, B],
        # target [1, 2, 3, 4, 5, 6]: decodes to 1 2 9 9 (2 of 6 right, a third). The frames past its length would
        # decode a right 5 and 6 (4 of 6) if they counted.
        [1, B, 2, 9, B, 9, 5, 6],
        # target [4, 5, 6, 7]: decodes to 4 8 6 (2 of 4 right: exactly half).
        [4, 4, 8, 8, 6, B, B, B],
    ]
    labels = torch.tensor([[1, 2, 3, -100, -100, -100], [1, 2, 3, 4, 5, 6], [4, 5, 6, 7, 0, -100]])
    targets = CTCTargets(labels, torch.tensor([8, 6, 8]), blank=0, reduction="mean", zero_infinity=False)
    assert ctc_correct(one_hot_frames(frames), targets).tolist() == [True, False, True]
    # All frames valid: utterance 2 gets 4 of 6 right.
    whole = CTCTargets(labels, torch.tensor([8, 8, 8]), blank=0, reduction="mean", zero_infinity=False)
    assert ctc_correct(one_hot_frames(frames), whole).tolist() == [True, True, True]


def test_an_utterance_without_target_tokens_is_right_when_nothing_is_decoded():
    labels = torch.tensor([[-100, -100], [0, -100]])
    targets = CTCTargets(labels, torch.tensor([4, 4]), blank=0, reduction="mean", zero_infinity=False)
    assert ctc_correct(one_hot_frames([[0, 0, 0, 0], [0, 3, 0, 0]]), targets).tolist() == [True, False]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_module_terms_average_to_the_models_ctc_loss(reduction):
    """Over a batch in which every utterance is alive, a module term is the model's own CTC loss on its logits."""
    torch.manual_seed(0)
    logits = torch.randn(3, 10, VOCAB)
    labels = torch.tensor([[1, 2, 3, -100], [4, 4, 5, 6], [7, 0, -100, -100]])
    lengths = torch.tensor([10, 7, 9])
    targets = CTCTargets(labels, lengths, blank=0, reduction=reduction, zero_infinity=True)
    losses, _ = OBJECTIVES["ctc"].terms(logits, targets, 0.5)
    own = transformers.loss.loss_ctc.ForCTCLoss(logits, labels, lengths, 0, reduction=reduction, zero_infinity=True)
    torch.testing.assert_close(losses.mean(), own)
    result = spg_loss(
        torch.tensor(0.0), [ChainTerms(torch.ones(3, dtype=torch.bool), [(losses, losses > -1)])], [1.0], "batch"
    )
    torch.testing.assert_close(result.loss, own)


# ---- the family ----


@pytest.mark.parametrize("class_name", CLASSES)
def test_family_and_objective(class_name):
    model = tiny_model(class_name)
    family = head_family_for(model)
    assert (family.name, family.task, family.objective_names(model)[0]) == ("ctc_lm_head", "ctc", "ctc")


@pytest.mark.parametrize("class_name", CLASSES)
def test_targets_read_the_frames_the_models_loss_reads(class_name):
    model = tiny_model(class_name).eval()
    inputs = batch()
    targets = ctc_targets(model, inputs)
    with torch.no_grad():
        outputs = model(**inputs)
    assert targets.frame_lengths.tolist()[0] < outputs.logits.shape[1] == targets.frame_lengths.tolist()[1]
    losses, _ = OBJECTIVES["ctc"].terms(outputs.logits, targets, 0.5)
    torch.testing.assert_close(losses.mean(), outputs.loss)
    without_mask = ctc_targets(model, {"input_values": inputs["input_values"], "labels": inputs["labels"]})
    assert without_mask.frame_lengths.tolist() == [outputs.logits.shape[1]] * 3


# ---- training ----


def test_base_term_is_trainers_loss(tmp_path):
    plain, spg = train_each(
        [
            (Trainer, training_args(tmp_path / "plain", args_class=TrainingArguments, max_steps=1)),
            (SPGTrainer, training_args(tmp_path / "spg", max_steps=1, spg_weights=[0.0], spg_dropout=0.0)),
        ],
        lambda: dict(
            model=tiny_model("Wav2Vec2ForCTC", layerdrop=0.0, hidden_dropout=0.0, final_dropout=0.0),
            train_dataset=ctc_dataset(),
        ),
    )
    assert losses(spg)[0] == pytest.approx(losses(plain)[0], rel=1e-6)


def test_utterances_decoded_right_survive_and_train_the_chain(tmp_path):
    """Every utterance's target is the token 5 and the head predicts 5 on every frame: greedy decoding gives 5,
    so every utterance reaches every module and the chain trains."""
    model = tiny_model("Wav2Vec2ForCTC")
    with torch.no_grad():
        model.lm_head.weight.mul_(0.01)
        model.lm_head.bias.zero_()[5] = 10.0
    dataset = ctc_dataset().map(lambda row: {"labels": [5] + [-100] * (MAX_LABELS - 1)})
    watcher = ChainWatcher()
    args = training_args(str(tmp_path), max_steps=1, spg_activation="none")
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset, callbacks=[watcher])
    trainer.train()
    log = next(log for log in trainer.state.log_history if "loss" in log)
    assert [log[f"spg/survival_{t}"] for t in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert_chain_trained(watcher)
