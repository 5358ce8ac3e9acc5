"""`pip install spg-hf` pulls only the core (torch, transformers, accelerate, safetensors, numpy): `import spg_hf` and a
short SPGTrainer run work with every package of the extras hidden."""

from __future__ import annotations

import subprocess
import sys

import tomllib
from helpers import REPO

PYPROJECT = REPO / "pyproject.toml"
# Import names of what the extras (and the test environment) add beside the core. PyYAML is not among them: the
# core has it anyway (huggingface_hub, which transformers needs, imports it).
EXTRA_MODULES = ["datasets", "evaluate", "scipy", "sklearn", "soundfile", "matplotlib", "peft", "trl", "deepspeed"]

SCRIPT = """
import importlib.abc
import sys

HIDDEN = set(sys.argv[1].split(","))


class Hidden(importlib.abc.MetaPathFinder):
    '''Finds nothing of the hidden packages, as if they were not installed (importlib.util.find_spec gives None).'''

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):  # find_distributions and the rest, as the wrapped finder has them
        return getattr(self.finder, name)


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]

import torch
import transformers

import spg_hf
from spg_hf import SPGTrainer, SPGTrainingArguments

torch.manual_seed(0)
config = transformers.BertConfig(
    vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2
)
model = transformers.BertForSequenceClassification(config)
ids = torch.randint(5, 99, (8, 10))
dataset = [{"input_ids": row, "labels": int(row[1] > 50)} for row in ids]
args = SPGTrainingArguments(
    sys.argv[2], max_steps=2, logging_steps=1, per_device_train_batch_size=4, report_to="none", use_cpu=True,
    save_strategy="no", disable_tqdm=True,
)
trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
trainer.train()
assert "spg/survival_1" in trainer.state.log_history[0]
loaded = sorted(name for name in sys.modules if name.split(".")[0] in HIDDEN)
assert not loaded, loaded
print("core only: trained")
"""


def test_core_dependencies_are_the_lean_list():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    names = [dependency.split(">")[0].split("<")[0].split("=")[0] for dependency in dependencies]
    assert names == ["torch", "transformers", "accelerate", "safetensors", "numpy"]


def test_spg_trainer_trains_with_the_core_alone(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(EXTRA_MODULES), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "core only: trained" in result.stdout
