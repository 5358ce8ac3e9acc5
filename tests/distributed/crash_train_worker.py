"""A short SPG run whose checkpoint saves can be cut off (tests/test_crash_safety.py).

The run: a tiny BERT, 4 steps, a checkpoint every 2 steps, `save_total_limit=1`, resumed as the example scripts resume
(`spg_hf.tasks.cli.prepare_output_dir`). As a script it is one process of the test: `--kill_during STEP
--kill_at N` makes it kill itself with SIGKILL partway through STEP of the save at step N, and the final weights,
SPG chain included, are written to `--weights`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the helper module is

import safetensors.torch
import transformers.trainer
from helpers import text_dataset, tiny_bert, training_args
from transformers import TrainerCallback, TrainerState

from spg_hf import SPGTrainer
from spg_hf.tasks.cli import ScriptTrainingArguments, prepare_output_dir

MAX_STEPS = 4
SAVE_STEPS = 2
# What a checkpoint save does, in order: SPGTrainer's SPG weights, then Trainer 5.24's _save_checkpoint (model,
# optimizer and scheduler, RNG state, trainer_state.json, deleting older checkpoints).
SAVE_PARTS = (
    "_spg_start_checkpoint",
    "save_model",
    "_save_optimizer_and_scheduler",
    "_save_rng_state",
    "save_to_json",
    "rotate_checkpoints",
)


class FinalWeights(TrainerCallback):
    """The model's weights when training ends, with the SPG chain still attached."""

    def __init__(self) -> None:
        self.state_dict: dict[str, Any] = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state_dict = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def crash_run_trainer(output_dir: str) -> tuple[SPGTrainer, FinalWeights]:
    args = training_args(
        output_dir,
        args_class=ScriptTrainingArguments,
        do_train=True,
        per_device_train_batch_size=8,
        max_steps=MAX_STEPS,
        logging_steps=500,  # Trainer's default: no step logged
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        save_total_limit=1,
        seed=7,
        spg_activation="none",  # the paper's form: its chain trains, so a wrongly restored chain shows
    )
    final_weights = FinalWeights()
    # 32 examples make the 4 steps one epoch: resumed from a last checkpoint inside an epoch, Trainer 5.24 trains
    # one step past max_steps.
    trainer = SPGTrainer(
        model=tiny_bert(seed=4), args=args, train_dataset=text_dataset(size=32), callbacks=[final_weights]
    )
    return trainer, final_weights


def written_files(folder: str) -> dict[str, tuple[int, int]]:
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            status = os.stat(path)
            found[path] = (status.st_size, status.st_mtime_ns)
    return found


def cut_last_written(folder: str, before: dict[str, tuple[int, int]]) -> None:
    """Cuts the file a save part wrote last to half its size, as a kill in the middle of writing it leaves it."""
    changed = {path: stamp for path, stamp in written_files(folder).items() if before.get(path) != stamp}
    if changed:
        path = max(changed, key=lambda path: changed[path][1])
        os.truncate(path, changed[path][0] // 2)


def save_part_faults(
    trainer: SPGTrainer, part: str, at_step: int, partway: bool, fault: Callable[[], None]
) -> tuple[Any, str, Callable]:
    """(owner, attribute, replacement) making `part` of the save at `at_step` call `fault`: before the part runs, or
    (partway) after it with its last file cut in half. Saves at other steps run untouched."""
    if part == "save_to_json":
        owner = TrainerState
    elif part == "rotate_checkpoints":
        owner = transformers.trainer
    else:
        owner = trainer
    original = getattr(owner, part)
    folder = os.path.join(trainer.args.output_dir, f"checkpoint-{at_step}")

    def faulty_part(*args: Any, **kwargs: Any) -> Any:
        if trainer.state.global_step != at_step:
            return original(*args, **kwargs)
        if partway:
            before = written_files(folder)
            original(*args, **kwargs)
            cut_last_written(folder, before)
        fault()

    return owner, part, faulty_part


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--kill_during", choices=SAVE_PARTS)
    parser.add_argument("--kill_at", type=int, default=MAX_STEPS)
    cli = parser.parse_args()
    trainer, final_weights = crash_run_trainer(cli.output_dir)
    if cli.kill_during:
        setattr(*save_part_faults(trainer, cli.kill_during, cli.kill_at, partway=True, fault=kill_self))
    trainer.train(resume_from_checkpoint=prepare_output_dir(trainer.args))
    safetensors.torch.save_file(final_weights.state_dict, cli.weights)


if __name__ == "__main__":
    main()
