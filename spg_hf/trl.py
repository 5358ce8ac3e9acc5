"""SPG for TRL's supervised fine-tuning: `SPGSFTTrainer` and `SPGSFTConfig` (`pip install spg-hf[trl]`).

Token-level SPG on the causal LM's head, for plain-text, prompt-completion (completion-only loss) and conversational
datasets, packed or padding-free batches included: a trajectory is a labelled next-token position, and none crosses
into the next packed sequence (`spg_hf.objectives.NextToken`). SFTTrainer's own loss and logged metrics (token
accuracy, entropy, token counts) stay as TRL computes them.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from typing import Any

from trl import SFTConfig, SFTTrainer

from spg_hf.heads import NAMED_HEAD, HeadFamily
from spg_hf.spg_config import SPGArguments
from spg_hf.trainer import SPGTrainerMixin


@dataclass
class SPGSFTConfig(SPGArguments, SFTConfig):
    """`SFTConfig` with the SPG settings (`spg_hf.spg_config.SPGArguments`)."""


class SPGSFTTrainer(SPGTrainerMixin, SFTTrainer):
    """`SFTTrainer` that trains with SPG when `args.spg_enabled`; it takes every argument `SFTTrainer` takes."""

    spg_arguments_class = SPGSFTConfig

    def _spg_family_form(self, family: HeadFamily) -> HeadFamily:
        # SFTTrainer trains through TRL's fused LM head, which projects the backbone's output with the head's weight
        # in tiles and never calls the head module: the chain runs on the backbone's output, as that head reads it.
        if family.task == "causal_lm" and family.name != NAMED_HEAD:
            return replace(family, capture=None)
        return family

    def _loss_and_outputs(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        # SFTTrainer records its metrics in every compute_loss: the construction check's call must leave none.
        # Its warning that return_outputs=True costs an extra forward is about training steps, not this one call.
        metrics = copy.deepcopy(self._metrics)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`return_outputs=True`", category=FutureWarning)
                return super()._loss_and_outputs(batch)
        finally:
            self._metrics = metrics
