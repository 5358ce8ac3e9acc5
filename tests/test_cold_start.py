"""ColdStartCallback with a plain transformers Trainer: rate 0 and still weights, then the whole schedule; resume."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import (
    assert_resumed_inside_cold_start,
    logged_learning_rates,
    same_weights,
    text_dataset,
    tiny_bert,
    training_args,
)
from transformers import Trainer, TrainerCallback, TrainingArguments, get_constant_schedule

from spg_hf import ColdStartCallback, SPGTrainer

LEARNING_RATE = 1e-2


# Over SHORT_RUN: batches of 8 at a high rate, the step count each test's own (else Trainer's 3 epochs).
SETTINGS = dict(per_device_train_batch_size=8, learning_rate=LEARNING_RATE, max_steps=-1)


class WeightSnapshots(TrainerCallback):
    """The model's weights before the first step and after every optimizer step."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.by_step[state.global_step] = {name: t.detach().clone() for name, t in model.state_dict().items()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.by_step[state.global_step] = {name: t.detach().clone() for name, t in model.state_dict().items()}


def train(output_dir: str, callbacks: list, resume_from_checkpoint: str | None = None, **overrides) -> Trainer:
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(output_dir, SETTINGS, args_class=TrainingArguments, **overrides),
        train_dataset=text_dataset(size=24),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


# Schedules whose warm-up or end depend on the step count, one of them reading the optimizer's default rate.
SCHEDULES = [
    dict(lr_scheduler_type="linear", warmup_steps=2),
    dict(lr_scheduler_type="cosine_with_min_lr", warmup_steps=0.25, lr_scheduler_kwargs={"min_lr": 1e-3}),
    dict(lr_scheduler_type="polynomial", lr_scheduler_kwargs={"lr_end": 1e-3, "power": 2.0}),
]


COLD_STARTS_AND_SCHEDULES = [(ColdStartCallback(steps=3), schedule) for schedule in SCHEDULES] + [
    (ColdStartCallback(epochs=1), SCHEDULES[0])
]


@pytest.mark.parametrize(
    "cold_start, schedule",
    COLD_STARTS_AND_SCHEDULES,
    ids=[f"{cold_start!r}-{schedule['lr_scheduler_type']}" for cold_start, schedule in COLD_STARTS_AND_SCHEDULES],
)
def test_cold_steps_log_zero_keep_weights_then_run_the_schedule_of_the_remaining_steps(
    output_dir, cold_start, schedule
):
    # 24 examples in batches of 8: 3 optimizer steps per epoch, so both callbacks hold the first 3 steps at 0.
    snapshots = WeightSnapshots()
    trainer = train(output_dir, [cold_start, snapshots], max_steps=8, **schedule)
    rates = logged_learning_rates(trainer)
    assert len(rates) == 8 and rates[:3] == [0.0, 0.0, 0.0]
    for step in (1, 2, 3):
        assert same_weights(snapshots.by_step[step], snapshots.by_step[0]), f"weights moved at cold step {step}"
    first_step_with_a_rate = 1 + next(index for index, rate in enumerate(rates) if rate > 0)
    assert not same_weights(snapshots.by_step[first_step_with_a_rate], snapshots.by_step[0])

    # After the cold start: the rates of a run of the remaining 5 steps, warm-up and decay included.
    reference = train(os.path.join(output_dir, "reference"), [], max_steps=5, **schedule)
    assert rates[3:] == logged_learning_rates(reference)
    assert max(rates) == pytest.approx(LEARNING_RATE, rel=0.05)


def test_resume_inside_the_cold_start_matches_the_uninterrupted_run(output_dir):
    def run(resume_from_checkpoint: str | None) -> tuple[Trainer, WeightSnapshots]:
        snapshots = WeightSnapshots()
        settings = dict(max_steps=8, lr_scheduler_type="linear", warmup_steps=2, save_strategy="steps", save_steps=2)
        trainer = train(output_dir, [ColdStartCallback(steps=3), snapshots], resume_from_checkpoint, **settings)
        return trainer, snapshots

    uninterrupted, full_snapshots = run(None)
    resumed, resumed_snapshots = run(os.path.join(output_dir, "checkpoint-2"))
    assert_resumed_inside_cold_start(resumed, uninterrupted, resumed_snapshots, full_snapshots)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(), "exactly one of steps and epochs"),
        (dict(steps=2, epochs=1.0), "exactly one of steps and epochs"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=1.5), "steps must be a positive integer"),
        (dict(epochs=0.0), "epochs must be > 0"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        ColdStartCallback(**arguments)


def test_cold_start_as_long_as_training_is_refused(output_dir):
    with pytest.raises(ValueError, match=r"ColdStartCallback\(epochs=2\).*6 optimizer steps.*shorter than training"):
        train(output_dir, [ColdStartCallback(epochs=2)], num_train_epochs=2)


def test_epochs_without_a_dataset_length_are_refused(output_dir):
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(output_dir, SETTINGS, args_class=TrainingArguments, max_steps=4),
        train_dataset=text_dataset(size=24).to_iterable_dataset(),
        callbacks=[ColdStartCallback(epochs=1)],
    )
    with pytest.raises(ValueError, match="needs a training set with a length"):
        trainer.train()


def test_schedule_it_cannot_rebuild_is_refused(output_dir):
    with pytest.raises(ValueError, match="LambdaLR"):
        Trainer(
            model=tiny_bert(),
            args=training_args(
                output_dir,
                SETTINGS,
                args_class=TrainingArguments,
                max_steps=4,
                lr_scheduler_type="reduce_lr_on_plateau",
                eval_strategy="steps",
            ),
            train_dataset=text_dataset(size=24),
            eval_dataset=text_dataset(size=8),
            callbacks=[ColdStartCallback(steps=1)],
        ).train()

    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    trainer = Trainer(
        model=model,
        args=training_args(output_dir, SETTINGS, args_class=TrainingArguments, max_steps=4),
        train_dataset=text_dataset(size=24),
        optimizers=(optimizer, get_constant_schedule(optimizer)),
        callbacks=[ColdStartCallback(steps=1)],
    )
    with pytest.raises(ValueError, match="optimizers=\\(optimizer, scheduler\\)"):
        trainer.train()


def test_spg_trainer_settings_and_callback_together_are_refused(output_dir):
    args = training_args(output_dir, SETTINGS, max_steps=4, cold_start_steps=1)
    trainer = SPGTrainer(
        model=tiny_bert(), args=args, train_dataset=text_dataset(size=24), callbacks=[ColdStartCallback(steps=1)]
    )
    with pytest.raises(ValueError, match="keep one of them"):
        trainer.train()
