"""Optimizer cold start: learning rate exactly 0 for the first k optimizer steps, then the normal schedule.

AdamW's moment estimates fill up while the weights stay put. `ColdStartCallback` gives this start to any `Trainer`
(and to the trainers built on it, such as TRL's); `SPGTrainer`'s `cold_start_steps` / `cold_start_epochs` use it too.

The schedule Trainer built from `lr_scheduler_type` is changed in place rather than replaced: Trainer keeps
stepping, logging, saving and restoring its own `LambdaLR`, so the logged learning rate is the one applied and a
checkpoint taken inside the cold phase resumes there. (Setting the parameter groups' rate to 0 from a callback
instead would log the schedule's rate while applying 0, and let the schedule decay meanwhile.) After the cold steps
the schedule runs from its own step 0, built for the remaining steps, so its warm-up and decay are whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments, get_scheduler
from transformers.trainer_utils import has_length


class ColdStartCallback(TrainerCallback):
    """Holds the learning rate at exactly 0 for the first `steps` optimizer steps (or the steps of `epochs` epochs),
    then runs the schedule the training arguments describe, built for the steps that remain.

    ```python
    trainer = Trainer(model, args, train_dataset=train, callbacks=[ColdStartCallback(epochs=1)])
    ```

    It needs the schedule Trainer builds from `lr_scheduler_type` (any type but `reduce_lr_on_plateau` and `greedy`),
    not a scheduler passed through `optimizers=(optimizer, scheduler)`.
    """

    def __init__(self, steps: int | None = None, epochs: float | None = None) -> None:
        if (steps is None) == (epochs is None):
            raise ValueError(
                f"ColdStartCallback takes exactly one of steps and epochs, got steps={steps}, epochs={epochs}."
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"ColdStartCallback: steps must be a positive integer, got {steps!r}.")
        if epochs is not None and not epochs > 0:
            raise ValueError(f"ColdStartCallback: epochs must be > 0, got {epochs!r}.")
        self.steps = steps
        self.epochs = epochs

    def __repr__(self) -> str:
        return f"ColdStartCallback(steps={self.steps})" if self.steps else f"ColdStartCallback(epochs={self.epochs})"

    def cold_steps(self, update_steps_per_epoch: int | None) -> int:
        """The number of optimizer steps at learning rate 0."""
        if self.steps is not None:
            return self.steps
        if update_steps_per_epoch is None:
            raise ValueError(f"{self!r} needs a training set with a length to count an epoch's steps; give steps.")
        return math.ceil(self.epochs * update_steps_per_epoch)

    def start(
        self, lr_scheduler: Any, args: TrainingArguments, max_steps: int, update_steps_per_epoch: int | None
    ) -> None:
        """Turn Trainer's schedule for `max_steps` steps into the cold start followed by the schedule for the rest."""
        cold_steps = self.cold_steps(update_steps_per_epoch)
        if cold_steps >= max_steps:
            raise ValueError(
                f"The optimizer cold start ({self!r}: {cold_steps} optimizer steps) must be shorter than training "
                f"({max_steps} steps)."
            )
        if not isinstance(lr_scheduler, LambdaLR):
            raise ValueError(
                "The optimizer cold start needs a step-wise LambdaLR schedule (every lr_scheduler_type but "
                f"reduce_lr_on_plateau and greedy), got {type(lr_scheduler).__name__}."
            )
        if not _is_schedule_of(lr_scheduler, args, max_steps):
            raise ValueError(
                f"The optimizer cold start rebuilds the schedule of lr_scheduler_type={args.lr_scheduler_type!r} (with "
                "its warm-up and lr_scheduler_kwargs) for the steps after it, but the trainer's scheduler is another "
                "one: a scheduler passed through optimizers=(optimizer, scheduler), or one a cold start has already "
                "changed (a second ColdStartCallback, or one beside SPGTrainer's cold_start_* settings)."
            )
        lr_scheduler.lr_lambdas = [
            _after_cold_steps(lr_lambda, cold_steps)
            for lr_lambda in _schedule_lambdas(lr_scheduler, args, max_steps - cold_steps)
        ]
        # On resume the scheduler already holds the checkpoint's step: the rate is recomputed for that step.
        rates = [
            base_lr * lr_lambda(lr_scheduler.last_epoch)
            for base_lr, lr_lambda in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas, strict=True)
        ]
        for group, rate in zip(lr_scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        # What get_last_lr() returns, so what Trainer logs for the next step.
        lr_scheduler._last_lr = rates

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        lr_scheduler: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        # Trainer has built its schedule (and restored a checkpoint's) by now. Optimizer steps per epoch as
        # Trainer counts them.
        update_steps_per_epoch = None
        if train_dataloader is not None and has_length(train_dataloader):
            update_steps_per_epoch = max(math.ceil(len(train_dataloader) / args.gradient_accumulation_steps), 1)
        self.start(lr_scheduler, args, state.max_steps, update_steps_per_epoch)


def _after_cold_steps(lr_lambda: Callable[[int], float], cold_steps: int) -> Callable[[int], float]:
    # A plain function on purpose: LambdaLR leaves functions out of its state_dict, so checkpoints stay loadable
    # with torch.load(weights_only=True); the cold start is rebuilt from the same settings on resume.
    def lr_factor(step: int) -> float:
        return 0.0 if step < cold_steps else lr_lambda(step - cold_steps)

    return lr_factor


def _schedule_lambdas(lr_scheduler: LambdaLR, args: TrainingArguments, num_training_steps: int) -> list | None:
    """The learning-rate factors of Trainer's schedule for `num_training_steps` steps (None if not a LambdaLR).
    Built on a stand-in optimizer with the same groups and default rate (polynomial and min-lr schedules read it),
    so the real optimizer's rates are left alone."""
    stand_in = torch.optim.SGD(
        [{"params": [torch.zeros(1)], "lr": base_lr} for base_lr in lr_scheduler.base_lrs],
        lr=lr_scheduler.optimizer.defaults["lr"],
    )
    schedule = get_scheduler(
        args.lr_scheduler_type,
        optimizer=stand_in,
        num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    return schedule.lr_lambdas if isinstance(schedule, LambdaLR) else None


def _is_schedule_of(lr_scheduler: LambdaLR, args: TrainingArguments, max_steps: int) -> bool:
    """Whether `lr_scheduler` gives, at every step, the factors of Trainer's schedule built from `args`."""
    expected = _schedule_lambdas(lr_scheduler, args, max_steps)
    if expected is None or len(expected) != len(lr_scheduler.lr_lambdas):
        return False
    return all(
        actual(step) == reference(step)
        for actual, reference in zip(lr_scheduler.lr_lambdas, expected, strict=True)
        for step in range(max_steps + 1)
    )
