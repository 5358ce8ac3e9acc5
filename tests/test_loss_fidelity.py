"""The base term is Trainer's loss, the chain runs in the model's precision, and ignored labels are no trajectory.

Every family: with `spg_weights=[0]` SPG's loss is the loss Trainer computes, label smoothing (with the causal shift)
included. bf16 weights, bf16 autocast or both: the chain takes the model's dtype and runs inside Trainer's autocast,
example- and token-level. Examples labelled -100 count in no term, denominator or statistic."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_CONFIGS, losses, qa_dataset, text_dataset, tiny_model, token_dataset, train_each, training_args
from test_core_integrations import ChainWatcher, assert_chain_trained
from test_heads import ONE_CLASS_PER_FAMILY, build, train_dataset
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.objectives import OBJECTIVES
from spg_hf.spg import ChainTerms, TRPChain, spg_loss, token_level_terms


def one_model_per_family() -> dict[str, tuple[str, dict]]:
    """ONE_CLASS_PER_FAMILY but the families Trainer's label smoother cannot read."""
    chosen = dict(ONE_CLASS_PER_FAMILY)
    # Trainer's label smoother reads CTC's per-frame logits against per-utterance labels, and segmentation's
    # [classes, h, w] logits against [H, W] labels, and fails: tests/test_ctc.py and tests/test_segmentation.py check
    # those base terms against Trainer's loss without smoothing.
    del chosen["ctc_lm_head"], chosen["segmentation_classifier"]
    return chosen


ONE_MODEL_PER_FAMILY = one_model_per_family()


def without_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


# ---- the base term is Trainer's loss ----


@pytest.mark.parametrize("family", sorted(ONE_MODEL_PER_FAMILY))
def test_base_term_is_trainers_loss_with_label_smoothing(tmp_path, family):
    """Causal LMs included: Trainer smooths them with the labels shifted, as their loss pairs them."""
    class_name, overrides = ONE_MODEL_PER_FAMILY[family]
    if "layerdrop" in TINY_CONFIGS[class_name][0]().to_dict():
        overrides = overrides | {"layerdrop": 0.0}  # LayerDrop draws at random whatever the dropout modules say
    settings = dict(max_steps=1, label_smoothing_factor=0.1)

    def build_run() -> dict:
        model = without_dropout(build(class_name, **overrides))
        return dict(model=model, train_dataset=train_dataset(model))

    runs = [
        (Trainer, training_args(tmp_path / "plain", settings, args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", settings, spg_weights=[0.0], spg_dropout=0.0)),
    ]
    plain, spg = train_each(runs, build_run)
    assert losses(spg)[0] == pytest.approx(losses(plain)[0], rel=1e-6)


# ---- precision: the model's dtype, Trainer's autocast ----


class PrecisionProbe(ChainWatcher):
    """Records, for every call of the first chain module, whether bf16 autocast was on and the dtype its linear map
    computes in, and the dtype of every output of the head module."""

    def __init__(self, head_module: str) -> None:
        super().__init__()
        self.head_module = head_module
        self.chain_calls: list[tuple[bool, torch.dtype]] = []
        self.head_dtypes: set[torch.dtype] = set()
        self.chain_dtypes: set[torch.dtype] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.chain_dtypes = {parameter.dtype for parameter in model.spg_chain.parameters()}
        model.spg_chain.replicas[0].register_forward_hook(self.record_chain)
        model.get_submodule(self.head_module).register_forward_hook(
            lambda module, args, output: self.head_dtypes.add(output.dtype)
        )

    def record_chain(self, module, args, output):
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        self.chain_calls.append((autocast, nn.functional.linear(args[0], module.weight, module.bias).dtype))


@pytest.mark.parametrize(
    "weights_dtype, bf16", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, True)]
)
@pytest.mark.parametrize(
    "class_name, head_module",
    [
        ("LlamaForSequenceClassification", "score"),
        ("BertForSequenceClassification", "classifier"),
        ("LlamaForCausalLM", "lm_head"),
        ("BertForMaskedLM", "cls"),
    ],
)
def test_chain_runs_in_the_models_precision(tmp_path, class_name, head_module, weights_dtype, bf16):
    model = build(class_name).to(weights_dtype)
    probe = PrecisionProbe(head_module)
    trainer = SPGTrainer(
        model=model,
        args=training_args(str(tmp_path), bf16=bf16, spg_activation="none"),
        train_dataset=train_dataset(model),
        callbacks=[probe],
    )
    trainer.train()
    assert probe.chain_dtypes == {weights_dtype}
    assert probe.chain_calls == [(bf16, torch.bfloat16)] * 3
    assert probe.head_dtypes == {torch.bfloat16}
    assert all(math.isfinite(loss) for loss in losses(trainer))
    if "SequenceClassification" in class_name:  # random LMs predict too few tokens right for the chain to learn
        assert_chain_trained(probe)


