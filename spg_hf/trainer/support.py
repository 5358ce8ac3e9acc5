"""Whether SPG supports a model, checked before training: its head family, the logits check and the loss check
(`check_spg_support`), and the objective whose loss is the model's (`resolve_objective`)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.trainer_utils import unwrap_peft_model
from transformers.utils import logging

from spg_hf.heads import AuxiliaryHead, HeadCheck, HeadFamily, head_family_for, named_head_family, verify_head
from spg_hf.heads.blocks import find_block_site
from spg_hf.objectives import OBJECTIVES, ScoredHead, losses_agree, spg_base_loss
from spg_hf.spg_config import SPGArguments

logger = logging.get_logger(__name__)


def resolve_objective(
    model: nn.Module,
    family: HeadFamily,
    check: HeadCheck,
    batch: dict[str, Any],
    tolerance: float,
    label_smoothing: float,
) -> str:
    """The objective whose loss, on the family's predictions and SPG's targets for `batch`, equals the loss Trainer
    computed for it (`check.loss`): the family's objectives are tried in order (`HeadFamily.objective_names`), each
    with the auxiliary head's term weighted as the model's loss weights it. A ValueError names the family, the
    objectives and every number where none does; without a loss to compare (no labels, or a model that returns
    none) the first objective, with an info log."""
    names = family.objective_names(model)
    if check.loss is None or not torch.isfinite(check.loss):
        logger.info(
            f"SPG: the first training example gives no loss to check {family.name}'s objective against (no labels, "
            f"all of them ignored, or a model that returns no loss); scoring it as {names[0]}."
        )
        return names[0]
    auxiliary_heads = []
    auxiliary = family.auxiliary_head(model)
    if auxiliary is not None:
        auxiliary_objective = OBJECTIVES[auxiliary.family.objective_names(model)[0]]
        targets = auxiliary_objective.targets(model, batch)
        auxiliary_heads.append(ScoredHead(auxiliary_objective, check.predictions[1], targets, auxiliary.weight))
    tried = []
    for name in names:
        objective = OBJECTIVES[name]
        targets = objective.targets(model, batch)
        if not objective.reads(targets):
            tried.append(f"{name}: cannot read these labels")
            continue
        heads = [ScoredHead(objective, check.predictions[0], targets), *auxiliary_heads]
        computed = spg_base_loss(heads, tolerance, label_smoothing)
        if losses_agree(computed, check.loss):
            return name
        tried.append(f"{name}: {computed.item():.6g}")
    raise ValueError(
        f"SPG does not support {type(model).__name__} with head family {family.name} ({family.rule}): on the first "
        f"training example the loss Trainer computes is {check.loss.item():.6g}, and SPG's objectives give "
        f"{'; '.join(tried)}"
        + (f" (with the auxiliary head's term weighted {auxiliary.weight})" if auxiliary is not None else "")
        + ". SPG would train the chain on another loss than the model's (other targets, positions or reduction). "
        "Set spg_enabled=False to train it as with Trainer, or name the head whose loss it is with spg_head."
    )


def check_spg_support(
    trained: nn.Module,
    args: SPGArguments,
    batch: dict[str, Any] | None = None,
    form: Callable[[HeadFamily], HeadFamily] | None = None,
    forward: Callable[[dict[str, Any]], tuple[torch.Tensor | None, Any]] | None = None,
    label_smoothing: float = 0.0,
) -> HeadFamily | None:
    """The shared-head family of the model Trainer trains (`trained`, a PeftModel included: the family is its task
    model's), in the form `spg_attach` asks for (and `form` gives it: the trainer's forward may reach the head another
    way), with its objective and the width of the state it reads. With a `batch` (one training example) both are
    checked on the model as it trains: the family's head reproduces the model's logits (`verify_head`), its
    objective the loss Trainer computes through `forward` (`resolve_objective`), and for the block form the last
    block and the way from it to the head are found and checked (`find_block_site`); without one (DeepSpeed's
    partitioned weights) the objective is the one the config says. A ValueError names what is unsupported. A head
    named with `spg_head` is read from that batch: without one it is None until training starts."""
    model = unwrap_peft_model(trained)
    if args.spg_head:
        if args.spg_attach == "pooled":
            raise ValueError(
                "spg_attach='pooled' is the reference code's attach point for HF heads; with spg_head "
                "the chain runs on the named module's input. Leave spg_attach at 'tokens'."
            )
        if batch is None:
            return None
        family = named_head_family(model, args.spg_head, batch)
        if args.spg_auxiliary_head:
            auxiliary = AuxiliaryHead(
                named_head_family(model, args.spg_auxiliary_head, batch, "spg_auxiliary_head"),
                args.spg_auxiliary_weight,
            )
            family = replace(family, auxiliary=lambda model: auxiliary)
    else:
        family = head_family_for(model)
        if args.spg_attach == "pooled":
            if not family.offers_pooled:
                raise ValueError(
                    f"spg_attach='pooled' needs a head that ends in a linear classifier on a pooled vector; "
                    f"{type(model).__name__}'s head ({family.name}: {family.rule}) does not. Use spg_attach='tokens'."
                )
            family = family.pooled_form()
        if form is not None:
            family = form(family)
    if batch is None:
        return replace(family, objective=family.objective_names(model)[0])
    check = verify_head(trained, family, batch, forward)
    objective = resolve_objective(model, family, check, batch, args.spg_regression_tolerance, label_smoothing)
    family = replace(family, objective=objective, feature_width=check.width)
    if args.spg_module == "block":
        site = find_block_site(trained, family, batch, forward, args.spg_block, args.spg_blocks_per_module)
        family = replace(family, block=site)
    return family


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restores the random states of Python, NumPy and torch's CPU generator on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
