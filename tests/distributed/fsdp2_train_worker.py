"""One rank of the 2-process FSDP2 test (tests/test_fsdp2.py launches it with torchrun).

transformers' native FSDP2 on CPU: a tiny BERT classifier and a tiny Llama causal LM saved to `<output_dir>/<name>`
are loaded with `distributed_config=DistributedConfig(fsdp_size=2)`, so their parameters are DTensors sharded over
the two ranks, and trained with SPG (the paper's trainable form, so the chain's weights move). Each rank writes its
logged survival, whether the chain was built of DTensors, and the full chain weights at the end of training to
`<output_dir>/<name>_rank<rank>.json`; the model saved with `save_model()` goes to `<output_dir>/<name>_saved`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the helper module is

import torch
from helpers import text_dataset, token_dataset, training_args
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
from transformers.distributed.configuration_utils import DistributedConfig

from spg_hf import SPGTrainer
from spg_hf.tasks.cli import run_main
from spg_hf.trainer import CHAIN_ATTRIBUTE

MODELS = {
    "bert": (AutoModelForSequenceClassification, lambda: text_dataset(size=32)),
    "llama": (AutoModelForCausalLM, lambda: token_dataset(size=32, task="causal_lm")),
}


class RecordChain(TrainerCallback):
    """Keeps the chain's full weights (DTensors gathered) when training ends, before train() detaches it."""

    def __init__(self) -> None:
        self.chain: dict[str, list] = {}
        self.sharded = False

    def on_train_end(self, args, state, control, model=None, **kwargs):
        chain = getattr(model, CHAIN_ATTRIBUTE)
        self.sharded = any(isinstance(p, DTensor) for p in chain.parameters())
        for name, tensor in chain.state_dict().items():
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            self.chain[name] = full.detach().flatten()[:64].tolist()


def train(name: str, output_dir: str) -> None:
    auto_class, dataset = MODELS[name]
    model = auto_class.from_pretrained(
        os.path.join(output_dir, name), distributed_config=DistributedConfig(fsdp_size=2)
    )
    args = training_args(
        os.path.join(output_dir, f"{name}_run"), learning_rate=1e-2, save_only_model=True, spg_activation="none"
    )
    record = RecordChain()
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset(), callbacks=[record])
    trainer.train()
    trainer.save_model(os.path.join(output_dir, f"{name}_saved"))
    rank = int(os.environ["RANK"])
    survival = [log["spg/survival_1"] for log in trainer.state.log_history if "loss" in log]
    sharded_model = any(isinstance(p, DTensor) for p in model.parameters())
    with open(os.path.join(output_dir, f"{name}_rank{rank}.json"), "w") as file:
        json.dump(
            {
                "survival": survival,
                "chain": record.chain,
                "chain_sharded": record.sharded,
                "model_sharded": sharded_model,
            },
            file,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    output_dir = parser.parse_args().output_dir
    torch.manual_seed(0)
    for name in MODELS:
        train(name, output_dir)


if __name__ == "__main__":
    run_main(main)
