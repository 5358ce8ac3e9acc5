"""Image classification evidence with a torchvision-style ResNet and `spg_head`: plain vs SPG on scikit-learn's digits.

The network is the classic CIFAR ResNet (a 3x3 stem, BasicBlocks in three stages of widths 16/32/64, global average
pool, a linear `fc`) written with torchvision's layout and attribute names (conv1, bn1, layer1..3, avgpool, fc;
BasicBlock conv1/bn1/conv2/bn2/downsample), randomly initialised the way torchvision initialises its ResNets. It is
not an HF task class: a wrapper returns {"loss", "logits"} so `Trainer` trains it, and SPG finds the head through
`spg_head="net.fc"`.

The data are the 1,797 8x8 digits of sklearn.datasets.load_digits (bundled, no download), split exactly as
bench/image_digits.py splits them (seed 0, stratified, 1,437 train / 360 test), upsampled bilinearly to 32x32 and
repeated to three channels (the input a torchvision network takes). For every seed all methods start from the same
initialisation and see the same batches; "plain" is `spg_enabled=False`, "spg" the library's defaults, "block" the
paper's Sec. 4.3 form (`spg_module="block"`: each module a zeroed copy of the last BasicBlock, `net.layer3.2`, with
no dropout).

    OMP_NUM_THREADS=1 python -m bench.image_resnet_digits --seeds 1 2 3 4 5 --epochs 15 --lr 0.2

Each finished run appends a row to <out>/raw.jsonl (a rerun skips the rows already there); <out>/table.md holds the
per-method test accuracy and eval loss with the paired differences and their 95% t intervals.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset
from torch import nn

from bench.image_digits import accuracy, digits_splits
from bench.paired import paired_table, run_paired
from spg_hf import SPGTrainer, SPGTrainingArguments

METHODS = ("plain", "spg", "block")
IMAGE_SIZE = 32


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 conv/BN pairs and an identity (or 1x1 conv + BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # A projection only where the shape changes (torchvision's option B), so the shortcut is free elsewhere.
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """The CIFAR ResNet (6n+2 layers; n=3 is ResNet-20) with torchvision's attribute names, so its head is `fc`."""

    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        widths = (16, 32, 64)
        # A 3x3 stride-1 stem without max pooling: at 32x32 the ImageNet stem (7x7 stride 2 + pool) would leave 8x8
        # maps before the first block.
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, width, stride if block == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        # torchvision's ResNet initialisation: He (fan_out) for convolutions, BN as identity; fc keeps Linear's own.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ImageClassifier(nn.Module):
    """What a Trainer user writes around a vision network: `net` gives logits, the wrapper adds the loss."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        logits = self.net(pixel_values)
        return {"loss": None if labels is None else F.cross_entropy(logits, labels), "logits": logits}


def resnet_digits_splits() -> tuple[Dataset, Dataset]:
    """bench/image_digits.py's split, each 8x8 image upsampled to 32x32 and repeated to three channels."""

    def upsample(batch: dict) -> dict:
        pixels = torch.tensor(batch["pixel_values"], dtype=torch.float32)
        pixels = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return {"pixel_values": pixels.repeat(1, 3, 1, 1).numpy()}

    train, test = digits_splits()
    # numpy format hands the trainer's collator arrays, not nested lists of 3,072 floats per image.
    return tuple(split.map(upsample, batched=True).with_format("numpy") for split in (train, test))


def train_once(method: str, seed: int, args: argparse.Namespace, train: Dataset, test: Dataset) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = SPGTrainingArguments(
            output_dir=output_dir,
            spg_enabled=method != "plain",
            spg_head="net.fc",
            spg_module="block" if method == "block" else "linear",
            # The paper's block modules have no dropout.
            spg_dropout=0.0 if method == "block" else 0.2,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=256,
            optim=args.optim,
            optim_args=args.optim_args or None,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=args.weight_decay,
            seed=seed,
            logging_steps=20,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        # The same initialisation for both methods of a seed.
        torch.manual_seed(seed)
        model = ImageClassifier(CifarResNet(args.blocks))
        trainer = SPGTrainer(
            model=model, args=training_args, train_dataset=train, eval_dataset=test, compute_metrics=accuracy
        )
        start = time.perf_counter()
        trainer.train()
        wall_s = time.perf_counter() - start
        metrics = trainer.evaluate()
    survival = [log["spg/survival_1"] for log in trainer.state.log_history if "spg/survival_1" in log]
    return {
        "accuracy": metrics["eval_accuracy"],
        "eval_loss": metrics["eval_loss"],
        "train_wall_s": round(wall_s, 1),
        "last_survival_1": survival[-1] if survival else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--blocks", type=int, default=3, help="BasicBlocks per stage: 3 is ResNet-20")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--optim", default="sgd", help="a Trainer optimizer name")
    # Trainer's SGD has no momentum unless optim_args gives it; the CIFAR ResNet recipe uses Nesterov 0.9.
    parser.add_argument("--optim_args", default="momentum=0.9,nesterov=True")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/image_resnet_digits"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    train, test = resnet_digits_splits()
    recipe = {
        "blocks": args.blocks,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optim": args.optim,
        "optim_args": args.optim_args,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
    }
    rows = run_paired(
        args.out, args.methods, args.seeds, recipe, lambda method, seed: train_once(method, seed, args, train, test)
    )
    tables = [
        table
        for treatment in METHODS[1:]
        for table in (
            paired_table(
                rows,
                "accuracy",
                "test accuracy, %",
                treatment=treatment,
                scale=100,
                extra_columns=["train_wall_s", "last_survival_1"],
            ),
            paired_table(rows, "eval_loss", "eval loss (lower is better)", treatment=treatment, digits=4),
        )
    ]
    (args.out / "table.md").write_text("\n".join(tables))


if __name__ == "__main__":
    main()
