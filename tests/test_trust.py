"""SPG scores what the model's own loss scores, and leaves the model as Trainer would (issue 40's findings).

Each test reproduces one way SPG used to train on something other than the model's loss, change the model's state, or
crash where Trainer trains: a regression head read as multi-label, BatchNorm statistics moved by the chain, the wrong
token under prompt tuning, XLNet's unshifted labels scored shifted, an auxiliary head whose labels Trainer popped, TRL
with prompt tuning, zero weights that were not Trainer's steps, OPT's projected classifier, Trainer's error wording.
The loss check that refuses what cannot be proven is tested at the end."""

from __future__ import annotations

import functools
import logging
import re

import pytest
import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset
from helpers import (
    DECODER,
    TINY_CONFIGS,
    TRAINS_AS_TRAINER,
    assert_trained_alike,
    losses,
    segmentation_dataset,
    text_dataset,
    tiny_model,
    token_dataset,
    train_each,
    training_args,
)
from own_models import Segmenter, TextClassifier, TinyFCN
from peft import PromptTuningConfig, get_peft_model
from torch import nn
from transformers import Trainer, TrainingArguments

from spg_hf import SPGTrainer

# Over SHORT_RUN: one step over the whole dataset with nothing moving: module 1 (dropout 0, zero weights) is the
# model's own prediction, so its logged term and survival can be recomputed from the model's outputs.
STILL = dict(
    per_device_train_batch_size=8,
    max_steps=1,
    learning_rate=0.0,
    spg_dropout=0.0,
    spg_weights=[1.0, 1.0],
    spg_normalize="batch",
)


