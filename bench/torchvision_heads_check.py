"""A manual check (not a test: CI's torch has no torchvision) that `spg_head` works on real torchvision and timm models.

Each network is built randomly initialised (no weights downloaded), wrapped the way a Trainer user wraps it (`net`
gives logits, the wrapper adds the loss), and trained for 3 SPG steps on random 32x32 images with `spg_head` naming
its classifier. The check: `spg/survival_1` is logged on every step, the saved model.safetensors holds no
"spg_chain" key, and it loads back into the bare wrapped network with load_state_dict(strict=True). Last,
transformers' TimmWrapperForImageClassification is tried without `spg_head` (and with it) to see what SPG says.

Needs torchvision and timm beside spg_hf (e.g. a venv with torchvision where `pip install -e .` kept its torch):

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m bench.torchvision_heads_check
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import timm
import torch
import torchvision
import transformers
from datasets import Dataset
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from bench.image_resnet_digits import ImageClassifier
from spg_hf import SPGTrainer, SPGTrainingArguments

NUM_CLASSES = 10
IMAGE_SIZE = 32

# name -> (network factory, spg_head). The heads are where torchvision and timm put them; timm's are what
# get_classifier() returns, found by named_modules.
NETWORKS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "torchvision resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES), "net.fc"),
    "torchvision mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=NUM_CLASSES),
        "net.classifier",
    ),
    "torchvision efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(weights=None, num_classes=NUM_CLASSES),
        "net.classifier",
    ),
    # vit_b_16 takes an image_size: at 32 it sees 4 patches of 16, the full-width 12-layer network.
    "torchvision vit_b_16 (image_size=32)": (
        lambda: torchvision.models.vit_b_16(weights=None, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE),
        "net.heads.head",
    ),
    "torchvision VisionTransformer (tiny)": (
        lambda: VisionTransformer(
            image_size=IMAGE_SIZE,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=NUM_CLASSES,
        ),
        "net.heads.head",
    ),
    "timm resnet18": (lambda: timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES), "net.fc"),
    "timm vit_tiny_patch16_224 (img_size=32, patch_size=8)": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, img_size=IMAGE_SIZE, patch_size=8
        ),
        "net.head",
    ),
}


def random_images(size: int = 16, seed: int = 0) -> Dataset:
    """Random images with random labels: the check is that SPG runs and saves, not that anything is learnt."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.numpy()}).with_format("numpy")


def spg_args(output_dir: str, spg_head: str | None) -> SPGTrainingArguments:
    return SPGTrainingArguments(
        output_dir=output_dir,
        spg_head=spg_head,
        # Batches of 4: BatchNorm needs more than one value per channel where the maps are 1x1.
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )


def check(model: nn.Module, spg_head: str | None, bare: Callable[[], nn.Module], work: Path) -> str:
    """Train 3 SPG steps, save, reload into a fresh bare model; a line saying what held, or raise."""
    trainer = SPGTrainer(model=model, args=spg_args(str(work / "run"), spg_head), train_dataset=random_images())
    family = trainer._head_family()
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    survival = [log.get("spg/survival_1") for log in logs]
    if len(logs) != 3 or any(value is None for value in survival):
        raise AssertionError(f"spg/survival_1 not logged on every step: {logs}")
    trainer.save_model(str(work / "saved"))
    saved = safetensors.torch.load_file(str(work / "saved" / "model.safetensors"))
    chain_keys = [key for key in saved if "spg_chain" in key]
    if chain_keys:
        raise AssertionError(f"saved weights hold the chain: {chain_keys[:3]}")
    fresh = bare()
    fresh.load_state_dict(saved, strict=True)
    return (
        f"family {family.name} (capture {family.capture!r}, objective {family.objective}); survival_1 per step "
        f"{[round(value, 3) for value in survival]}; {len(saved)} saved tensors, no spg_chain key, strict load ok"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="run only the networks whose name contains one of these")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, ", end="")
    print(f"transformers {transformers.__version__}")
    results: dict[str, str] = {}
    cases: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
        name: (lambda factory=factory: ImageClassifier(factory()), head) for name, (factory, head) in NETWORKS.items()
    }

    def timm_wrapper() -> transformers.TimmWrapperForImageClassification:
        # From a config alone: architecture names the timm model, built randomly initialised, nothing downloaded.
        config = transformers.TimmWrapperConfig(architecture="resnet18", num_labels=NUM_CLASSES)
        return transformers.TimmWrapperForImageClassification(config)

    cases["transformers TimmWrapperForImageClassification(resnet18), no spg_head"] = (timm_wrapper, None)
    cases["transformers TimmWrapperForImageClassification(resnet18), spg_head='timm_model.fc'"] = (
        timm_wrapper,
        "timm_model.fc",
    )
    for name, (factory, head) in cases.items():
        if args.only and not any(part in name for part in args.only):
            continue
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as work:
            try:
                results[name] = "PASS: " + check(factory(), head, factory, Path(work))
            except Exception as error:  # a check reports every failure and goes on to the next network
                traceback.print_exc()
                results[name] = f"FAIL: {type(error).__name__}: {error}"
        print(f"{name}: {results[name]}", flush=True)
    print("\nSummary")
    for name, result in results.items():
        print(f"- {name}: {result}")


if __name__ == "__main__":
    main()
