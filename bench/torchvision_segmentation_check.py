"""A manual check (not a test: CI's torch has no torchvision) that torchvision's FCN and DeepLabV3 train with SPG on
both heads: `spg_head="net.classifier"`, `spg_auxiliary_head="net.aux_classifier"`, `spg_auxiliary_weight=0.5`
(torchvision's reference recipe weighs the auxiliary loss 0.5).

Each network is built randomly initialised (ResNet-50 backbone, no weights downloaded, 5 classes), wrapped as a
Trainer user wraps it (the wrapper adds the recipe's loss: cross-entropy of "out" plus 0.5 times that of "aux", 255
ignored), and trained for 2 SPG steps on random 64x64 images. The check: `spg/survival_1` and
`spg/auxiliary_survival_1` are logged, and the saved model.safetensors loads back into the bare wrapped network with
load_state_dict(strict=True), no SPG key in it.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m bench.torchvision_segmentation_check   # a venv with torchvision
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

from spg_hf import SPGTrainer, SPGTrainingArguments

CLASSES = 5
AUXILIARY_WEIGHT = 0.5


class Segmenter(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        outputs = self.net(pixel_values)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(outputs["out"], labels, ignore_index=255)
            loss = loss + AUXILIARY_WEIGHT * F.cross_entropy(outputs["aux"], labels, ignore_index=255)
        return {"loss": loss, "logits": outputs["out"]}


def random_segmentation(size: int = 8, image_size: int = 64) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, CLASSES, (size, image_size, image_size), generator=generator)
    labels[:, :4] = 255
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.numpy()})


def main() -> None:
    for name, build in (("fcn_resnet50", fcn_resnet50), ("deeplabv3_resnet50", deeplabv3_resnet50)):
        torch.manual_seed(0)
        model = Segmenter(build(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=True))
        with tempfile.TemporaryDirectory() as work:
            args = SPGTrainingArguments(
                output_dir=work, per_device_train_batch_size=4, max_steps=2, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, spg_head="net.classifier",
                spg_auxiliary_head="net.aux_classifier", spg_auxiliary_weight=AUXILIARY_WEIGHT,
            )  # fmt: skip
            trainer = SPGTrainer(model=model, args=args, train_dataset=random_segmentation())
            trainer.train()
            logs = [log for log in trainer.state.log_history if "loss" in log]
            assert len(logs) == 2 and all("spg/auxiliary_survival_1" in log for log in logs), logs
            trainer.save_model(str(Path(work) / "saved"))
            saved = safetensors.torch.load_file(str(Path(work) / "saved" / "model.safetensors"))
            assert not [key for key in saved if "spg" in key]
            bare = Segmenter(build(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=True))
            bare.load_state_dict(saved, strict=True)
            survival = [(log["spg/survival_1"], log["spg/auxiliary_survival_1"]) for log in logs]
            losses = [log["loss"] for log in logs]
            print(f"{name}: ok, (survival_1, auxiliary_survival_1) per step {survival}, losses {losses}")


if __name__ == "__main__":
    main()