# ---- ignored labels are no trajectory ----


def test_ignored_examples_count_in_no_term():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    module_logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    targets = torch.tensor([0, 0, -100, 1])
    trajectories = targets != -100
    _, base_correct = OBJECTIVES["classification"].terms(logits, targets, 0.5)
    terms = [OBJECTIVES["classification"].terms(module_logits, targets, 0.5)]
    module_losses = torch.nn.functional.cross_entropy(module_logits[[0, 1, 3]], targets[[0, 1, 3]], reduction="none")
    # Examples 0, 1, 3 are trajectories, all three right at the base: module 1's term averages their losses.
    for normalize in ("survivors", "batch"):
        result = spg_loss(torch.tensor(0.0), [ChainTerms(base_correct, terms, trajectories)], [1.0], normalize)
        assert result.loss.item() == pytest.approx(module_losses.mean().item(), rel=1e-6)
        assert result.survival.tolist() == [1.0]


def test_ignored_example_labels_train(output_dir):
    dataset = text_dataset().map(
        lambda row, index: {"labels": -100 if index % 3 == 0 else row["labels"]}, with_indices=True
    )
    model = tiny_model("BertForSequenceClassification", num_labels=3)
    trainer = SPGTrainer(model=model, args=training_args(output_dir), train_dataset=dataset)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    assert all(math.isfinite(log["loss"]) for log in logs)


# ---- label smoothing in the module terms ----

EPSILON = 0.1


def smoothed_cross_entropy_by_hand(logits: torch.Tensor, label: int) -> float:
    """Trainer's LabelSmoother for one example: (1 - eps) NLL + eps times the mean over the classes of -log p."""
    log_probs = logits.double().log_softmax(-1)
    return float((1 - EPSILON) * -log_probs[label] + EPSILON * -log_probs.mean())


def test_module_terms_smooth_as_trainers_label_smoother():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, -100])
    losses_, _ = OBJECTIVES["classification"].terms(logits, labels, 0.5, EPSILON)
    expected = [smoothed_cross_entropy_by_hand(logits[0], 0), smoothed_cross_entropy_by_hand(logits[1], 1), 0.0]
    assert losses_.tolist() == pytest.approx(expected, rel=1e-5)
    # Token level: the same smoothing on every labelled position still alive.
    states, targets = logits, torch.tensor([0, 2, 1])
    chain = TRPChain(3, [0.0], "none")
    terms = token_level_terms(chain, lambda s: s, states, targets, torch.ones(3, dtype=torch.bool), 2, EPSILON)
    expected = [smoothed_cross_entropy_by_hand(logits[i], int(targets[i])) for i in range(3)]
    assert terms[0][0].tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("class_name", "dataset", "applied"),
    [
        ("BertForSequenceClassification", text_dataset, EPSILON),
        ("LlamaForCausalLM", lambda: token_dataset(task="causal_lm"), EPSILON),
        ("BertForQuestionAnswering", qa_dataset, 0.0),  # Trainer smooths no QA loss (no `labels`), nor does SPG
    ],
)
def test_trainer_hands_its_label_smoothing_to_the_module_terms(output_dir, class_name, dataset, applied):
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run = trainer._spg_run
            seen.append(run.objective.label_smoothing(run.label_smoothing))

    args = training_args(output_dir, label_smoothing_factor=EPSILON)
    trainer = SPGTrainer(model=tiny_model(class_name), args=args, train_dataset=dataset(), callbacks=[Watch()])
    trainer.train()
    assert seen == [applied] * 3
