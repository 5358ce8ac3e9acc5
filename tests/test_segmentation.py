"""Semantic segmentation: every labelled pixel is a trajectory, the ignore index is none; the module terms are the
model's own per-pixel cross-entropy at the labels' size; the base term is Trainer's loss. (The head matrix in
tests/test_heads.py covers Segformer, UperNet, BEiT and DPT: shared head, 3 SPG steps, plain folder, SPG off.)"""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch
from helpers import SEGMENTATION_IGNORE, losses, segmentation_dataset, tiny_model, train_each, training_args
from own_models import Segmenter, TinyFCN
from transformers import Trainer, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.objectives import OBJECTIVES, SegmentationTargets
from spg_hf.spg import ChainTerms, spg_loss
from spg_hf.trainer import SPG_WEIGHTS_NAME


def test_survival_counts_labelled_pixels_only():
    # One image, 2x2 logits at the labels' size (no resize), 3 classes; pixel 3 is ignored.
    logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [0.0, 5.0]], [[0.0, 0.0], [5.0, 0.0]]]])
    labels = torch.tensor([[[0, 1], [1, SEGMENTATION_IGNORE]]])
    targets = SegmentationTargets(labels, SEGMENTATION_IGNORE)
    base_losses, base_correct = OBJECTIVES["segmentation"].terms(logits, targets, 0.5)
    assert base_correct.tolist() == [True, True, False, False]  # pixel 2 predicts class 2, labelled 1
    assert base_losses[3] == 0  # ignored
    # A module that gets pixel 0 right and pixel 1 wrong: survival to module 1 is 2 of the 3 labelled pixels.
    module_logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [5.0, 0.0]]]])
    module_losses, module_correct = OBJECTIVES["segmentation"].terms(module_logits, targets, 0.5)
    chain = ChainTerms(base_correct, [(module_losses, module_correct)], targets.pixels())
    result = spg_loss(torch.tensor(0.0), [chain], [1.0], "batch")
    assert result.survival.tolist() == pytest.approx([2 / 3])
    # "batch": the module's loss over the 2 surviving pixels, divided by the 3 labelled ones.
    expected = (module_losses[0] + module_losses[1]) / 3
    assert result.module_losses[0].item() == pytest.approx(expected.item())
    assert math.isclose(result.loss.item(), expected.item(), rel_tol=1e-6)


def test_module_terms_upsample_to_the_labels_as_the_models_loss_does():
    model = tiny_model("SegformerForSemanticSegmentation", num_labels=3).eval()
    batch = segmentation_dataset(size=2).with_format("torch")[:2]
    with torch.no_grad():
        outputs = model(**batch)
    per_pixel, _ = OBJECTIVES["segmentation"].terms(
        outputs.logits, OBJECTIVES["segmentation"].targets(model, batch), 0.5
    )
    labelled = batch["labels"] != SEGMENTATION_IGNORE
    assert outputs.logits.shape[-1] < batch["labels"].shape[-1]  # the logits are smaller than the labels
    assert (per_pixel.sum() / labelled.sum()).item() == pytest.approx(outputs.loss.item(), rel=1e-5)


