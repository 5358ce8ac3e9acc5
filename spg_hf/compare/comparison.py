"""The comparison: one command run under named arms for each seed, paired against a baseline arm, and the rule that
a results folder holds one experiment. Every row records the experiment it belongs to (the command, the arms' flags,
the metric and its direction, the config files the command names, by content); a run of another experiment is refused
before anything is written, and the report is rebuilt from the rows alone."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spg_hf.compare.errors import CompareError
from spg_hf.compare.metrics import DIRECTION_FLAGS, metric_direction
from spg_hf.compare.rows import RAW_FILE, load_rows
from spg_hf.compare.runner import Job

DEFAULT_ARMS = {"plain": ("--spg_enabled", "false"), "spg": ("--spg_enabled", "true")}
# Files a command names that count as its configuration: a changed one makes another experiment.
CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".json", ".toml", ".cfg", ".ini"})
# Written by spg-hf compare before rows recorded their experiment; read only to report such rows.
COMPARISON_FILE = "comparison.json"
HASH_DIGITS_SHOWN = 12


def hash_config_files(argv: Sequence[str]) -> dict[str, str | None]:
    """Each config file named in `argv` (as an argument or a `--flag=path` value) -> the sha256 of its content, None
    when it does not exist (relative paths are read from the current folder, where the runs start)."""
    hashes: dict[str, str | None] = {}
    for part in argv:
        for named in (part, part.partition("=")[2]) if part.startswith("-") else (part,):
            path = Path(named)
            if path.suffix.lower() in CONFIG_SUFFIXES:
                hashes[named] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return hashes


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One command run under named arms (flag overrides, in order) for each seed, paired against `baseline`.
    `config_files` are the hashes of the config files the command and the arms name (hash_config_files; None for
    rows of an earlier spg-hf compare, which did not record them). Raises CompareError for a baseline that is not
    an arm, or a direction that needs or contradicts the metric."""

    command: tuple[str, ...]
    arms: tuple[tuple[str, tuple[str, ...]], ...]
    baseline: str
    seeds: tuple[int, ...]
    metric: str | None = None  # None: the metrics file's main metric (MAIN_METRIC_PREFERENCE)
    also: tuple[str, ...] = ()  # more metrics to pair, beside SECONDARY_METRICS
    greater_is_better: bool | None = None  # the direction of `metric`; None: by its name
    config_files: Mapping[str, str | None] | None = None

    def __post_init__(self) -> None:
        if self.baseline not in self.arm_names:
            raise CompareError(f"--baseline {self.baseline}: no such arm; arms: {', '.join(self.arm_names)}.")
        if self.greater_is_better is not None:
            if self.metric is None:
                raise CompareError(
                    f"{DIRECTION_FLAGS[self.greater_is_better]} says which way the metric named by --metric is "
                    "better; name it with --metric."
                )
            metric_direction(self.metric, self.greater_is_better)  # raises when the flag contradicts the name

    @classmethod
    def define(
        cls,
        command: Sequence[str],
        arms: Sequence[tuple[str, Sequence[str]]],
        baseline: str,
        seeds: Sequence[int],
        metric: str | None = None,
        also: Sequence[str] = (),
        greater_is_better: bool | None = None,
    ) -> Comparison:
        """A new comparison, its config files hashed as they are now."""
        arms = tuple((name, tuple(flags)) for name, flags in arms)
        comparison = cls(tuple(command), arms, baseline, tuple(seeds), metric, tuple(also), greater_is_better)
        return dataclasses.replace(comparison, config_files=comparison.config_files_now())

    def config_files_now(self) -> dict[str, str | None]:
        """The hashes of the config files the command and the arms name, as the files are now."""
        return hash_config_files([*self.command, *(flag for _, flags in self.arms for flag in flags)])

    @property
    def arm_names(self) -> list[str]:
        return [name for name, _ in self.arms]

    def argv(self, arm: str, seed: int) -> tuple[str, ...]:
        """The command of one run, without its --output_dir."""
        parts = (*self.command, *dict(self.arms)[arm])
        return (*(part.replace("{seed}", str(seed)) for part in parts), "--seed", str(seed))

    def jobs(self) -> list[Job]:
        """Seed by seed, every arm (paired runs side by side)."""
        return [
            Job(
                key=(arm, seed),
                arm=arm,
                label=f"{arm} seed {seed}",
                command=self.argv(arm, seed),
                flags=self.argv(arm, seed),
                folder=Path(arm) / f"seed{seed}",
                log=Path(arm) / f"seed{seed}.log",
                cost_kind=arm,
            )
            for seed in self.seeds
            for arm in self.arm_names
        ]

    def experiment(self) -> dict[str, Any]:
        """What defines the experiment, recorded in every row. Not in it: the seeds (more seeds extend an
        experiment), the baseline and the extra metrics (other readings of the same runs)."""
        return {
            "command": list(self.command),
            "arms": {name: list(flags) for name, flags in self.arms},
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "config_files": None if self.config_files is None else dict(self.config_files),
        }

    def report_settings(self) -> dict[str, Any]:
        """How the rows are reported unless --report-only says otherwise, also recorded in every row."""
        return {"baseline": self.baseline, "also": list(self.also)}

    @classmethod
    def from_rows(cls, rows: Sequence[dict], out: Path) -> Comparison:
        """The comparison the rows of `out` were made by (read_rows gives them), reported as their last run was,
        over the seeds they have. Raises CompareError without rows, or with rows of more than one experiment."""
        if not rows:
            raise CompareError(f"no finished runs in {out / RAW_FILE}: nothing to report.")
        experiments = distinct_experiments(rows)
        if len(experiments) > 1:
            shown = "\n".join(
                f"experiment {number}:\n{describe_experiment(e)}" for number, e in enumerate(experiments, 1)
            )
            raise CompareError(
                f"{out} holds the rows of {len(experiments)} experiments, which cannot be paired:\n{shown}\n"
                "Move the rows of all but one out of its raw.jsonl (into a folder of their own) to report them."
            )
        seeds = sorted({row["seed"] for row in rows})
        return cls.from_record(experiments[0], rows[-1]["report_settings"], seeds)

    @classmethod
    def from_record(
        cls, experiment: Mapping[str, Any], report_settings: Mapping[str, Any], seeds: Sequence[int]
    ) -> Comparison:
        """The comparison of a recorded experiment (Comparison.experiment) and report settings."""
        return cls(
            command=tuple(experiment["command"]),
            arms=tuple((name, tuple(flags)) for name, flags in experiment["arms"].items()),
            baseline=report_settings["baseline"],
            seeds=tuple(seeds),
            metric=experiment["metric"],
            also=tuple(report_settings["also"]),
            greater_is_better=experiment["greater_is_better"],
            config_files=experiment["config_files"],
        )


