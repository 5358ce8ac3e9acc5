"""What a sweep is: tasks, SPG variants, arms (a variant with its own recipe), comparisons, and the ordered runs.

An arm is one way of training: an SPG variant plus epochs, learning rate and training-set size (each may differ per
task, as the paper's recipes do). A comparison pairs arms by seed: each pair is a treatment arm and the baseline
arm it is measured against. A sweep file without arms is the older form: every variant is an arm of the same
recipe, and the one comparison pairs each with plain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = "plain"

# The first metric of each task is its main metric: paired differences and the plots use it.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("eval_matthews_correlation",),
    "rte": ("eval_accuracy",),
    "mrpc": ("eval_f1", "eval_accuracy"),
    "stsb": ("eval_pearson", "eval_spearmanr"),
    "sst2": ("eval_accuracy",),
    "qnli": ("eval_accuracy",),
    "qqp": ("eval_f1", "eval_accuracy"),
    "mnli": ("eval_accuracy",),
    "wnli": ("eval_accuracy",),
}
TASK_TITLES = {
    "cola": "CoLA",
    "rte": "RTE",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "sst2": "SST-2",
    "qnli": "QNLI",
    "qqp": "QQP",
    "mnli": "MNLI",
    "wnli": "WNLI",
}
METRIC_NAMES = {
    "eval_matthews_correlation": "MCC",
    "eval_accuracy": "accuracy",
    "eval_f1": "F1",
    "eval_pearson": "Pearson",
    "eval_spearmanr": "Spearman",
}

# `spg` is the paper's form with every setting a variant changes spelled out, so results do not move when library
# defaults change (spg_activation's did, from none to relu); each other variant differs from it in one setting.
_SPG = {"spg_enabled": "true", "spg_attach": "tokens", "spg_activation": "none", "spg_normalize": "survivors"}
VARIANTS: dict[str, dict[str, str]] = {
    BASELINE: {"spg_enabled": "false"},
    "spg": _SPG,
    "pooled": _SPG | {"spg_attach": "pooled"},
    "relu": _SPG | {"spg_activation": "relu"},
    "batch": _SPG | {"spg_normalize": "batch"},
}
# Without --variants the harness answers "does SPG as the library ships it help on my task": `relu` has the
# library's defaults (tests/test_quality_harness.py checks that it still does).
DEFAULT_VARIANTS = [BASELINE, "relu"]


def describe_variant(name: str) -> str:
    settings = VARIANTS[name]
    if settings["spg_enabled"] == "false":
        return "fine-tuning without SPG"
    return "SPG " + "/".join(settings[key] for key in ("spg_attach", "spg_activation", "spg_normalize"))


@dataclass(frozen=True)
class Run:
    """One training run: an arm's recipe resolved for one task and seed."""

    task: str
    arm: str
    seed: int
    variant: str
    lr: float
    epochs: float
    train_samples: int | None = None  # None: the whole training set
    extra: tuple[str, ...] = ()  # the arm's own run_glue_spg.py flags, after the sweep's

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.arm, self.seed)

    @property
    def folder(self) -> Path:
        """Output folder relative to the results folder."""
        return Path(self.task) / self.arm / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.task} {self.arm} seed {self.seed}"


def row_arm(row: Mapping[str, Any]) -> str:
    """The arm of a raw row; rows written before arms existed name only their variant, which was their arm."""
    return row.get("arm", row["variant"])


@dataclass(frozen=True)
class Settings:
    """What every run of a sweep shares; `script_flags` turns it and a run into run_glue_spg.py flags."""

    model: str | None
    data_dir: str | None
    batch_size: int
    max_seq_length: int
    logging_steps: int
    extra: tuple[str, ...]

    def script_flags(self, run: Run) -> list[str]:
        """Every flag of the run except --output_dir: two runs with equal flags are the same experiment. A run of
        the whole training set without flags of its own gets exactly the flags of the older, single-recipe harness,
        so its rows can be taken over."""
        flags = ["--task_name", run.task]
        if self.model is not None:
            flags += ["--model_name_or_path", self.model]
        if self.data_dir is not None:
            flags += ["--data_dir", self.data_dir]
        flags += [
            "--do_train", "true",
            "--do_eval", "true",
            "--max_seq_length", str(self.max_seq_length),
            "--per_device_train_batch_size", str(self.batch_size),
            "--learning_rate", str(run.lr),
            "--num_train_epochs", str(run.epochs),
            "--seed", str(run.seed),
            "--logging_steps", str(self.logging_steps),
            # Only metrics and logs are kept; checkpoints would fill the results folder.
            "--save_strategy", "no",
            # The harness owns the folder (run.log is written there first); a retried run starts it afresh.
            "--overwrite_output_dir", "true",
            "--report_to", "none",
            "--disable_tqdm", "true",
        ]  # fmt: skip
        for name, value in VARIANTS[run.variant].items():
            flags += [f"--{name}", value]
        flags += list(self.extra)
        if run.train_samples is not None:
            # The run's seed draws its subset: paired arms train on the same examples, each seed on other ones.
            flags += ["--max_train_samples", str(run.train_samples), "--train_subset_seed", str(run.seed)]
        return flags + list(run.extra)


@dataclass(frozen=True)
class Comparison:
    """Named pairs (treatment arm, baseline arm); `x` names the recipe setting its arms vary, for its plot."""

    name: str
    title: str
    pairs: tuple[tuple[str, str], ...]
    x: str | None = None

    @property
    def arms(self) -> list[str]:
        """Every arm of the comparison, in the order the pairs first name them (baselines first)."""
        return list(dict.fromkeys(arm for treatment, baseline in self.pairs for arm in (baseline, treatment)))