def logged(trainer: transformers.Trainer) -> dict[str, float]:
    return next(log for log in trainer.state.log_history if "loss" in log)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm statistics and counters included)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(first: nn.Module, second: nn.Module) -> None:
    a, b = full_state(first), full_state(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---- 1. an own regression head with [batch, 1] float labels is regression, not multi-label ----


class ColumnRegressor(TextClassifier):
    """One output kept as a column, float labels [batch, 1], mean squared error: what `F.mse_loss(pred, labels)`
    users write."""

    def __init__(self) -> None:
        super().__init__(num_outputs=1)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        prediction = self.head(self.encoder(self.embed(input_ids)).mean(dim=1))
        return {"loss": None if labels is None else F.mse_loss(prediction, labels), "logits": prediction}


# At rate 0 for 4 steps: BatchNorm's running statistics are all that moves.
STILL_FCN = dict(learning_rate=0.0, max_steps=4)


def fcn_run(auxiliary: bool = False) -> dict:
    """The look-alike FCN (seed 0) and its segmentation images, for a trainer."""
    torch.manual_seed(0)
    return dict(model=Segmenter(TinyFCN(num_classes=3, auxiliary=auxiliary)), train_dataset=segmentation_dataset())


def column_regression_dataset(size: int = 8) -> Dataset:
    dataset = text_dataset(size=size, regression=True)
    return Dataset.from_dict({"input_ids": dataset["input_ids"], "labels": [[value] for value in dataset["labels"]]})


def test_own_column_regression_head_is_scored_as_regression(tmp_path):
    torch.manual_seed(0)
    model = ColumnRegressor()
    dataset = column_regression_dataset()
    args = training_args(tmp_path, STILL, spg_head="head", spg_regression_tolerance=100.0)
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    with torch.no_grad():
        expected = model(torch.tensor(dataset["input_ids"]), torch.tensor(dataset["labels"]))["loss"]
    # Every prediction is within the tolerance: module 1's term is the mean squared error over the batch.
    assert logged(trainer)["spg/survival_1"] == 1.0
    assert logged(trainer)["spg/loss_1"] == pytest.approx(expected.item(), abs=1e-4)


# ---- 2. and 3. (the item 3): chain passes leave BatchNorm statistics alone ----


def test_chain_passes_leave_batchnorm_statistics_as_trainer_leaves_them(tmp_path):
    runs = [
        (Trainer, training_args(tmp_path / "plain", STILL_FCN, args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", STILL_FCN, spg_head="net.classifier")),
    ]
    runs = train_each(runs, fcn_run)
    assert any("spg/survival_1" in log for log in runs[1].state.log_history)
    assert_same_state(runs[0].model, runs[1].model)


# ---- 3. PEFT prompt tuning on a last-token classifier: the chain reads the token the model pools ----


def test_prompt_tuning_last_token_classifier_chain_reads_the_pooled_token(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model("LlamaForSequenceClassification", num_labels=3),
        PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
    )
    dataset = text_dataset(size=8)
    args = training_args(tmp_path, STILL)
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(dataset["input_ids"])).logits
    labels = torch.tensor(dataset["labels"])
    right = logits.argmax(-1) == labels
    expected = (right * F.cross_entropy(logits, labels, reduction="none")).mean()
    log = logged(trainer)
    assert log["spg/survival_1"] == pytest.approx(right.float().mean().item(), abs=1e-4)
    assert log["spg/survival_2"] == log["spg/survival_1"]  # module 1 predicts what the model predicts
    assert log["spg/loss_1"] == pytest.approx(expected.item(), abs=1e-4)


# ---- 4. XLNet's LM head reads its labels unshifted ----


def test_xlnet_lm_head_is_scored_on_its_unshifted_labels(tmp_path):
    torch.manual_seed(0)
    model = transformers.XLNetLMHeadModel(
        transformers.XLNetConfig(vocab_size=99, d_model=32, n_layer=1, n_head=2, d_inner=64, dropout=0.0)
    )
    dataset = token_dataset(size=8, task="causal_lm")
    args = training_args(tmp_path, STILL)
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    model.eval()
    labels = torch.tensor(dataset["labels"])
    with torch.no_grad():
        predicted = model(input_ids=torch.tensor(dataset["input_ids"])).logits.argmax(-1)
    labelled = labels != -100
    accuracy = (predicted == labels)[labelled].float().mean().item()
    assert logged(trainer)["spg/survival_1"] == pytest.approx(accuracy, abs=1e-4)


# ---- 5. an auxiliary head trains when Trainer pops the labels (compute_loss_func) ----


class SegmenterWithAuxiliaryLogits(Segmenter):
    """Hands both heads' logits to the loss, as a compute_loss_func needs them."""

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):
        outputs = self.net(pixel_values)
        return {"loss": None, "logits": outputs["out"], "auxiliary_logits": outputs["aux"]}


def segmentation_loss(outputs, labels, num_items_in_batch=None):
    main = F.cross_entropy(outputs["logits"], labels, ignore_index=255)
    return main + 0.5 * F.cross_entropy(outputs["auxiliary_logits"], labels, ignore_index=255)


def test_auxiliary_chain_trains_with_compute_loss_func(tmp_path):
    torch.manual_seed(0)
    model = SegmenterWithAuxiliaryLogits(TinyFCN(num_classes=3, auxiliary=True))
    args = training_args(
        str(tmp_path), spg_head="net.classifier", spg_auxiliary_head="net.aux_classifier", spg_auxiliary_weight=0.5
    )
    trainer = SPGTrainer(
        model=model, args=args, train_dataset=segmentation_dataset(), compute_loss_func=segmentation_loss
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/auxiliary_survival_1"] <= 1.0 for log in logs)


# ---- 6. SPGSFTTrainer with a prompt-tuning adapter ----


def test_sft_with_prompt_tuning_trains(tmp_path):
    from test_trl import DATASETS, RUN, causal_lm, char_tokenizer

    from spg_hf.trl import SPGSFTConfig, SPGSFTTrainer

    tokenizer = char_tokenizer()
    model = get_peft_model(causal_lm(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    trainer = SPGSFTTrainer(
        model=model,
        args=training_args(tmp_path, RUN, args_class=SPGSFTConfig),
        train_dataset=DATASETS["prompt-completion"](),
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)


# ---- 7. zero weights are Trainer's steps, bit for bit ----


def test_zero_weights_train_exactly_as_trainer(tmp_path):
    runs = [
        (Trainer, training_args(tmp_path / "plain", args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", spg_weights=[0.0] * 3)),
    ]
    # Dropout 0.1: the chain's draws must not shift it.
    runs = train_each(
        runs, lambda: dict(model=tiny_model("BertForSequenceClassification"), train_dataset=text_dataset())
    )
    assert len(losses(runs[0])) == 3 and losses(runs[0]) == losses(runs[1])
    assert_same_state(runs[0].model, runs[1].model)


# ---- 8. a chain sized from the state the head reads (OPT's projection) ----


def test_opt_classifier_with_a_projection_trains(tmp_path):
    model = transformers.OPTForSequenceClassification(
        transformers.OPTConfig(**dict(DECODER, ffn_dim=64, word_embed_proj_dim=16), num_labels=3)
    )
    trainer = SPGTrainer(model=model, args=training_args(str(tmp_path)), train_dataset=text_dataset())
    trainer.train()
    assert all(0.0 <= log["spg/survival_1"] <= 1.0 for log in trainer.state.log_history if "loss" in log)


# ---- 9. Trainer's own words for the errors Trainer raises ----


@pytest.mark.parametrize(
    ("resume", "words"),
    [
        ("nowhere", "Can't find a valid checkpoint at {}/nowhere"),
        (True, r"^No valid checkpoint found in output directory \({}\)"),
    ],
    ids=["a missing checkpoint", "True without a checkpoint"],
)
def test_resume_without_a_checkpoint_keeps_trainers_words(tmp_path, resume, words):
    trainer = SPGTrainer(
        model=tiny_model("BertForSequenceClassification"),
        args=training_args(str(tmp_path)),
        train_dataset=text_dataset(),
    )
    with pytest.raises(ValueError, match=words.format(tmp_path)):
        trainer.train(resume_from_checkpoint=str(tmp_path / resume) if resume is not True else True)


def test_zero_weights_with_an_auxiliary_chain_equal_trainer(tmp_path):
    auxiliary = dict(spg_head="net.classifier", spg_auxiliary_head="net.aux_classifier", spg_auxiliary_weight=0.5)
    runs = [
        (Trainer, training_args(tmp_path / "plain", args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", TRAINS_AS_TRAINER["zero weights"], auxiliary)),
    ]
    runs = train_each(runs, functools.partial(fcn_run, auxiliary=True))
    assert "spg/auxiliary_survival_1" in logged(runs[1])
    assert_trained_alike(*runs)


# ---- the loss check: what SPG cannot prove it scores is refused before training, with both numbers ----


class DoubledLossBert(transformers.BertForSequenceClassification):
    """Its loss is twice the cross-entropy of its logits: no objective of SPG's reproduces it."""

    def forward(self, input_ids=None, labels=None, **kwargs):
        outputs = super().forward(input_ids=input_ids, labels=labels, **kwargs)
        if outputs.loss is not None:
            outputs.loss = outputs.loss * 2
        return outputs


def focal_loss(outputs, labels, num_items_in_batch=None):
    log_probs = outputs["logits"].log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    return (-((1 - log_probs.exp()) ** 2) * log_probs).mean()


REFUSED_LOSS = r"the loss Trainer computes is (\d[\d.e-]*), and SPG's objectives give classification: (\d[\d.e-]*)"


def test_a_model_loss_spg_does_not_reproduce_is_refused_with_both_numbers(tmp_path):
    config_class, settings = TINY_CONFIGS["BertForSequenceClassification"]
    model = DoubledLossBert(config_class(**settings, num_labels=2))
    args = training_args(str(tmp_path))
    with pytest.raises(ValueError, match="SPG does not support DoubledLossBert with head family base_pooler") as error:
        SPGTrainer(model=model, args=args, train_dataset=text_dataset())
    own, spg = (float(number) for number in re.search(REFUSED_LOSS, str(error.value)).groups())
    assert own == pytest.approx(2 * spg, rel=1e-4)
    SPGTrainer(model=model, args=training_args(str(tmp_path), spg_enabled=False))


def test_a_compute_loss_func_spg_does_not_reproduce_is_refused(tmp_path):
    args = training_args(str(tmp_path))
    with pytest.raises(ValueError, match=REFUSED_LOSS):
        SPGTrainer(
            model=tiny_model("BertForSequenceClassification"),
            args=args,
            train_dataset=text_dataset(),
            compute_loss_func=focal_loss,
        )


def test_the_loss_check_is_skipped_with_a_log_where_the_batch_has_no_labels(tmp_path, caplog):
    dataset = text_dataset().remove_columns("labels")
    args = training_args(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="spg_hf.trainer.support"):
        SPGTrainer(model=tiny_model("BertForSequenceClassification"), args=args, train_dataset=dataset)
    assert "gives no loss to check base_pooler's objective against" in caplog.text
