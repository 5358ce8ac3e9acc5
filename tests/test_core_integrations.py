"""SPGTrainer with Trainer features around it: hyperparameter search, torch.compile, cold start.

bf16 is tested in test_loss_fidelity.py."""

from __future__ import annotations

import math
import os

import optuna
import pytest
import torch
from accelerate.utils import is_compiled_module
from helpers import (
    assert_resumed_inside_cold_start,
    logged_learning_rates,
    losses,
    same_weights,
    text_dataset,
    tiny_bert,
    training_args,
)
from transformers import TrainerCallback

from spg_hf import SPGTrainer

# Over SHORT_RUN: batches of 8 at a high rate, the step count each test's own (else Trainer's 3 epochs), and the
# paper's form: its chain trains, so chain weights move and every chain code path is exercised.
SETTINGS = dict(per_device_train_batch_size=8, learning_rate=1e-2, max_steps=-1, spg_activation="none")


class ChainWatcher(TrainerCallback):
    """Keeps the chain's state when training ends (train() removes the chain right after)."""

    def __init__(self) -> None:
        self.final_chain: dict[str, torch.Tensor] = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.final_chain = {name: tensor.detach().clone() for name, tensor in model.spg_chain.state_dict().items()}


def assert_chain_trained(watcher: ChainWatcher) -> None:
    assert set(watcher.final_chain) == {f"replicas.{t}.{p}" for t in range(3) for p in ("weight", "bias")}
    for name, tensor in watcher.final_chain.items():
        assert tensor.abs().max() > 0, f"{name} never left its zero initialisation"


# ---- hyperparameter search ----


class DropoutRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.trials: list[tuple[float, list[float]]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trials.append((args.spg_dropout, [replica.dropout.p for replica in model.spg_chain.replicas]))


def test_optuna_search_builds_each_trials_chain(output_dir):
    recorder = DropoutRecorder()
    trainer = SPGTrainer(
        model_init=lambda: tiny_bert(),
        args=training_args(output_dir, SETTINGS, max_steps=2),
        train_dataset=text_dataset(size=16),
        eval_dataset=text_dataset(size=8, seed=1),
        callbacks=[recorder],
    )
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"spg_dropout": trial.suggest_categorical("spg_dropout", [0.1, 0.3])},
        backend="optuna",
        n_trials=2,
        direction="minimize",
        sampler=optuna.samplers.GridSampler({"spg_dropout": [0.1, 0.3]}, seed=0),
    )
    assert sorted(recorder.trials) == [(0.1, [0.1] * 3), (0.3, [0.3] * 3)]
    assert best.hyperparameters["spg_dropout"] in (0.1, 0.3)
    assert math.isfinite(best.objective)


# ---- torch.compile ----


@pytest.mark.slow
def test_torch_compile_aot_eager_trains(output_dir):
    watcher = ChainWatcher()
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, SETTINGS, max_steps=3, torch_compile=True, torch_compile_backend="aot_eager"),
        train_dataset=text_dataset(),
        callbacks=[watcher],
    )
    trainer.train()
    logged = losses(trainer)
    assert len(logged) == 3 and all(math.isfinite(loss) for loss in logged)
    assert any(key.startswith("spg/survival_") for key in trainer.state.log_history[0])
    assert is_compiled_module(trainer.model_wrapped)
    assert_chain_trained(watcher)


# ---- optimizer cold start ----


class WeightSnapshots(ChainWatcher):
    """All weights (model and chain) before the first step and after every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(self, state, model) -> None:
        self.by_step[state.global_step] = {name: t.detach().clone() for name, t in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.snapshot(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshot(state, model)


@pytest.mark.parametrize(
    "cold_start", [dict(cold_start_steps=3, max_steps=8), dict(cold_start_epochs=1, num_train_epochs=3)]
)
def test_cold_start_holds_weights_then_runs_full_schedule(output_dir, cold_start):
    # 24 examples in batches of 8: 3 optimizer steps per epoch, so both settings give a 3-step cold start.
    snapshots = WeightSnapshots()
    learning_rate = 1e-2
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, SETTINGS, learning_rate=learning_rate, lr_scheduler_type="linear", **cold_start),
        train_dataset=text_dataset(size=24),
        callbacks=[snapshots],
    )
    trainer.train()
    total = trainer.state.global_step
    assert total == trainer.state.max_steps == (8 if "max_steps" in cold_start else 9)
    assert any(name.startswith("spg_chain.") for name in snapshots.by_step[0])
    for step in (1, 2, 3):
        assert same_weights(snapshots.by_step[step], snapshots.by_step[0]), f"weights moved at cold step {step}"
    assert not same_weights(snapshots.by_step[4], snapshots.by_step[0])
    assert_chain_trained(snapshots)

    # The linear schedule is built for the remaining steps: full rate right after the cold start, 0 after the last.
    remaining = total - 3
    expected = [0.0] * 3 + [learning_rate * (remaining - k) / remaining for k in range(remaining)]
    assert logged_learning_rates(trainer) == pytest.approx(expected, rel=1e-6, abs=0)
    assert logged_learning_rates(trainer)[:3] == [0.0, 0.0, 0.0]
    assert trainer.lr_scheduler.get_last_lr() == [0.0, 0.0]  # both parameter groups (with and without decay)


def test_resume_inside_cold_start_matches_uninterrupted_run(output_dir):
    def run(resume_from_checkpoint: str | None) -> tuple[SPGTrainer, ChainWatcher]:
        snapshots = WeightSnapshots()
        trainer = SPGTrainer(
            model=tiny_bert(),
            args=training_args(
                output_dir, SETTINGS, cold_start_steps=3, max_steps=8, save_strategy="steps", save_steps=2
            ),
            train_dataset=text_dataset(size=24),
            callbacks=[snapshots],
        )
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return trainer, snapshots

    uninterrupted, full_snapshots = run(None)
    resumed, resumed_snapshots = run(os.path.join(output_dir, "checkpoint-2"))
    assert_resumed_inside_cold_start(resumed, uninterrupted, resumed_snapshots, full_snapshots)


# ---- repeated train() calls ----


def test_second_train_call_trains_its_new_chain(output_dir):
    watcher = ChainWatcher()
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, SETTINGS, max_steps=3),
        train_dataset=text_dataset(),
        callbacks=[watcher],
    )
    trainer.train()
    first_chain = watcher.final_chain
    trainer.train()
    # Each call starts a fresh zero chain; the second one must reach the optimizer too.
    assert_chain_trained(watcher)
    assert not same_weights(watcher.final_chain, first_chain)
