"""Checkpoints with the chains: which can be resumed (complete ones, never a folder that a killed save left behind,
never one saved in the other mode), and how the chains' weights go into one.

`Trainer._save_checkpoint` (transformers 5.24) writes into `checkpoint-<step>` directly: the model, then optimizer,
scheduler and RNG states, then `trainer_state.json`, and only then deletes older checkpoints. `SPGTrainer` writes its
`spg_modules.safetensors` before all of these. So `trainer_state.json` marks a save that ran to its end, and a
save cut off at any point leaves the previous checkpoint in place. A marked folder is still refused if one of its
files cannot be read (cut off by the end of a rotation or a damaged disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from collections.abc import Callable

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

SPG_WEIGHTS_NAME = "spg_modules.safetensors"  # the chains' weights in a checkpoint folder
CHECKPOINT_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# torch.save writes a zip archive whose directory comes last, so a cut-off file is not a readable zip.
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _file_defect(path: str) -> str | None:
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as file:
                json.load(file)
        except (ValueError, UnicodeDecodeError) as error:
            return f"is not valid JSON ({error})"
    elif path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError as error:
            return f"cannot be read ({error})"
    elif path.endswith(TORCH_SUFFIXES) and not zipfile.is_zipfile(path):
        return "is cut off (no zip directory at its end)"
    return None


def checkpoint_defect(folder: str) -> str | None:
    """Why `folder` cannot be resumed from, or None when its save finished and all its files read."""
    if not os.path.isdir(folder):
        return "it is not a folder"
    if not os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)):
        return f"it has no {TRAINER_STATE_NAME}, so its save did not finish"
    for directory, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(directory, name)
            defect = _file_defect(path)
            if defect is not None:
                return f"{os.path.relpath(path, folder)} {defect}"
    return None


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders of `output_dir`, newest step first."""
    if not os.path.isdir(output_dir):
        return []
    steps = {}
    for name in os.listdir(output_dir):
        match = CHECKPOINT_FOLDER.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    return sorted(steps, key=steps.get, reverse=True)


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest checkpoint of `output_dir` that can be resumed from (None if none can), and a line for each newer
    one that cannot, naming it and why; those lines are also logged as warnings."""
    newest, skipped = None, []
    for folder in checkpoint_folders(output_dir):
        defect = checkpoint_defect(folder)
        if defect is None:
            newest = folder
            break
        skipped.append(f"{folder}: {defect}")
        logger.warning(f"Skipping incomplete checkpoint {skipped[-1]}.")
    return newest, skipped


def checkpoint_to_resume(resume_from_checkpoint: str | bool | None, output_dir: str, spg_enabled: bool) -> str | None:
    """Trainer's `resume_from_checkpoint`, checked before training: True picks the newest *complete* checkpoint of
    `output_dir` (stock Trainer takes the newest folder, even one whose save was cut off), a given folder must be
    complete, and either must have been saved in this run's mode (`refuse_the_other_mode`). Errors Trainer raises
    for the same input start with Trainer's words: scripts and tests match on them."""
    if resume_from_checkpoint is True:
        checkpoint, skipped = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            found = "; ".join(skipped) or "no checkpoint folders"
            raise ValueError(
                f"No valid checkpoint found in output directory ({output_dir}): it has no complete checkpoint "
                f"({found}), and resume_from_checkpoint=True takes the newest complete one."
            )
        if skipped:
            logger.warning(f"Resuming from {checkpoint}, the newest complete checkpoint.")
        resume_from_checkpoint = checkpoint
    elif isinstance(resume_from_checkpoint, str):
        defect = checkpoint_defect(resume_from_checkpoint)
        if defect is not None:
            raise ValueError(
                f"Can't find a valid checkpoint at {resume_from_checkpoint}: {defect}. Pass an older checkpoint, "
                "or resume_from_checkpoint=True for the newest complete one in output_dir."
            )
    if not resume_from_checkpoint:
        return None
    refuse_the_other_mode(resume_from_checkpoint, spg_enabled)
    return resume_from_checkpoint


def refuse_the_other_mode(checkpoint: str, spg_enabled: bool) -> None:
    """A ValueError where the checkpoint was saved in the other mode. The optimizer state covers the SPG modules
    exactly when the checkpoint has their weights, so a checkpoint only continues in the mode it was saved in;
    switching modes starts a new run from its weights. Checked before Trainer loads anything: under DeepSpeed,
    Trainer resumes through DeepSpeed's engine and never calls `_load_from_checkpoint`."""
    saved_by_spg = os.path.isfile(os.path.join(checkpoint, SPG_WEIGHTS_NAME))
    if spg_enabled and not saved_by_spg:
        raise ValueError(
            f"{checkpoint} was saved with spg_enabled=False: it has no {SPG_WEIGHTS_NAME}, which an SPG run writes "
            "before its checkpoint is complete, so its optimizer state has nothing for the SPG modules. Continue it "
            f"with spg_enabled=False, or train with SPG from its weights in a new output_dir "
            f"(model_name_or_path={checkpoint})."
        )
    if not spg_enabled and saved_by_spg:
        raise ValueError(
            f"{checkpoint} was saved by an SPG run (it has {SPG_WEIGHTS_NAME}), so its optimizer state includes the "
            "SPG modules: continue it with spg_enabled=True and its spg_weights and spg_dropout, or train without "
            "SPG from its weights (which leave out the SPG modules) in a new output_dir "
            f"(model_name_or_path={checkpoint})."
        )


def chain_state_for_checkpoint(
    parameters: list[nn.Parameter], state_dict: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The chains' weights as a checkpoint keeps them, on the CPU. Under ZeRO-3 the chains are partitioned like the
    model: every process gathers them (a collective), and the one that saves writes them."""
    gathered = _deepspeed_gathered(parameters) if is_deepspeed_zero3_enabled() else contextlib.nullcontext()
    with gathered:
        return {name: tensor.detach().cpu().clone() for name, tensor in state_dict().items()}


def _deepspeed_gathered(parameters: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    import deepspeed  # only under DeepSpeed, an optional dependency

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=None)


def start_checkpoint(folder: str, chain_state: dict[str, torch.Tensor] | None) -> None:
    """Writes the chains' weights into `folder` before Trainer writes the checkpoint. Trainer writes
    trainer_state.json last and deletes older checkpoints after it, so that file marks a complete checkpoint: the
    mark and SPG weights that an interrupted earlier save of this step left behind go first, so that old and new
    files never pass for one complete checkpoint."""
    os.makedirs(folder, exist_ok=True)
    for name in (TRAINER_STATE_NAME, SPG_WEIGHTS_NAME):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    if chain_state is not None:
        weights = {name: tensor.contiguous() for name, tensor in chain_state.items()}
        safetensors.torch.save_file(weights, os.path.join(folder, SPG_WEIGHTS_NAME))


def load_chain_state(checkpoint: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(os.path.join(checkpoint, SPG_WEIGHTS_NAME), device="cpu")
