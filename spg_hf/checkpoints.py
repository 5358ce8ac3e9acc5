"""Which checkpoints can be resumed: complete ones, never a folder that a killed save left behind.

`Trainer._save_checkpoint` (transformers 5.24) writes into `checkpoint-<step>` directly: the model, then optimizer,
scheduler and RNG states, then `trainer_state.json`, and only then deletes older checkpoints. `SPGTrainer` writes its
`spg_modules.safetensors` before all of these. So `trainer_state.json` marks a save that ran to its end, and a
save cut off at any point leaves the previous checkpoint in place. A marked folder is still refused if one of its
files cannot be read (cut off by the end of a rotation or a damaged disk).
"""

from __future__ import annotations

import json
import os
import re
import zipfile

from safetensors import SafetensorError, safe_open
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

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
