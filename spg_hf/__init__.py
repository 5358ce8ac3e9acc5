"""Sequential Policy Gradient (SPG) fine-tuning for HuggingFace transformers' Trainer."""

from importlib.metadata import PackageNotFoundError, version

from spg_hf.cold_start import ColdStartCallback
from spg_hf.spg_config import SPGArguments, SPGSeq2SeqTrainingArguments, SPGTrainingArguments
from spg_hf.trainer import SPGSeq2SeqTrainer, SPGTrainer, SPGTrainerMixin

try:
    __version__ = version("spg-hf")  # the installed distribution's version, i.e. pyproject.toml's when installed
except PackageNotFoundError:  # imported from a source tree that was never pip-installed
    __version__ = "0+unknown"

__all__ = [
    "ColdStartCallback",
    "SPGArguments",
    "SPGSeq2SeqTrainer",
    "SPGSeq2SeqTrainingArguments",
    "SPGTrainer",
    "SPGTrainerMixin",
    "SPGTrainingArguments",
]
