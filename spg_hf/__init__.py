"""Sequential Policy Gradient (SPG) fine-tuning for HuggingFace transformers' Trainer."""

from importlib.metadata import PackageNotFoundError, version

from spg_hf.cold_start import ColdStartCallback
from spg_hf.spg_config import SPGTrainingArguments
from spg_hf.spg_trainer import SPGTrainer

try:
    __version__ = version("spg-hf")  # the installed distribution's version, i.e. pyproject.toml's when installed
except PackageNotFoundError:  # imported from a source tree that was never pip-installed
    __version__ = "0+unknown"

__all__ = ["ColdStartCallback", "SPGTrainer", "SPGTrainingArguments"]
