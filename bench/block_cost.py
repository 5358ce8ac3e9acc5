"""What the block form (spg_module='block') costs against plain training and the linear form: FLOPs of one training
step and the bytes of the tensors it saves for backward, for a BERT-base-shaped classifier and a ResNet-18-shaped
network named with spg_head (both randomly initialised: the cost does not depend on the weights).

One training step is measured (the second, so the first step's one-off work is left out) with torch's
FlopCounterMode (matrix products and convolutions, forward and backward) and a saved-tensors hook that sums the bytes
of every tensor autograd keeps for backward (activations; a tensor saved twice counts twice). The chain's parameters
are counted apart. Three modules, one block each: the block form should add about 3 blocks / depth of the backbone.

    OMP_NUM_THREADS=2 python -m bench.block_cost --out bench/results/block_cost
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.image_resnet_digits import BasicBlock, ImageClassifier
from spg_hf import SPGTrainer, SPGTrainingArguments

FORMS = {"plain": {"spg_enabled": False}, "linear": {}, "block": {"spg_module": "block"}}


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (7x7 stride-2 stem, max pool, four stages of two BasicBlocks, 64-512 wide),
    with its attribute names: the last block is layer4.1, the head fc."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, planes = [], 64
        for index, width in enumerate((64, 128, 256, 512)):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(BasicBlock(planes, width, stride), BasicBlock(width, width)))
            planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class StepCost(transformers.TrainerCallback):
    """FLOPs and saved-for-backward bytes of one training step (`step`, 1-based)."""

    def __init__(self, step: int) -> None:
        self.step, self.saved_bytes, self.flops = step, 0, 0
        self.counter = FlopCounterMode(display=False)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.counter.__enter__()
            self.hooks.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.hooks.__exit__(None, None, None)
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()


def bert_base() -> tuple[nn.Module, Dataset, dict]:
    config = transformers.BertConfig(num_labels=2)  # bert-base-uncased's shape: 12 layers, 768 wide
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(1000, 30000, (16, 128), generator=generator).tolist(),
            "labels": torch.randint(0, 2, (16,), generator=generator).tolist(),
        }
    )
    return model, data, {}


def resnet18() -> tuple[nn.Module, Dataset, dict]:
    torch.manual_seed(0)
    model = ImageClassifier(ResNet18())
    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "pixel_values": torch.randn(16, 3, 224, 224, generator=generator).numpy(),
            "labels": torch.randint(0, 1000, (16,), generator=generator).tolist(),
        }
    ).with_format("numpy")
    return model, data, {"spg_head": "net.fc"}


MODELS = {"bert-base (seq 128)": bert_base, "resnet-18 (224x224)": resnet18}


class ChainParameters(transformers.TrainerCallback):
    """The temporary chain's parameter count, read when training starts."""

    def __init__(self, found: list) -> None:
        self.found = found

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        chain = getattr(model, "spg_chain", None)
        self.found.append(sum(p.numel() for p in chain.parameters()) if chain is not None else 0)


def measure(build, form: dict, batch_size: int) -> dict:
    model, data, settings = build()
    cost = StepCost(step=2)
    with tempfile.TemporaryDirectory() as output_dir:
        args = SPGTrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=batch_size,
            max_steps=2,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            **settings,
            **form,
        )
        trainer = SPGTrainer(model=model, args=args, train_dataset=data, callbacks=[cost])
        chain_parameters = []
        trainer.add_callback(ChainParameters(chain_parameters))
        trainer.train()
    return {
        "flops": cost.flops,
        "saved_for_backward_bytes": cost.saved_bytes,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "chain_parameters": chain_parameters[0] if chain_parameters else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/block_cost"))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    rows = []
    for name, build in MODELS.items():
        for form, settings in FORMS.items():
            row = {
                "model": name,
                "form": form,
                "batch_size": args.batch_size,
                **measure(build, settings, args.batch_size),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    lines = [
        "| model | form | GFLOPs per step | vs plain | saved for backward, MiB | vs plain | chain parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        plain = next(r for r in rows if r["model"] == row["model"] and r["form"] == "plain")
        lines.append(
            f"| {row['model']} | {row['form']} | {row['flops'] / 1e9:.1f} | {row['flops'] / plain['flops']:.3f}x | "
            f"{row['saved_for_backward_bytes'] / 2**20:.0f} | "
            f"{row['saved_for_backward_bytes'] / plain['saved_for_backward_bytes']:.3f}x | "
            f"{row['chain_parameters']:,} |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
