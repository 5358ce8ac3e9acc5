"""Semantic segmentation: every labelled pixel is a trajectory, the ignore index is none; the module terms are the
model's own per-pixel cross-entropy at the labels' size; the base term is Trainer's loss. (The head matrix in
tests/test_heads.py covers Segformer, UperNet, BEiT and DPT: shared head, 3 SPG steps, plain folder, SPG off.)"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SEGMENTATION_IGNORE, SHORT_RUN, losses, segmentation_dataset, tiny_model
from transformers import Trainer, TrainingArguments

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.heads import segmentation_targets
from spg_hf.spg import SegmentationTargets, per_example_terms, spg_loss


def test_survival_counts_labelled_pixels_only():
    # One image, 2x2 logits at the labels' size (no resize), 3 classes; pixel 3 is ignored.
    logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [0.0, 5.0]], [[0.0, 0.0], [5.0, 0.0]]]])
    labels = torch.tensor([[[0, 1], [1, SEGMENTATION_IGNORE]]])
    targets = SegmentationTargets(labels, SEGMENTATION_IGNORE)
    base_losses, base_correct = per_example_terms("segmentation", logits, targets, 0.5)
    assert base_correct.tolist() == [True, True, False, False]  # pixel 2 predicts class 2, labelled 1
    assert base_losses[3] == 0  # ignored
    # A module that gets pixel 0 right and pixel 1 wrong: survival to module 1 is 2 of the 3 labelled pixels.
    module_logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [5.0, 0.0]]]])
    module_losses, module_correct = per_example_terms("segmentation", module_logits, targets, 0.5)
    result = spg_loss(
        torch.tensor(0.0), base_correct, [(module_losses, module_correct)], [1.0], "batch",
        trajectories=targets.pixels(),
    )  # fmt: skip
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
    per_pixel, _ = per_example_terms("segmentation", outputs.logits, segmentation_targets(model, batch), 0.5)
    labelled = batch["labels"] != SEGMENTATION_IGNORE
    assert outputs.logits.shape[-1] < batch["labels"].shape[-1]  # the logits are smaller than the labels
    assert (per_pixel.sum() / labelled.sum()).item() == pytest.approx(outputs.loss.item(), rel=1e-5)


@pytest.mark.parametrize("class_name", ["SegformerForSemanticSegmentation", "UperNetForSemanticSegmentation"])
def test_base_term_is_trainers_loss(tmp_path, class_name):
    runs = []
    for trainer_class, args in (
        (Trainer, TrainingArguments(output_dir=str(tmp_path / "plain"), **SHORT_RUN)),
        (SPGTrainer, SPGTrainingArguments(output_dir=str(tmp_path / "spg"), spg_weights=[0.0], **SHORT_RUN)),
    ):
        trainer = trainer_class(
            model=tiny_model(class_name, num_labels=3), args=args, train_dataset=segmentation_dataset()
        )
        trainer.train()
        runs.append(losses(trainer))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
