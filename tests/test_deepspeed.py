"""SPGTrainer under DeepSpeed ZeRO-2 and ZeRO-3 (`TrainingArguments(deepspeed=...)`), one process on DeepSpeed's CPU
accelerator, launched with torchrun as users launch it (tests/distributed/deepspeed_train_worker.py runs every case
once).

ZeRO on one process still partitions (ZeRO-3: every weight, the chain's included, is an empty placeholder outside
DeepSpeed's gathers), flattens and steps the optimizer state, and saves DeepSpeed's own checkpoints; it does not
exercise reductions across processes: on CPU, Trainer cannot run DeepSpeed on more than one (it fills DeepSpeed's
batch sizes for a world size of 1), so ZeRO across processes is left to a GPU machine.

Each DeepSpeed run is compared with the same run without DeepSpeed, made first in the same worker process: the
logged loss per step to a relative 1e-5 (DeepSpeed sums gradients and clips on flattened buffers: float32 rounding,
up to 1e-6 measured), survival per step and module exactly, the chain's and the model's final weights to 1e-4
(up to 1.3e-6 measured; weights whose true gradient is 0 are left out, see WEIGHTS_COMPARED).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch
import transformers
from accelerate.commands.config.config_args import load_config_from_file
from helpers import WORKERS, torchrun

pytestmark = pytest.mark.slow
NO_DEEPSPEED = "deepspeed is not installed (pip install --no-build-isolation deepspeed; scripts/setup.sh does)"

WORKER = str(WORKERS / "deepspeed_train_worker.py")
ACCELERATE_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "accelerate")
STAGES = (2, 3)
FAMILIES = {
    "bert": "BertForSequenceClassification",
    "span": "BertForQuestionAnswering",
    "tokens": "BertForTokenClassification",
    "llama": "LlamaForCausalLM",
}
# A random span head predicts next to no span right: its chain gets (almost) no survivors to train on. Its weights
# are not compared either: a bias of the span head (and of the chain before it) shifts every position's logit alike,
# which the softmax over positions ignores, so its true gradient is 0 and AdamW turns float noise there into steps
# of up to the learning rate (1e-3 apart after 4 steps, with and without DeepSpeed alike).
CHAIN_TRAINS = ("bert", "tokens", "llama")
WEIGHTS_COMPARED = CHAIN_TRAINS
# The same holds for attention key biases (a query's scores all shift alike): up to 6e-6 apart measured, the other
# weights up to 1.3e-6.
ZERO_GRADIENT = "attention.self.key.bias"
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory) -> str:
    """Every test that runs DeepSpeed takes this fixture: without deepspeed they skip, the config checks run."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip(NO_DEEPSPEED)
    output_dir = str(tmp_path_factory.mktemp("deepspeed"))
    result = torchrun(WORKER, "--output_dir", output_dir, processes=1, timeout=600)
    assert result.returncode == 0, f"DeepSpeed worker failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return output_dir


def results(output_dir: str, stage: int | None, run: str) -> dict:
    with open(os.path.join(output_dir, str(stage or "none"), f"{run}.json")) as file:
        return json.load(file)


def tensors(output_dir: str, stage: int | None, run: str, prefix: str) -> dict[str, torch.Tensor]:
    saved = safetensors.torch.load_file(os.path.join(output_dir, str(stage or "none"), f"{run}.safetensors"))
    return {name.removeprefix(prefix): t for name, t in saved.items() if name.startswith(prefix)}


def assert_close(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], skip: str | None = None) -> None:
    """Equal names and values within WEIGHT_TOLERANCE, names containing `skip` left out of the values."""
    assert first.keys() == second.keys() and first
    for name in first:
        if skip is None or skip not in name:
            torch.testing.assert_close(first[name], second[name], rtol=0, atol=WEIGHT_TOLERANCE, msg=name)


