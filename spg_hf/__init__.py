"""Sequential Policy Gradient (SPG) fine-tuning for HuggingFace transformers' Trainer."""

from spg_hf.cold_start import ColdStartCallback
from spg_hf.spg_config import SPGTrainingArguments
from spg_hf.spg_trainer import SPGTrainer

__all__ = ["ColdStartCallback", "SPGTrainer", "SPGTrainingArguments"]
