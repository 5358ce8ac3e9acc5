"""The comparison: one command run under named arms for each seed, paired against a baseline arm."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spg_hf.compare.runner import Job

COMPARISON_FILE = "comparison.json"
DEFAULT_ARMS = {"plain": ("--spg_enabled", "false"), "spg": ("--spg_enabled", "true")}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One command run under named arms (flag overrides, in order) for each seed, paired against `baseline`."""

    command: tuple[str, ...]
    arms: tuple[tuple[str, tuple[str, ...]], ...]
    baseline: str
    seeds: tuple[int, ...]
    metric: str | None = None  # None: the metrics file's main metric (MAIN_METRIC_PREFERENCE)
    also: tuple[str, ...] = ()  # more metrics to pair, beside SECONDARY_METRICS

    @property
    def arm_names(self) -> list[str]:
        return [name for name, _ in self.arms]

    def jobs(self) -> list[Job]:
        """Seed by seed, every arm (paired runs side by side)."""
        jobs = []
        for seed in self.seeds:
            for arm, flags in self.arms:
                argv = tuple(part.replace("{seed}", str(seed)) for part in (*self.command, *flags))
                argv += ("--seed", str(seed))
                jobs.append(
                    Job(
                        key=(arm, seed),
                        arm=arm,
                        label=f"{arm} seed {seed}",
                        command=argv,
                        flags=argv,
                        folder=Path(arm) / f"seed{seed}",
                        log=Path(arm) / f"seed{seed}.log",
                        cost_kind=arm,
                    )
                )
        return jobs

    def to_json(self) -> dict:
        return {
            "command": list(self.command),
            "arms": {name: list(flags) for name, flags in self.arms},
            "baseline": self.baseline,
            "seeds": list(self.seeds),
            "metric": self.metric,
            "also": list(self.also),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            command=tuple(data["command"]),
            arms=tuple((name, tuple(flags)) for name, flags in data["arms"].items()),
            baseline=data["baseline"],
            seeds=tuple(data["seeds"]),
            metric=data["metric"],
            also=tuple(data["also"]),
        )
