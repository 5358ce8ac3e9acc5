"""One rank of the 2-process DDP test (tests/test_core_distributed.py launches it with torchrun).

Trains a tiny BERT and a tiny Wav2Vec2 (LayerDrop 0.5) classifier with SPGTrainer's default settings on gloo and
writes, per model, this rank's final weights - the temporary chain included, read before train() detaches it - to
`<output_dir>/<model>_rank<rank>.safetensors`, and how often each encoder layer ran to `<model>_rank<rank>.json`
(LayerDrop must have skipped some, or the test proves nothing about unused parameters).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the helper module is

import safetensors.torch
import torch
from helpers import audio_dataset, text_dataset, tiny_model, training_args
from transformers import TrainerCallback

from spg_hf import SPGTrainer
from spg_hf.tasks.cli import run_main


class SaveFinalWeights(TrainerCallback):
    """Writes the model's state dict, with `spg_chain.*` still attached, when training ends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, args, state, control, model=None, **kwargs):
        tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        safetensors.torch.save_file(tensors, self.path)


def count_calls(layers: torch.nn.ModuleList) -> list[int]:
    """A list, updated in place, of how many times each layer has run its forward."""
    calls = [0] * len(layers)

    def count(index: int, module: torch.nn.Module, args: tuple) -> None:
        calls[index] += module.training  # training steps only: the construction check runs in eval mode

    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(functools.partial(count, index))
    return calls


def train(name: str, output_dir: str) -> None:
    if name == "bert":
        model, dataset = tiny_model("BertForSequenceClassification"), text_dataset(size=32)
    else:
        model = tiny_model("Wav2Vec2ForSequenceClassification", layerdrop=0.5, num_labels=3)
        dataset = audio_dataset()
    rank = int(os.environ["RANK"])
    # The paper's form: its chain trains, so the ranks' chain weights can be compared.
    args = training_args(os.path.join(output_dir, name), max_steps=4, learning_rate=1e-2, spg_activation="none")
    layer_calls = count_calls(model.base_model.encoder.layer if name == "bert" else model.base_model.encoder.layers)
    path = os.path.join(output_dir, f"{name}_rank{rank}")
    trainer = SPGTrainer(
        model=model, args=args, train_dataset=dataset, callbacks=[SaveFinalWeights(path + ".safetensors")]
    )
    trainer.train()
    with open(path + ".json", "w") as file:
        shares = [log["spg/survivors_in_top_label"] for log in trainer.state.log_history if "loss" in log]
        json.dump({"layer_calls": layer_calls, "steps": trainer.state.global_step, "survivor_shares": shares}, file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--models", nargs="+", choices=["bert", "wav2vec2"], default=["bert", "wav2vec2"])
    cli = parser.parse_args()
    for name in cli.models:
        train(name, cli.output_dir)


if __name__ == "__main__":
    run_main(main)