def assert_same_run(zero: dict, plain: dict) -> None:
    assert zero["steps"] == plain["steps"] == [1, 2, 3, 4]
    assert zero["loss"] == pytest.approx(plain["loss"], rel=LOSS_TOLERANCE)
    assert zero["survival"] == plain["survival"] and len(zero["survival"]) == 4
    assert zero["eval_loss"] == pytest.approx(plain["eval_loss"], rel=LOSS_TOLERANCE)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("stage", STAGES)
def test_zero_trains_spg_as_without_deepspeed(zero_runs, stage, family):
    run = f"{family}_spg"
    zero = results(zero_runs, stage, run)
    assert zero["deepspeed"] and not results(zero_runs, None, run)["deepspeed"]
    # ZeRO-3 must have partitioned every weight, the chain's too, or this proves nothing about gathering them.
    assert zero["partitioned"] == (stage == 3)
    assert_same_run(zero, results(zero_runs, None, run))
    start, end = (tensors(zero_runs, stage, run, f"chain_{when}.") for when in ("start", "end"))
    assert all(not t.any() for t in start.values()), "the chain starts from zero weights"
    if family in CHAIN_TRAINS:
        assert any(t.any() for t in end.values()), "the chain's gathered weights never changed"
    if family in WEIGHTS_COMPARED:
        assert_close(end, tensors(zero_runs, None, run, "chain_end."))
        model, plain_model = (tensors(zero_runs, where, run, "model.") for where in (stage, None))
        assert_close(model, plain_model, skip=ZERO_GRADIENT)


@pytest.mark.parametrize("stage", STAGES)
def test_zero_accumulation_as_without_deepspeed(zero_runs, stage):
    """Batches of 2 accumulated twice: Trainer leaves the scaling to SPGTrainer (scale_wrt_gas=False)."""
    assert_same_run(results(zero_runs, stage, "bert_accumulated"), results(zero_runs, None, "bert_accumulated"))


def test_zero3_model_partitioned_at_load_trains_the_same(zero_runs):
    """from_pretrained after the ZeRO-3 arguments exist loads the weights partitioned (deepspeed.zero.Init), as in a
    training script; the chain is built on them and joins DeepSpeed's partitions when Trainer wraps the model."""
    zero = results(zero_runs, 3, "bert_zero_init")
    assert zero["partitioned_at_load"] and zero["partitioned"]
    assert_same_run(zero, results(zero_runs, None, "bert_spg"))
    assert_close(
        tensors(zero_runs, 3, "bert_zero_init", "chain_end."), tensors(zero_runs, None, "bert_spg", "chain_end.")
    )


def test_zero3_second_train_call_attaches_a_new_chain(zero_runs):
    """Each train() attaches a new chain before DeepSpeed wraps the model again (an added module that misses
    deepspeed.initialize breaks ZeRO-3, transformers#36387)."""
    zero, plain = results(zero_runs, 3, "bert_twice"), results(zero_runs, None, "bert_twice")
    assert_same_run(zero, plain)
    assert_close(
        tensors(zero_runs, 3, "bert_twice", "chain_end."), tensors(zero_runs, None, "bert_twice", "chain_end.")
    )


@pytest.mark.parametrize("stage", STAGES)
def test_zero_resume_continues_with_the_chain(zero_runs, stage):
    resumed, full = results(zero_runs, stage, "bert_resumed"), results(zero_runs, stage, "bert_spg")
    assert resumed["loss"][2:] == pytest.approx(full["loss"][2:], rel=LOSS_TOLERANCE)
    assert resumed["survival"] == full["survival"]
    # Resumed at step 2, the chain is no longer zero: DeepSpeed's checkpoint restored it.
    assert any(t.any() for t in tensors(zero_runs, stage, "bert_resumed", "chain_start.").values())
    for part in ("chain_end.", "model."):
        assert_close(tensors(zero_runs, stage, "bert_resumed", part), tensors(zero_runs, stage, "bert_spg", part))


