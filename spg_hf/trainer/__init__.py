"""SPG inside `Trainer`: `SPGTrainer`, `SPGSeq2SeqTrainer` and the mixin that makes any Trainer subclass one.

The package: `overrides` (the Trainer overrides, delegating), `chain_run` (the chains inside the model's forward),
`support` (the construction-time logits and loss checks), `checkpoints` (resuming and saving with the chains),
`_compat` (every private Trainer internal and upstream workaround, each with why and when it can go).
"""

from transformers import Seq2SeqTrainer, Trainer

from spg_hf.spg_config import SPGSeq2SeqTrainingArguments
from spg_hf.trainer.chain_run import CHAIN_ATTRIBUTE, SPGChainRun
from spg_hf.trainer.checkpoints import SPG_WEIGHTS_NAME
from spg_hf.trainer.overrides import SPGTrainerMixin
from spg_hf.trainer.support import check_spg_support


class SPGTrainer(SPGTrainerMixin, Trainer):
    """`Trainer` that trains with SPG when `args.spg_enabled` (`SPGTrainerMixin` says how); it takes every argument
    `Trainer` takes."""


class SPGSeq2SeqTrainer(SPGTrainerMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` that trains with SPG when `args.spg_enabled`: token-level SPG on the decoder's LM head of
    encoder-decoder models (the `seq2seq_lm_head` family; tested on T5 and BART). Evaluation with
    `predict_with_generate` and `predict()` are Seq2SeqTrainer's own; `args` are `SPGSeq2SeqTrainingArguments`."""

    spg_arguments_class = SPGSeq2SeqTrainingArguments


__all__ = [
    "CHAIN_ATTRIBUTE",
    "SPG_WEIGHTS_NAME",
    "SPGChainRun",
    "SPGSeq2SeqTrainer",
    "SPGTrainer",
    "SPGTrainerMixin",
    "check_spg_support",
]