def distinct_experiments(rows: Sequence[dict]) -> list[dict]:
    """The experiments the rows record, each once, in the order they first appear."""
    experiments: list[dict] = []
    for row in rows:
        if row["experiment"] not in experiments:
            experiments.append(row["experiment"])
    return experiments


def read_rows(out: Path) -> list[dict]:
    """The rows of `out`, each with the experiment and report settings it was made with. Rows of an earlier
    spg-hf compare, which recorded neither, take them from the folder's comparison.json, but only when it describes
    them: every such row's command must be the one it gives for the row's arm and seed (a refused call of that
    version could overwrite it)."""
    rows = load_rows(out / RAW_FILE)
    unrecorded = [row for row in rows if "experiment" not in row]
    if not unrecorded:
        return rows
    saved_path = out / COMPARISON_FILE
    if not saved_path.is_file():
        raise CompareError(f"{out / RAW_FILE} has rows that do not say their experiment, and no {COMPARISON_FILE}.")
    saved = json.loads(saved_path.read_text())  # command, arms, metric, baseline, also and seeds
    comparison = Comparison.from_record(
        saved | {"greater_is_better": None, "config_files": None}, saved, saved["seeds"]
    )
    if not comparison.config_files_now():  # names no config file, so there was no content to record
        comparison = dataclasses.replace(comparison, config_files={})
    for row in unrecorded:
        if row["arm"] not in comparison.arm_names or row["flags"] != list(comparison.argv(row["arm"], row["seed"])):
            raise CompareError(
                f"{out / RAW_FILE}: {row['arm']} seed {row['seed']} ran `{shlex.join(row['flags'])}`, which is not "
                f"what {saved_path} describes; its rows cannot be told apart from another experiment's (another --out, "
                "or --force-new, starts this experiment afresh)."
            )
    recorded = {"experiment": comparison.experiment(), "report_settings": comparison.report_settings()}
    return [recorded | row for row in rows]


def describe_config_files(config_files: Mapping[str, str | None] | None) -> str:
    """`path (sha256 <first digits>)` for each, or why there are none."""
    if config_files is None:
        return "not recorded (rows of an earlier spg-hf compare)"
    if not config_files:
        return "none named"
    return ", ".join(
        f"{path} ({'not found' if digest is None else 'sha256 ' + digest[:HASH_DIGITS_SHOWN]})"
        for path, digest in config_files.items()
    )


def describe_experiment(experiment: Mapping[str, Any]) -> str:
    """An experiment's definition, one indented line per part, for the refusals."""
    arms = "; ".join(f"{name}={shlex.quote(shlex.join(flags))}" for name, flags in experiment["arms"].items())
    metric = experiment["metric"] or "(the metrics file's main metric)"
    if experiment["greater_is_better"] is not None:
        metric += f" {DIRECTION_FLAGS[experiment['greater_is_better']]}"
    return (
        f"  command: {shlex.join(experiment['command'])}\n  arms: {arms}\n  metric: {metric}\n"
        f"  config files: {describe_config_files(experiment['config_files'])}"
    )


def check_one_experiment(comparison: Comparison, rows: Sequence[dict], out: Path) -> None:
    """Raises CompareError, showing both definitions and the ways out, when `out` holds rows of an experiment other
    than `comparison`'s: pairing its runs with them would pool two experiments."""
    experiment = comparison.experiment()
    others = [other for other in distinct_experiments(rows) if other != experiment]
    if not others:
        return
    held = "\n".join(describe_experiment(other) for other in others)
    differing = sorted({part for other in others for part in experiment if other[part] != experiment[part]})
    raise CompareError(
        f"{out} holds the rows of another experiment ({len(rows)} runs); this command's runs cannot be paired "
        f"with them.\nin {out}:\n{held}\nthis command:\n{describe_experiment(experiment)}\n"
        f"They differ in: {', '.join(part.replace('_', ' ') for part in differing)}.\n"
        f"Give this experiment another --out, or add --force-new to move {out} aside to "
        f"{out}.moved-<date>-<time> (nothing is deleted) and start this one there."
    )


def move_aside(out: Path) -> Path | None:
    """Renames a non-empty results folder to <out>.moved-<date>-<time> (-2, -3... when taken), so a new experiment
    can start in `out` without deleting anything; returns the new name, None when there was nothing to move."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    out = out.resolve()  # "." has no name to add to
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = itertools.chain(
        [f"{out.name}.moved-{stamp}"], (f"{out.name}.moved-{stamp}-{n}" for n in itertools.count(2))
    )
    aside = next(out.with_name(name) for name in candidates if not out.with_name(name).exists())
    out.rename(aside)
    return aside
