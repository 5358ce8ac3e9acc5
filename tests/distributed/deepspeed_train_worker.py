"""The one process of the DeepSpeed ZeRO test (tests/test_deepspeed.py launches it with
`python -m torch.distributed.run --nproc_per_node 1`; DeepSpeed runs on its CPU accelerator over gloo).

Every run is made without DeepSpeed first (folder `none`), then for each ZeRO stage in --stages under
`TrainingArguments(deepspeed=...)`, in this process, so that the test can compare them step by step:
- `<family>_spg`: SPG on (the paper's trainable form, so the chain's weights move) for each of FAMILIES; the BERT
  classifier saves checkpoints every 2 steps; every run's `save_model()` folder goes to `<run>/saved`.
- `bert_accumulated`: SPG on with batches of 2 accumulated twice.
- `bert_twice`: two train() calls on one trainer (no DeepSpeed and ZeRO-3), the second one's results kept.
- under DeepSpeed only: `bert_resumed` (from bert_spg's checkpoint-2), `bert_off` / `bert_trainer`
  (`spg_enabled=False` and a plain `Trainer`), `bert_on_from_off` (bert_off's checkpoint-2 resumed with SPG on);
  under ZeRO-3 `bert_zero_init`: loaded with `from_pretrained` after the arguments exist, so that transformers
  partitions it at load time (`deepspeed.zero.Init`), as in a training script.
With --accelerate (under `accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml`) only `bert_spg`
runs, with DeepSpeed set up by the launcher, into the folder `accelerate`.
Each run writes `<output_dir>/<stage>/<run>.json` (per-step logs, whether the weights were partitioned, or the
error train() raised) and `<run>.safetensors` (the chain at the start and the end of training, gathered, and the
model's final weights).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the helper module is

import safetensors.torch
import torch
from helpers import greedy_lm_dataset, no_dropout, qa_dataset, text_dataset, tiny_model, token_dataset, training_args
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.tasks.cli import run_main
from spg_hf.trainer import CHAIN_ATTRIBUTE

FAMILIES = {
    # family -> (model class, training set): example-level (a pooled classifier, a span head) and token-level (a
    # token classifier, a causal LM's shared output embeddings) head families.
    "bert": ("BertForSequenceClassification", lambda: text_dataset(size=32)),
    "span": ("BertForQuestionAnswering", lambda: qa_dataset(size=32)),
    "tokens": ("BertForTokenClassification", lambda: token_dataset(size=32)),
    "llama": ("LlamaForCausalLM", functools.cache(greedy_lm_dataset)),
}
STEPS = 4


def deepspeed_config(stage: int) -> dict:
    """What a user writes for ZeRO on one machine; "auto" lets Trainer fill in its own settings. ZeRO-3 keeps
    parameters under stage3_param_persistence_threshold elements (100k by default: all of a tiny model's) whole;
    0 partitions every one, the chain's included."""
    zero = {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def gathered(parameters: list[torch.nn.Parameter]):
    """Full values of ZeRO-3 partitioned parameters inside the block; other parameters are whole already."""
    if any(hasattr(p, "ds_id") for p in parameters):
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters)
    return nullcontext()


def partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 has partitioned the model's weights (each holds an empty placeholder outside a gather)."""
    return all(hasattr(p, "ds_id") and p.data.numel() == 0 for p in model.parameters())


class Record(TrainerCallback):
    """The chain's full weights when training begins and ends (before train() detaches it), the model's final
    weights, and whether the weights were partitioned during training."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.partitioned = False

    def keep(self, prefix: str, module: torch.nn.Module) -> None:
        with gathered(list(module.parameters())):
            for name, parameter in module.named_parameters():
                self.tensors[prefix + name] = parameter.detach().clone().contiguous()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if hasattr(model, CHAIN_ATTRIBUTE):
            self.keep("chain_start.", getattr(model, CHAIN_ATTRIBUTE))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.partitioned = self.partitioned or partitioned(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if hasattr(model, CHAIN_ATTRIBUTE):
            self.keep("chain_end.", getattr(model, CHAIN_ATTRIBUTE))
        self.keep("model.", model)


def train(
    stage: int | str | None,
    run: str,
    family: str,
    output_dir: str,
    trainer_class: type[Trainer] = SPGTrainer,
    resume: str | None = None,
    from_folder: str | None = None,
    twice: bool = False,
    **settings,
) -> None:
    """One run (with `twice`, a second train() call on the same trainer, whose results are kept); writes
    `<output_dir>/<stage>/<run>.json` and `.safetensors`. An exception from train() (a refused resume) is written to
    the JSON instead of the results."""
    class_name, dataset = FAMILIES[family]
    folder = os.path.join(output_dir, str(stage or "none"))
    arguments_class = SPGTrainingArguments if trainer_class is SPGTrainer else TrainingArguments
    run_settings = dict(
        max_steps=STEPS,
        learning_rate=1e-2,
        save_steps=2,
        # Under `accelerate launch` with a DeepSpeed config (stage "accelerate") the launcher's environment sets it.
        deepspeed=deepspeed_config(stage) if isinstance(stage, int) else None,
    )
    args = training_args(os.path.join(folder, run), run_settings, settings, args_class=arguments_class)
    # Created after the arguments: under ZeRO-3 from_pretrained then partitions the weights as it loads them.
    if from_folder:
        model = AutoModelForSequenceClassification.from_pretrained(from_folder)
        partitioned_at_load = partitioned(model)
    else:
        model = tiny_model(class_name, **no_dropout(), use_cache=False)
    record = Record()
    trainer = trainer_class(model=model, args=args, train_dataset=dataset(), callbacks=[record])
    try:
        trainer.train(resume_from_checkpoint=resume)
        if twice:
            trainer.train()
    except Exception as error:
        with open(os.path.join(folder, f"{run}.json"), "w") as file:
            json.dump({"error": f"{type(error).__name__}: {error}"}, file)
        return
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "steps": [entry["step"] for entry in logs],
        "loss": [entry["loss"] for entry in logs],
        "survival": [[entry[f"spg/survival_{t}"] for t in (1, 2, 3)] for entry in logs if "spg/survival_1" in entry],
        "partitioned": record.partitioned,
        "deepspeed": trainer.is_deepspeed_enabled,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
        "eval_loss": trainer.evaluate(eval_dataset=dataset())["eval_loss"],
    }
    if from_folder:
        result["partitioned_at_load"] = partitioned_at_load
    trainer.save_model(os.path.join(folder, run, "saved"))
    with open(os.path.join(folder, f"{run}.json"), "w") as file:
        json.dump(result, file)
    safetensors.torch.save_file(record.tensors, os.path.join(folder, f"{run}.safetensors"))


def runs(stage: int | None, output_dir: str) -> None:
    spg = dict(spg_activation="none")
    for family in FAMILIES:
        checkpoints = dict(save_strategy="steps") if family == "bert" else {}
        train(stage, f"{family}_spg", family, output_dir, **spg, **checkpoints)
    accumulated = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    train(stage, "bert_accumulated", "bert", output_dir, **accumulated, **spg)
    if stage in (None, 3):
        # ZeRO-3 wraps the model anew in train(), around the chain attached then (transformers#36387: a module added
        # after deepspeed.initialize breaks ZeRO-3).
        train(stage, "bert_twice", "bert", output_dir, twice=True, **spg)
    if stage is None:
        return
    checkpoint = os.path.join(output_dir, str(stage), "{}", "checkpoint-2")
    train(stage, "bert_resumed", "bert", output_dir, resume=checkpoint.format("bert_spg"), **spg)
    train(stage, "bert_off", "bert", output_dir, spg_enabled=False, save_strategy="steps")
    train(stage, "bert_trainer", "bert", output_dir, trainer_class=Trainer)
    # A checkpoint continues only in the mode it was saved in.
    train(stage, "bert_on_from_off", "bert", output_dir, resume=checkpoint.format("bert_off"), **spg)
    if stage == 3:
        initial = os.path.join(output_dir, "initial_bert")
        tiny_model("BertForSequenceClassification", **no_dropout()).save_pretrained(initial)
        train(stage, "bert_zero_init", "bert", output_dir, from_folder=initial, **spg)


def skip_shared_memory_op() -> None:
    """DeepSpeed's CPU accelerator compiles a shared-memory all-reduce op (C++, about a minute) when its process
    group starts; it only speeds up collectives between processes on one machine, and this one process has none."""
    import importlib

    # By its module: the package's attribute `deepspeed.comm.torch` is torch itself.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument(
        "--accelerate", action="store_true", help="under accelerate launch: only bert_spg, in folder 'accelerate'"
    )
    options = parser.parse_args()
    skip_shared_memory_op()
    if options.accelerate:
        train("accelerate", "bert_spg", "bert", options.output_dir, spg_activation="none")
        return
    runs(None, options.output_dir)
    for stage in options.stages:
        runs(stage, options.output_dir)


if __name__ == "__main__":
    run_main(main)