@pytest.mark.parametrize("class_name", ["SegformerForSemanticSegmentation", "UperNetForSemanticSegmentation"])
def test_base_term_is_trainers_loss(tmp_path, class_name):
    runs = [
        (Trainer, training_args(tmp_path / "plain", args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", spg_weights=[0.0])),
    ]
    plain, spg = train_each(
        runs, lambda: dict(model=tiny_model(class_name, num_labels=3), train_dataset=segmentation_dataset())
    )
    assert losses(plain)[0] == pytest.approx(losses(spg)[0], rel=1e-6)


# ---- auxiliary heads: a chain of their own, weighted as the model's loss weighs them ----

AUXILIARY_CASES = {
    # model; the SPG settings that name its heads (an HF model's are found); the modules whose outputs are the main
    # and the auxiliary logits; the weight the model's loss gives the auxiliary head.
    "UperNet": (
        lambda: tiny_model("UperNetForSemanticSegmentation", num_labels=3),
        {},
        ("decode_head.classifier", "auxiliary_head.classifier"),
        0.4,
    ),
    "torchvision-style FCN": (
        lambda: Segmenter(TinyFCN(3, auxiliary=True, dropout=0.0), auxiliary_weight=0.5),
        dict(spg_head="net.classifier", spg_auxiliary_head="net.aux_classifier", spg_auxiliary_weight=0.5),
        ("net.classifier", "net.aux_classifier"),
        0.5,
    ),
}


@pytest.mark.parametrize("case", AUXILIARY_CASES)
def test_auxiliary_head_adds_its_own_chains_terms_with_the_models_weight(tmp_path, case):
    build, head_settings, head_paths, auxiliary_weight = AUXILIARY_CASES[case]
    dataset = segmentation_dataset(size=4)
    batch = dataset.with_format("torch")[:4]
    model = build()
    # By hand, from one forward of the same batch in training mode (batch norm reads the batch's statistics; nothing
    # else draws: no dropout in the models or the chains). With zero weights each module reproduces its head's
    # logits, so module 1's term of each head is its cross-entropy over the labelled pixels it gets right, divided
    # by all labelled pixels (spg_normalize="batch").
    head_logits = []
    hooks = [
        model.get_submodule(path).register_forward_hook(lambda module, args, output: head_logits.append(output))
        for path in head_paths
    ]
    with torch.no_grad():
        own_loss = model.train()(**batch)["loss"]
    for hook in hooks:
        hook.remove()
    targets = SegmentationTargets(batch["labels"], SEGMENTATION_IGNORE)
    labelled = targets.pixels().sum()
    terms, survival = [], []
    for logits in head_logits:
        pixel_losses, correct = OBJECTIVES["segmentation"].terms(logits, targets, 0.5)
        terms.append((pixel_losses * correct).sum() / labelled)
        survival.append(correct.sum() / labelled)
    weight = 0.5
    auxiliary_term = auxiliary_weight * weight * terms[1]
    assert auxiliary_term > 1e-3  # large enough to show in the logged loss

    args = training_args(
        tmp_path, head_settings, spg_weights=[weight], spg_dropout=[0.0], spg_normalize="batch", max_steps=1
    )
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx((own_loss + weight * terms[0] + auxiliary_term).item(), abs=2e-4)
    assert log["spg/survival_1"] == pytest.approx(survival[0].item(), abs=1e-4)
    assert log["spg/auxiliary_survival_1"] == pytest.approx(survival[1].item(), abs=1e-4)


def upernet_run(output_dir, resume: str | None = None, **config) -> SPGTrainer:
    args = training_args(str(output_dir), spg_activation="none", max_steps=4, save_strategy="steps", save_steps=2)
    model = tiny_model("UperNetForSemanticSegmentation", num_labels=3, **config)
    trainer = SPGTrainer(model=model, args=args, train_dataset=segmentation_dataset())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_auxiliary_chain_is_checkpointed_and_restored_on_resume(tmp_path):
    full = upernet_run(tmp_path)
    checkpoint = tmp_path / "checkpoint-2"
    saved = safetensors.torch.load_file(str(checkpoint / SPG_WEIGHTS_NAME))
    auxiliary = sorted(name for name in saved if name.startswith("auxiliary."))
    assert auxiliary == sorted(f"auxiliary.replicas.{t}.{p}" for t in range(3) for p in ("bias", "weight"))
    assert saved["auxiliary.replicas.0.weight"].abs().sum() > 0  # it trained
    model_file = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    assert not [name for name in model_file if "spg" in name]
    resumed = upernet_run(tmp_path, resume=str(checkpoint))
    assert losses(resumed)[-2:] == pytest.approx(losses(full)[-2:], rel=1e-5)


def test_resume_refuses_a_checkpoint_that_disagrees_on_the_auxiliary_head(tmp_path):
    upernet_run(tmp_path / "with")
    with pytest.raises(ValueError, match="auxiliary head"):
        upernet_run(tmp_path / "without", resume=str(tmp_path / "with" / "checkpoint-2"), use_auxiliary_head=False)


def test_auxiliary_head_named_with_a_path_that_is_no_module_is_refused(tmp_path):
    args = training_args(
        str(tmp_path), spg_head="net.classifier", spg_auxiliary_head="net.aux", spg_auxiliary_weight=0.5
    )
    with pytest.raises(ValueError, match="spg_auxiliary_head='net.aux' names no module"):
        SPGTrainer(model=Segmenter(TinyFCN(3, auxiliary=True)), args=args, train_dataset=segmentation_dataset())
