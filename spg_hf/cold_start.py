"""Optimizer cold start: learning rate exactly 0 for the first k optimizer steps, then the normal schedule.

AdamW's moment estimates fill up while the weights stay put. The wrapped schedule is built for the remaining
steps and starts from its own step 0 once the cold start ends, so warm-up and decay are not eaten by it, and the
logged learning rate is the one actually applied.
"""

from __future__ import annotations

from typing import Any

import torch


class ColdStartScheduler:
    """Holds every learning rate at 0 for `cold_steps` steps, then hands over to `schedule`."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Any, cold_steps: int) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.cold_steps = cold_steps
        self.steps_taken = 0
        self._apply()

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_last_lr(), strict=True):
            group["lr"] = lr

    def step(self) -> None:
        self.steps_taken += 1
        if self.steps_taken > self.cold_steps:
            self.schedule.step()
        else:
            self._apply()

    def get_last_lr(self) -> list[float]:
        if self.steps_taken < self.cold_steps:
            return [0.0] * len(self.optimizer.param_groups)
        return self.schedule.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {"steps_taken": self.steps_taken, "cold_steps": self.cold_steps, "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_taken = state["steps_taken"]
        self.cold_steps = state["cold_steps"]
        self.schedule.load_state_dict(state["schedule"])
        self._apply()