# A comparison's plot can put one of these recipe settings on its x axis.
PLOT_AXES = ("train_samples", "epochs", "lr")


class PlanError(ValueError):
    """A sweep file or option that does not describe a valid plan; the message names the key."""


def legacy_arms(variants: Sequence[str], lr: float, epochs: float) -> dict[str, dict[str, Any]]:
    """The older form: every variant is an arm of the same recipe, named after the variant."""
    return {variant: {"variant": variant, "lr": lr, "epochs": epochs} for variant in variants}


def legacy_comparison(arms: Sequence[str], baseline: str = BASELINE) -> Comparison:
    """The older form's one comparison: every arm against `baseline`; its report keeps the older layout."""
    return Comparison("", "", tuple((arm, baseline) for arm in arms if arm != baseline))


def parse_arms(config: Mapping[str, Any], default_lr: float, default_epochs: float) -> dict[str, dict[str, Any]]:
    """Checks each arm of a sweep file: a known variant; lr, epochs and train_samples each a number or a
    {task: number} mapping. Missing lr/epochs take the sweep's."""
    arms = {}
    for name, arm in config.items():
        if not isinstance(arm, Mapping):
            raise PlanError(f"arms.{name}: expected a mapping with variant, lr, epochs, train_samples, extra.")
        unknown = sorted(set(arm) - {"variant", "lr", "epochs", "train_samples", "extra"})
        if unknown:
            raise PlanError(f"arms.{name}: unknown keys {unknown}.")
        variant = arm.get("variant")
        if variant not in VARIANTS:
            raise PlanError(f"arms.{name}.variant: {variant!r} is not one of {', '.join(VARIANTS)}.")
        arms[name] = {
            "variant": variant,
            "lr": arm.get("lr", default_lr),
            "epochs": arm.get("epochs", default_epochs),
            "train_samples": arm.get("train_samples"),
            "extra": tuple(str(flag) for flag in arm.get("extra", ())),
        }
    return arms


def parse_comparisons(config: Mapping[str, Any], arms: Mapping[str, Any]) -> list[Comparison]:
    """Each comparison is {title, baseline, arms} (every arm against the baseline) or {title, pairs: [[treatment,
    baseline], ...]}, with an optional plot axis x."""
    comparisons = []
    for name, spec in config.items():
        if not isinstance(spec, Mapping):
            raise PlanError(f"comparisons.{name}: expected a mapping.")
        unknown = sorted(set(spec) - {"title", "baseline", "arms", "pairs", "x"})
        if unknown:
            raise PlanError(f"comparisons.{name}: unknown keys {unknown}.")
        if "pairs" in spec:
            pairs = tuple((str(pair[0]), str(pair[1])) for pair in spec["pairs"] if len(pair) == 2)
            if len(pairs) != len(spec["pairs"]):
                raise PlanError(f"comparisons.{name}.pairs: each pair is [treatment, baseline].")
        elif "baseline" in spec and "arms" in spec:
            pairs = tuple((arm, spec["baseline"]) for arm in spec["arms"] if arm != spec["baseline"])
        else:
            raise PlanError(f"comparisons.{name}: give 'pairs', or 'baseline' and 'arms'.")
        unknown_arms = sorted({arm for pair in pairs for arm in pair} - set(arms))
        if unknown_arms:
            raise PlanError(f"comparisons.{name}: unknown arms {unknown_arms}; known: {', '.join(arms)}.")
        treatments = [treatment for treatment, _ in pairs]
        if len(set(treatments)) != len(treatments):
            raise PlanError(f"comparisons.{name}: an arm is paired with two baselines; split the comparison.")
        if spec.get("x") is not None and spec["x"] not in PLOT_AXES:
            raise PlanError(f"comparisons.{name}.x: {spec['x']!r} is not one of {', '.join(PLOT_AXES)}.")
        comparisons.append(Comparison(name, str(spec.get("title", name)), pairs, spec.get("x")))
    return comparisons


def _per_task(arm_name: str, key: str, value: Any, task: str) -> Any:
    """The arm's value for `task`, kept as written (the flag of 3 epochs stays "3", as in older rows)."""
    if isinstance(value, Mapping):
        if task not in value:
            raise PlanError(f"arms.{arm_name}.{key}: no value for task {task} (it has {', '.join(value)}).")
        value = value[task]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
        raise PlanError(f"arms.{arm_name}.{key}: expected a positive number for task {task}, got {value!r}.")
    return value


def plan_runs(stages: Sequence[Mapping[str, Any]], arms: Mapping[str, Mapping[str, Any]]) -> list[Run]:
    """Runs in order: stage by stage, then task, seed, arm (paired runs next to each other); no duplicates."""
    runs = []
    for number, stage in enumerate(stages, start=1):
        for name in stage["arms"]:
            if name not in arms:
                raise PlanError(f"stage {number}: unknown arm {name!r}; known: {', '.join(arms)}.")
        for task in stage["tasks"]:
            for seed in stage["seeds"]:
                for name in stage["arms"]:
                    arm = arms[name]
                    samples = _per_task(name, "train_samples", arm.get("train_samples"), task)
                    runs.append(
                        Run(
                            task=task,
                            arm=name,
                            seed=seed,
                            variant=arm["variant"],
                            lr=_per_task(name, "lr", arm["lr"], task),
                            epochs=_per_task(name, "epochs", arm["epochs"], task),
                            train_samples=samples,
                            extra=tuple(arm.get("extra", ())),
                        )
                    )
    return list(dict.fromkeys(runs))
