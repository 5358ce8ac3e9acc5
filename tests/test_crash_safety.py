"""Checkpoints cut off mid-save are never resumed from (issue 14): every part of a save fails in turn, in-process and
with a real SIGKILL, and the rerun resumes from the newest complete checkpoint and ends with the weights of an
uninterrupted run. The run and the fault injection are in tests/distributed/crash_train_worker.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import safetensors.torch
import torch
from distributed.crash_train_worker import SAVE_PARTS, SAVE_STEPS, crash_run_trainer, save_part_faults
from helpers import WORKERS, text_dataset, tiny_bert
from transformers import TrainerCallback

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.tasks.cli import ScriptTrainingArguments, prepare_output_dir
from spg_hf.trainer import SPG_WEIGHTS_NAME
from spg_hf.trainer.checkpoints import checkpoint_defect, last_complete_checkpoint

WORKER = str(WORKERS / "crash_train_worker.py")


class SaveInterrupted(Exception):
    pass


def interrupt() -> None:
    raise SaveInterrupted


class Uninterrupted(NamedTuple):
    last_checkpoint: str  # checkpoint-4, the only one left (save_total_limit=1)
    first_checkpoint: str  # a copy of checkpoint-2, taken before it was deleted
    weights: dict[str, torch.Tensor]


class CopyFirstCheckpoint(TrainerCallback):
    def __init__(self, target: str) -> None:
        self.target = target

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == SAVE_STEPS:
            shutil.copytree(os.path.join(args.output_dir, f"checkpoint-{SAVE_STEPS}"), self.target)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Uninterrupted:
    folder = tmp_path_factory.mktemp("uninterrupted")
    trainer, final_weights = crash_run_trainer(str(folder / "out"))
    trainer.add_callback(CopyFirstCheckpoint(str(folder / "checkpoint-2")))
    trainer.train()
    return Uninterrupted(str(folder / "out" / "checkpoint-4"), str(folder / "checkpoint-2"), final_weights.state_dict)


def copy_checkpoint(source: str, output_dir: Path, step: int) -> Path:
    return Path(shutil.copytree(source, output_dir / f"checkpoint-{step}"))


def assert_same_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == expected.keys()
    assert any(name.startswith("spg_chain.") for name in weights)
    assert [name for name in expected if not torch.equal(weights[name], expected[name])] == []


def resumed_from(trainer: SPGTrainer, monkeypatch) -> list[str]:
    """The checkpoints `trainer` loads, recorded as it loads them."""
    loaded = []
    load = trainer._load_from_checkpoint

    def record(checkpoint: str, *args, **kwargs) -> None:
        loaded.append(os.path.basename(checkpoint))
        load(checkpoint, *args, **kwargs)

    monkeypatch.setattr(trainer, "_load_from_checkpoint", record)
    return loaded


# ---- each part of the save at step 4 fails; the rerun resumes from the newest complete checkpoint ----


# Each part cut off in its last file, and the save stopped with every file written but trainer_state.json.
FAULTS = [(part, True) for part in SAVE_PARTS] + [("save_to_json", False)]


@pytest.mark.parametrize(
    "part, partway", FAULTS, ids=[f"{part}-{'partway' if partway else 'before'}" for part, partway in FAULTS]
)
def test_rerun_after_a_failed_save_matches_uninterrupted_run(
    tmp_path, monkeypatch, caplog, uninterrupted, part, partway
):
    output_dir = str(tmp_path / "out")
    trainer, _ = crash_run_trainer(output_dir)
    with monkeypatch.context() as patches:
        patches.setattr(*save_part_faults(trainer, part, at_step=4, partway=partway, fault=interrupt))
        with pytest.raises(SaveInterrupted):
            trainer.train()

    cut_off_folder_left = os.path.isdir(os.path.join(output_dir, "checkpoint-4"))

    rerun, final_weights = crash_run_trainer(output_dir)
    loaded = resumed_from(rerun, monkeypatch)
    rerun.train(resume_from_checkpoint=True)

    # Trainer deletes checkpoint-2 only after checkpoint-4 is complete, at the very end of the save.
    expected_resume = "checkpoint-4" if part == "rotate_checkpoints" else "checkpoint-2"
    assert loaded == [expected_resume]
    if expected_resume == "checkpoint-2" and cut_off_folder_left:
        assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert_same_weights(final_weights.state_dict, uninterrupted.weights)
    assert checkpoint_defect(os.path.join(output_dir, "checkpoint-4")) is None


def test_a_stale_trainer_state_of_an_earlier_save_does_not_complete_a_new_one(tmp_path, uninterrupted):
    # checkpoint-4 of an earlier save is marked complete but has a damaged file, so the run resumes from checkpoint-2
    # and saves checkpoint-4 again: cut off before its trainer_state.json, that save must not pass for complete.
    output_dir = tmp_path / "out"
    copy_checkpoint(uninterrupted.first_checkpoint, output_dir, 2)
    earlier = copy_checkpoint(uninterrupted.last_checkpoint, output_dir, 4)
    os.truncate(earlier / "rng_state.pth", 10)
    trainer, _ = crash_run_trainer(str(output_dir))
    with pytest.MonkeyPatch.context() as patches:
        patches.setattr(*save_part_faults(trainer, "save_to_json", at_step=4, partway=False, fault=interrupt))
        with pytest.raises(SaveInterrupted):
            trainer.train(resume_from_checkpoint=True)
    assert "no trainer_state.json" in checkpoint_defect(str(earlier))


# ---- a real SIGKILL ----


def run_worker(output_dir: str, weights: str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, WORKER, "--output_dir", output_dir, "--weights", weights, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_reruns_after_sigkills_in_saves_match_uninterrupted_run(tmp_path, uninterrupted):
    """One output_dir, killed three times, as the example scripts resume it; each rerun goes on from what the last
    kill left."""
    output_dir, weights = str(tmp_path / "out"), str(tmp_path / "weights.safetensors")
    # 1. From outside, as soon as the first save starts: the kill lands inside it or, on a slow machine, after it.
    worker = subprocess.Popen(
        [sys.executable, WORKER, "--output_dir", output_dir, "--weights", weights],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not os.path.isdir(os.path.join(output_dir, "checkpoint-2")) and worker.poll() is None:
        time.sleep(0.001)
    worker.kill()
    assert worker.wait() == -9
    # 2. Half-way through trainer_state.json of the second save; 3. in the model save of its next attempt.
    for part in ("save_to_json", "save_model"):
        killed = run_worker(output_dir, weights, "--kill_during", part, "--kill_at", "4")
        assert killed.returncode == -9, killed.stderr[-3000:]
    rerun = run_worker(output_dir, weights)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Skipping incomplete checkpoint" in rerun.stderr and "checkpoint-4" in rerun.stderr
    assert_same_weights(safetensors.torch.load_file(weights), uninterrupted.weights)


# ---- what makes a checkpoint incomplete ----


@pytest.mark.parametrize(
    "name",
    ["trainer_state.json", "model.safetensors", SPG_WEIGHTS_NAME, "optimizer.pt", "rng_state.pth", "config.json"],
)
def test_a_cut_off_file_makes_a_checkpoint_incomplete(tmp_path, uninterrupted, name):
    checkpoint = copy_checkpoint(uninterrupted.last_checkpoint, tmp_path, 4)
    assert checkpoint_defect(str(checkpoint)) is None
    path = checkpoint / name
    os.truncate(path, path.stat().st_size // 2)
    assert name in checkpoint_defect(str(checkpoint))


def test_resume_true_without_a_complete_checkpoint_names_what_was_skipped(tmp_path, uninterrupted):
    output_dir = tmp_path / "out"
    checkpoint = copy_checkpoint(uninterrupted.last_checkpoint, output_dir, 4)
    os.remove(checkpoint / "trainer_state.json")
    trainer, _ = crash_run_trainer(str(output_dir))
    with pytest.raises(ValueError, match="no complete checkpoint.*checkpoint-4: it has no trainer_state.json"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="Can.t find a valid checkpoint at .*checkpoint-4: it has no trainer_state"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_example_scripts_resume_from_the_newest_complete_checkpoint(tmp_path, uninterrupted):
    output_dir = tmp_path / "out"
    for step in (2, 4, 6):
        copy_checkpoint(uninterrupted.last_checkpoint, output_dir, step)
    os.truncate(output_dir / "checkpoint-6" / "model.safetensors", 100)
    args = ScriptTrainingArguments(output_dir=str(output_dir), do_train=True)
    assert prepare_output_dir(args) == str(output_dir / "checkpoint-4")
    newest, skipped = last_complete_checkpoint(str(output_dir))
    assert newest == str(output_dir / "checkpoint-4")
    assert len(skipped) == 1 and "checkpoint-6: model.safetensors cannot be read" in skipped[0]

    # Only cut-off checkpoints: the run starts from scratch; anything else in output_dir still needs overwrite.
    for step in (2, 4):
        os.remove(output_dir / f"checkpoint-{step}" / "trainer_state.json")
    assert prepare_output_dir(args) is None
    (output_dir / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        prepare_output_dir(args)


# ---- switching SPG on or off at a resume ----


def test_spg_checkpoint_resumed_without_spg_is_refused(tmp_path, uninterrupted):
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=SPGTrainingArguments(output_dir=str(tmp_path), spg_enabled=False, use_cpu=True, report_to="none"),
        train_dataset=text_dataset(),
    )
    with pytest.raises(ValueError, match="saved by an SPG run .* continue it with spg_enabled=True"):
        trainer.train(resume_from_checkpoint=uninterrupted.last_checkpoint)


def test_plain_checkpoint_resumed_with_spg_is_refused(tmp_path, uninterrupted):
    checkpoint = copy_checkpoint(uninterrupted.last_checkpoint, tmp_path, 4)
    os.remove(checkpoint / SPG_WEIGHTS_NAME)
    trainer, _ = crash_run_trainer(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="was saved with spg_enabled=False"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
