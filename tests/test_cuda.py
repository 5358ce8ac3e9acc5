"""SPGTrainer on a CUDA GPU: the chain's device and dtype, bf16 and fp16 autocast (fp16 with Trainer's grad scaler),
`spg_enabled=False` equal to `Trainer`, and SPG on CUDA equal to SPG on the CPU. Marked `cuda`: they skip without a
CUDA device, and scripts/gpu_check.sh runs them on one (`pytest -m cuda`)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    assert_trained_alike,
    greedy_lm_dataset,
    losses,
    no_dropout,
    text_dataset,
    tiny_model,
    train_each,
    training_args,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.trainer import CHAIN_ATTRIBUTE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs these)"),
]

FAMILIES = {
    # an example-level and a token-level head family, each with survivors for the chain to train on
    "bert": ("BertForSequenceClassification", lambda: text_dataset(size=32)),
    "llama": ("LlamaForCausalLM", lambda: greedy_lm_dataset(size=32)),
}
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ChainProbe(TrainerCallback):
    """What the chain was made of and computed in during training: its parameters' devices and dtypes, its modules'
    output devices and dtypes, the autocast its modules ran under (None: none), and its weights when training began
    and ended."""

    def __init__(self) -> None:
        self.parameters: set[tuple[str, torch.dtype]] = set()
        self.outputs: set[tuple[str, torch.dtype]] = set()
        self.autocast: set[torch.dtype | None] = set()
        self.start: list[torch.Tensor] = []
        self.end: list[torch.Tensor] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        chain = getattr(model, CHAIN_ATTRIBUTE)
        self.start = [p.detach().clone() for p in chain.parameters()]
        for module in chain.replicas:
            module.register_forward_hook(self.record_output)

    def record_output(self, module, args, output) -> None:
        device = output.device.type
        self.outputs.add((device, output.dtype))
        self.autocast.add(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.parameters |= {(p.device.type, p.dtype) for p in getattr(model, CHAIN_ATTRIBUTE).parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = [p.detach().clone() for p in getattr(model, CHAIN_ATTRIBUTE).parameters()]

    def chain_trained(self) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(self.start, self.end, strict=True))


def cuda_run(family: str, output_dir: str, weights: torch.dtype = torch.float32, **settings) -> tuple:
    """3 SPG steps of a tiny model on the GPU (the paper's trainable form, so the chain's weights move)."""
    class_name, dataset = FAMILIES[family]
    model = tiny_model(class_name, **no_dropout(), use_cache=False).to(weights)
    probe = ChainProbe()
    args = training_args(output_dir, dict(use_cpu=False, spg_activation="none"), settings)
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset(), callbacks=[probe])
    trainer.train()
    return trainer, probe


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chain_is_built_on_the_gpu_in_the_model_dtype(output_dir, family, weights):
    trainer, probe = cuda_run(family, output_dir, weights)
    assert probe.parameters == {("cuda", weights)} and probe.outputs == {("cuda", weights)}
    assert probe.autocast == {None}
    assert len(losses(trainer)) == 3 and all(math.isfinite(loss) for loss in losses(trainer))
    assert probe.chain_trained(), "the chain's weights never changed on the GPU"
    assert not hasattr(trainer.model, CHAIN_ATTRIBUTE), "train() leaves the chain attached"


@pytest.mark.parametrize("precision", sorted(HALF))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mixed_precision_runs_the_chain_under_autocast(output_dir, family, precision):
    """float32 weights with bf16=True / fp16=True: the chain keeps float32 weights and runs under the model's
    autocast, so its linear maps compute in the half dtype as the model's do (its residual sum with the float32 state
    is float32); fp16 scales the loss with Trainer's grad scaler."""
    # 5 steps: fp16's scaler skips the optimizer step where scaled gradients overflow, often in the first steps.
    trainer, probe = cuda_run(family, output_dir, max_steps=5, **{precision: True})
    assert probe.parameters == {("cuda", torch.float32)} and probe.autocast == {HALF[precision]}
    assert {device for device, _ in probe.outputs} == {"cuda"}
    assert len(losses(trainer)) == 5 and all(math.isfinite(loss) for loss in losses(trainer))
    assert probe.chain_trained(), f"the chain's weights never changed under {precision}"
    scaler = trainer.accelerator.scaler
    if precision == "fp16":
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
        assert 0 < scaler.get_scale() < math.inf
    else:
        assert scaler is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_spg_off_equals_trainer_on_cuda(output_dir, precision):
    settings = dict(use_cpu=False, full_determinism=True, bf16=precision == "bf16")
    runs = [
        (SPGTrainer, training_args(output_dir, settings, spg_enabled=False)),
        (Trainer, training_args(output_dir, settings, args_class=TrainingArguments)),
    ]
    trainers = train_each(
        runs, lambda: dict(model=tiny_model("BertForSequenceClassification"), train_dataset=text_dataset())
    )
    assert next(trainers[0].model.parameters()).device.type == "cuda"
    assert_trained_alike(*trainers)


def test_spg_on_cuda_equals_spg_on_the_cpu(output_dir):
    """Without dropout in the chain (CUDA and the CPU draw different masks) the same float32 run logs the same
    survival on both devices and losses equal to a relative 1e-4."""
    runs = []
    for use_cpu in (True, False):
        model = tiny_model("BertForSequenceClassification", **no_dropout())
        args = training_args(output_dir, spg_dropout=[0.0], use_cpu=use_cpu)
        trainer = SPGTrainer(model=model, args=args, train_dataset=text_dataset())
        trainer.train()
        runs.append(trainer.state.log_history)
    cpu, cuda = ([entry for entry in history if "loss" in entry] for history in runs)
    assert [entry["loss"] for entry in cuda] == pytest.approx([entry["loss"] for entry in cpu], rel=1e-4)
    assert [entry["spg/survival_1"] for entry in cuda] == [entry["spg/survival_1"] for entry in cpu]