@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoint_carries_the_chain_weights(zero_runs, stage):
    """spg_modules.safetensors in checkpoint-2 holds the chain as it was at step 2 (what the resumed run started
    from)."""
    path = os.path.join(zero_runs, str(stage), "bert_spg", "checkpoint-2", "spg_modules.safetensors")
    assert_close(safetensors.torch.load_file(path), tensors(zero_runs, stage, "bert_resumed", "chain_start."))


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("stage", STAGES)
def test_zero_save_model_gives_a_plain_folder(zero_runs, stage, family):
    folder = os.path.join(zero_runs, str(stage), f"{family}_spg", "saved")
    saved = safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
    assert saved and not [name for name in saved if "spg" in name]
    model, loading = getattr(transformers, FAMILIES[family]).from_pretrained(folder, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    final = tensors(zero_runs, stage, f"{family}_spg", "model.")
    assert_close(model.state_dict(), {name: t for name, t in final.items() if not name.startswith("spg_")})


@pytest.mark.parametrize("stage", STAGES)
def test_zero_spg_off_equals_trainer(zero_runs, stage):
    off, plain = results(zero_runs, stage, "bert_off"), results(zero_runs, stage, "bert_trainer")
    assert off["loss"] == plain["loss"] and len(off["loss"]) == 4 and off["survival"] == []
    off_weights, plain_weights = (tensors(zero_runs, stage, run, "model.") for run in ("bert_off", "bert_trainer"))
    assert off_weights.keys() == plain_weights.keys()
    assert all(torch.equal(off_weights[name], plain_weights[name]) for name in off_weights)


@pytest.mark.parametrize("stage", STAGES)
def test_zero_refuses_a_checkpoint_of_the_other_mode(zero_runs, stage):
    """A plain run's checkpoint resumed with SPG on is refused with SPGTrainer's reason, as without DeepSpeed."""
    error = results(zero_runs, stage, "bert_on_from_off")["error"]
    assert error.startswith("ValueError") and "spg_enabled=False" in error


def test_accelerate_launch_with_the_zero3_config(zero_runs, tmp_path):
    """configs/accelerate/deepspeed_zero3.yaml as users launch it (on CPU: one process, no mixed precision): the
    launcher's DeepSpeed settings reach SPGTrainer, and it trains as without DeepSpeed."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        os.path.join(ACCELERATE_CONFIGS, "deepspeed_zero3.yaml"), "--mixed_precision", "no", "--num_processes", "1",
        WORKER, "--output_dir", str(tmp_path), "--accelerate",
    ]  # fmt: skip
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    launched = results(str(tmp_path), "accelerate", "bert_spg")
    # ZeRO-3 keeps this tiny model's weights whole (each is under stage3_param_persistence_threshold, which the
    # accelerate config does not set); the runs above partition them.
    assert launched["deepspeed"] and launched["zero_stage"] == 3
    assert_same_run(launched, results(zero_runs, None, "bert_spg"))


# config file -> (accelerate's distributed type, settings it must hold)
CONFIGS = {
    "single_gpu.yaml": ("NO", {"num_processes": 1}),
    "multi_gpu.yaml": ("MULTI_GPU", {}),
    "fsdp.yaml": (
        "FSDP",
        {"fsdp_config": {"fsdp_sharding_strategy": "FULL_SHARD", "fsdp_use_orig_params": True}},
    ),
    "deepspeed_zero2.yaml": ("DEEPSPEED", {"deepspeed_config": {"zero_stage": 2}}),
    "deepspeed_zero3.yaml": (
        "DEEPSPEED",
        {"deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True, "zero3_save_16bit_model": True}},
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_accelerate_config_parses_and_says_where_it_ran(name):
    path = os.path.join(ACCELERATE_CONFIGS, name)
    config = load_config_from_file(path)
    distributed_type, settings = CONFIGS[name]
    assert config.distributed_type == distributed_type and config.mixed_precision == "bf16"
    for key, value in settings.items():
        if isinstance(value, dict):
            assert value.items() <= getattr(config, key).items(), key
        else:
            assert getattr(config, key) == value, key
    with open(path) as file:
        assert "# Where it was run:" in file.read()
