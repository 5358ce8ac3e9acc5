"""SPGTrainer on transformers' native FSDP2 (DTensor parameters sharded at load time), 2 CPU processes on gloo,
launched with torchrun (tests/distributed/fsdp2_train_worker.py): the way HF_INTEGRATION-style FSDP2 runs without a
GPU."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
from helpers import WORKERS, tiny_model, torchrun

WORKER = str(WORKERS / "fsdp2_train_worker.py")
MODELS = {"bert": "BertForSequenceClassification", "llama": "LlamaForCausalLM"}


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> str:
    output_dir = str(tmp_path_factory.mktemp("fsdp2"))
    for name, class_name in MODELS.items():
        tiny_model(class_name).save_pretrained(os.path.join(output_dir, name))
    result = torchrun(WORKER, "--output_dir", output_dir)
    assert result.returncode == 0, f"FSDP2 workers failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return output_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fsdp2_trains_with_spg_and_saves_a_plain_folder(fsdp2_run, name):
    ranks = []
    for rank in range(2):
        with open(os.path.join(fsdp2_run, f"{name}_rank{rank}.json")) as file:
            ranks.append(json.load(file))
    assert all(rank["model_sharded"] for rank in ranks), "the model was not sharded: the test proves nothing"
    assert all(len(rank["survival"]) == 3 and all(0 <= s <= 1 for s in rank["survival"]) for rank in ranks)
    # Native FSDP2 feeds every rank the whole dataset (accelerate sees no distributed run): the chains must agree.
    assert ranks[0]["chain"] == ranks[1]["chain"]
    if name == "bert":  # the random causal LM predicts next to nothing right: its chain has no survivor to train on
        assert any(value != 0 for values in ranks[0]["chain"].values() for value in values), "the chain never trained"
    saved = safetensors.torch.load_file(os.path.join(fsdp2_run, f"{name}_saved", "model.safetensors"))
    assert saved and not [key for key in saved if "spg" in key]
