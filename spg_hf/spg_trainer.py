"""`SPGTrainer`: `transformers.Trainer` that fine-tunes with Sequential Policy Gradient.

How it fits into Trainer (README "Inside Trainer" gives the reasons):
- The TRP chain is registered as a submodule of the model (`model.spg_chain`) when training starts, so the optimizer,
  device placement, zero_grad, clipping and DDP include it; hyperparameter-search trials can change its settings.
- It runs inside the model's forward: a hook on the module that feeds the head captures the hidden state (inside
  accelerate's autocast), runs the chain and the shared head, and a hook on the model returns the extra logits with
  the outputs, so DDP sees the chain's parameters used. Hooks act only in SPG training steps.
- Temporary weights are kept out of every `save_pretrained` folder; checkpoints carry them in
  `spg_modules.safetensors` so `resume_from_checkpoint` restores them and their optimizer state.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import inspect
import os
import random
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from transformers import PreTrainedModel, Seq2SeqTrainer, Trainer, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.loss.loss_utils import (
    ForCausalLMLoss,
    ForMaskedLMLoss,
    ForQuestionAnsweringLoss,
    ForSemanticSegmentationLoss,
    ForSequenceClassificationLoss,
    ForTokenClassification,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, unwrap_peft_model
from transformers.utils import logging

from spg_hf.checkpoints import checkpoint_defect, last_complete_checkpoint
from spg_hf.cold_start import ColdStartCallback
from spg_hf.heads import (
    AuxiliaryHead,
    HeadCheck,
    HeadFamily,
    head_family_for,
    named_head_family,
    register_call_inputs,
    verify_head,
)
from spg_hf.model_card import MODEL_CARD_TAG, add_spg_sections
from spg_hf.objectives import (
    IGNORE_INDEX,
    OBJECTIVES,
    Objective,
    ScoredHead,
    aligned,
    losses_agree,
    spg_base_loss,
)
from spg_hf.spg import ChainTerms, SPGLoss, TRPChain, positions_per_chunk, spg_loss, token_level_terms
from spg_hf.spg_config import (
    SPGArguments,
    SPGSeq2SeqTrainingArguments,
    SPGTrainingArguments,
    validate_spg_settings,
)

logger = logging.get_logger(__name__)

CHAIN_ATTRIBUTE = "spg_chain"
AUXILIARY_CHAIN_ATTRIBUTE = "spg_auxiliary_chain"
# Keys of the auxiliary chain in spg_modules.safetensors, beside the main chain's.
AUXILIARY_PREFIX = "auxiliary."
SPG_WEIGHTS_NAME = "spg_modules.safetensors"
# Below this share of positions reaching module 1, `survivors` normalisation gives each survivor more than 7 times
# (0.7 / 0.1) the weight the model's own loss gives a position; in docs/results.md that collapsed weak LMs.
LOW_TOKEN_SURVIVAL = 0.1
# A classifier whose module-1 survivors are (almost) all of one label predicts one class, and the module terms then
# add weight to that class alone. In docs/results.md ("When does SPG pay?") the GLUE runs that left this state had
# left it by two thirds of training at the latest (CoLA at 5e-5: survivors under 98 % one label from 58 % of training
# on), the runs that did not stayed in it to the end (CoLA at 2e-5: 100 % from step 40 of 804): warn from 3/4 on.
ONE_LABEL_SURVIVORS = 0.98
ONE_LABEL_FROM_PROGRESS = 0.75


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
    checked on the model as it trains: the family's head reproduces the model's logits (`verify_head`) and its
    objective the loss Trainer computes through `forward` (`resolve_objective`); without one (DeepSpeed's partitioned
    weights) the objective is the one the config says. A ValueError names what is unsupported. A head named with
    `spg_head` is read from that batch: without one it is None until training starts."""
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
    return replace(family, objective=objective, feature_width=check.width)


@dataclass(eq=False)
class HeadChain:
    """A temporary chain on one head: the model's main head, or its auxiliary head, whose terms take the weight the
    model's loss gives that head. Per step it holds what its capture hook computed."""

    family: HeadFamily
    objective: Objective
    chain: TRPChain
    weight: float
    attribute: str  # the model attribute that holds the chain
    state_prefix: str  # its keys' prefix in spg_modules.safetensors
    log_prefix: str  # its statistics' prefix in the logs: spg/{log_prefix}survival_t
    armed: bool = False
    targets: Any = None
    # The replicas' logits (example level) or the ChainTerms (token level) of this step; the head's own output where
    # the capture module is the head; a token-level capture that waits for the model's prediction.
    result: Any = None
    head_prediction: Any = None
    deferred: tuple[torch.Tensor, torch.autocast] | None = None
    survival_sum: torch.Tensor | float = 0.0
    module_loss_sum: torch.Tensor | float = 0.0


def chain_seed(seed: int, step: int, call: int, process: int) -> int:
    """The seed of the chain's random stream for one forward: a function of the run's seed, the optimizer step, the
    micro-batch within it and the process, so a resumed run draws what the uninterrupted one drew."""
    digest = hashlib.blake2b(f"{seed}/{step}/{call}/{process}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def chain_random_stream(seed: int, device: torch.device) -> Iterator[None]:
    """Runs the chain's random draws (its dropout, the head's own dropout on its states) on a stream of their own, so
    the model's random stream is exactly Trainer's: with zero weights SPG trains as Trainer, bit for bit."""
    accelerator = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else "cuda"):
        torch.random.default_generator.manual_seed(seed)
        if accelerator:
            device_module = torch.get_device_module(device.type)
            with device_module.device(device):
                device_module.manual_seed(seed)
        yield


@contextlib.contextmanager
def statistics_kept(norms: list[_NormBase], buffers: list[tuple[str, torch.Tensor]]) -> Iterator[None]:
    """A chain pass that leaves the model's buffers as they are, so its state moves only as Trainer's forward moves
    it: normalisation layers in training mode (BatchNorm in a head) normalise the chain's states by their own batch
    statistics, as in the model's forward, without updating their running statistics and batch count. Any other
    buffer a pass changes in place is a RuntimeError naming it."""
    tracking = [module for module in norms if module.training and module.track_running_stats]
    versions = [buffer._version for _, buffer in buffers]
    for module in tracking:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in tracking:
            module.track_running_stats = True
    changed = [name for (name, buffer), version in zip(buffers, versions, strict=True) if buffer._version != version]
    if changed:
        raise RuntimeError(
            f"SPG: a pass of the temporary chain through the shared head changed the model's buffers {changed} in "
            "place, which would make the trained model differ from Trainer's beyond its gradients. Set "
            "spg_enabled=False for this model."
        )


class SPGChainRun:
    """The chains attached to one model for one `train()` call: hooks, targets, and the statistics to log."""

    def __init__(
        self, trained: nn.Module, args: SPGArguments, family: HeadFamily, label_smoothing: float = 0.0
    ) -> None:
        # `trained` is the model Trainer trains (a PeftModel included): the chains join its parameters and its
        # output carries their results. `model` is the task model whose heads the families read.
        self.trained = trained
        self.model = model = unwrap_peft_model(trained)
        self.args = args
        self.family = family
        self.normalize = args.spg_normalize_for(family.token_level)
        # Trainer smooths the model's classification loss; the classification module terms take the same smoothing.
        self.label_smoothing = label_smoothing
        # The chain computes in the model's precision: bf16 weights get a bf16 chain, and autocast (bf16=True) casts
        # a float32 chain as it casts the model's own layers.
        reference = next(p for p in model.parameters() if p.is_floating_point())
        heads = [(family, 1.0, CHAIN_ATTRIBUTE, "", "")]
        auxiliary = family.auxiliary_head(model)
        if auxiliary is not None:
            heads.append(
                (auxiliary.family, auxiliary.weight, AUXILIARY_CHAIN_ATTRIBUTE, AUXILIARY_PREFIX, "auxiliary_")
            )
        self.heads: list[HeadChain] = []
        for head_family, weight, attribute, state_prefix, log_prefix in heads:
            chain = TRPChain(head_family.width(model), args.spg_dropout_rates, args.spg_activation)
            chain.to(device=reference.device, dtype=reference.dtype)
            trained.add_module(attribute, chain)
            objective = OBJECTIVES[head_family.objective or head_family.objective_names(model)[0]]
            self.heads.append(HeadChain(head_family, objective, chain, weight, attribute, state_prefix, log_prefix))
        self.main = self.heads[0]
        self.objective = self.main.objective
        self.buffers = list(model.named_buffers())
        self.norms = [module for module in model.modules() if isinstance(module, _NormBase)]

        # save_pretrained leaves these out of every folder, a user's own call included; a plain nn.Module's are
        # filtered by SPGTrainer._save.
        self.saved_ignore_keys = getattr(trained, "_keys_to_ignore_on_save", None)
        self.chain_keys = {f"{head.attribute}.{name}" for head in self.heads for name in head.chain.state_dict()}
        trained._keys_to_ignore_on_save = set(self.saved_ignore_keys or ()) | self.chain_keys

        self.seed = 0
        self.handed_pair = False
        self.positions_per_chunk: int | None = None
        self.call_inputs: dict[str, Any] = {}
        self.handles = [
            register_call_inputs(model, self._on_model_call),
            trained.register_forward_hook(self._on_model_output),
        ]
        for head in self.heads:
            self.handles.append(head.family.register_capture(model, functools.partial(self._on_capture, head)))
        self.reset_statistics()

    def smoothing(self, objective: Objective) -> float:
        """The label smoothing of an objective's module terms: Trainer's, where Trainer smooths that loss."""
        return self.label_smoothing if objective.smoothed else 0.0

    @property
    def auxiliary(self) -> HeadChain | None:
        return self.heads[1] if len(self.heads) > 1 else None

    def chain_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the chains: each chain's weights under its state prefix (none for the main
        chain, AUXILIARY_PREFIX for the auxiliary head's)."""
        return {head.state_prefix + name: t for head in self.heads for name, t in head.chain.state_dict().items()}

    def load_chain_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads `chain_state_dict`'s form; a ValueError where the checkpoint and this run disagree on having an
        auxiliary head (spg_auxiliary_head, or an HF model's `use_auxiliary_head`)."""
        saved_auxiliary = any(name.startswith(AUXILIARY_PREFIX) for name in state)
        if saved_auxiliary != (self.auxiliary is not None):
            saved, run = ("has", "has none") if saved_auxiliary else ("has none", "has one")
            raise ValueError(
                f"The checkpoint's SPG weights ({SPG_WEIGHTS_NAME}) {saved} for an auxiliary head, while this run "
                f"{run}: resume with the auxiliary head setting (spg_auxiliary_head, use_auxiliary_head) it was "
                "saved with."
            )
        for head in reversed(self.heads):  # the auxiliary chain's prefixed keys first, the rest are the main chain's
            own = {name: t for name, t in state.items() if name.startswith(head.state_prefix)}
            head.chain.load_state_dict({name.removeprefix(head.state_prefix): t for name, t in own.items()})
            state = {name: t for name, t in state.items() if name not in own}

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        for head in self.heads:
            delattr(self.trained, head.attribute)
        self.trained._keys_to_ignore_on_save = self.saved_ignore_keys

    # ---- running the chains inside the model's forward ----

    @contextlib.contextmanager
    def _chain_pass(self, device: torch.device) -> Iterator[None]:
        with chain_random_stream(self.seed, device), statistics_kept(self.norms, self.buffers):
            yield

    def _on_model_call(self, inputs: dict[str, Any]) -> None:
        if self.main.armed:
            self.call_inputs = inputs

    def _on_capture(self, head: HeadChain, captured: torch.Tensor, head_prediction: torch.Tensor | None = None) -> None:
        """Runs at a head's capture; `head_prediction` is the head's output where the capture module is the head
        itself (a head named with spg_head, an auxiliary head)."""
        if not head.armed:
            return
        # Disarm first: the shared head may contain the hooked module itself.
        head.armed = False
        head.head_prediction = head_prediction
        if head.objective.token_level and head_prediction is None:
            # Token-level chains run only where the model's own prediction was right: known after its head ran, in
            # the model-level hook, which runs after accelerate's autocast has closed: it reopens the autocast state
            # the head's input was computed in.
            device_type = captured.device.type
            autocast = torch.autocast(
                device_type,
                dtype=torch.get_autocast_dtype(device_type),
                enabled=torch.is_autocast_enabled(device_type),
            )
            head.deferred = (captured, autocast)
            return
        with self._chain_pass(captured.device):
            if head.objective.token_level:
                head.result = self._token_level_terms(head, captured, self._predicted_right(head, head_prediction))
            else:
                state = head.family.select(self.model, captured, self.call_inputs)
                replicas = head.chain(state)
                head.result = [head.family.head(self.model, replica, self.call_inputs) for replica in replicas]

    def _on_model_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        for head in self.heads:
            if head.deferred is not None:
                (captured, autocast), head.deferred = head.deferred, None
                with autocast, self._chain_pass(captured.device):
                    head.result = self._token_level_terms(head, captured, self._predicted_right(head, output))
        if self.main.result is None:
            return None
        # Returned with the outputs so that DDP sees the chains' parameters used in the forward; `armed_call` hands
        # the outputs on without them.
        results = [head.result for head in self.heads]
        for head in self.heads:
            head.result = None
        self.handed_pair = True
        return output, results

    def _predicted_right(self, head: HeadChain, output: Any) -> torch.Tensor:
        """Per position the model ran, whether its own prediction is the target: the argmax of its logits, or where
        it builds none (TRL's fused LM head) its `is_top1`, scored for the next token and so one position short."""
        if isinstance(output, torch.Tensor) or output.get("logits") is not None:
            logits = output if isinstance(output, torch.Tensor) else output["logits"]
            # argmax over every position: indexing the [positions, vocabulary] logits first would copy them.
            targets = aligned(head.targets, logits.shape[-2]).to(logits.device)
            return logits.detach().argmax(-1) == targets
        is_top1 = output["is_top1"].detach().bool()
        return F.pad(is_top1, (0, 1))

    def _token_level_terms(self, head: HeadChain, captured: torch.Tensor, predicted_right: torch.Tensor) -> ChainTerms:
        targets = aligned(head.targets, captured.shape[-2]).reshape(-1).to(captured.device)
        positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        targets = targets[positions]
        base_correct = predicted_right.reshape(-1).to(captured.device)[positions]
        states = captured.reshape(-1, captured.shape[-1])[positions]

        def shared_head(state: torch.Tensor) -> torch.Tensor:
            # Also run again in backward (activation checkpointing): the buffers are kept there too.
            with statistics_kept(self.norms, self.buffers):
                return head.family.head(self.model, state, self.call_inputs)

        if self.positions_per_chunk is None and len(states):
            with torch.no_grad():  # the head's output width, read once on one position
                self.positions_per_chunk = positions_per_chunk(shared_head(states[:1]).shape[-1])
        terms = token_level_terms(
            head.chain,
            shared_head,
            states,
            targets,
            base_correct,
            self.positions_per_chunk or 1,
            self.smoothing(head.objective),
        )
        return ChainTerms(base_correct, terms, weight=head.weight)

    @contextlib.contextmanager
    def armed_call(self, model: nn.Module, inputs: dict[str, Any], seed: int) -> Iterator[list]:
        """Arms the chains for the next call of `model` (the model as Trainer wrapped it: DDP, compiled, or itself),
        with their targets read from `inputs` now (Trainer pops the labels before the call for its label smoother
        and compute_loss_func) and `seed` for their random stream. That call returns the model's own outputs, as
        Trainer expects them; the chains' results go into the list this yields."""
        chain_results: list = []

        def hand_on_outputs(module: nn.Module, args: tuple, result: Any) -> Any:
            # Not a pair: the capture never fired (`terms` says so), or a later call of the same compute_loss (TRL's
            # no-grad call for its metrics).
            if not self.handed_pair:
                return None
            self.handed_pair = False
            outputs, results = result
            chain_results.append(results)
            return outputs

        for head in self.heads:
            head.targets = head.objective.targets(self.model, inputs)
            head.armed = True
        self.seed = seed
        handle = model.register_forward_hook(hand_on_outputs)
        try:
            yield chain_results
        finally:
            handle.remove()
            self.handed_pair, self.call_inputs = False, {}
            for head in self.heads:
                head.armed, head.deferred, head.result = False, None, None

    def terms(self, outputs: Any, chain_results: list) -> list[ChainTerms]:
        """Per chain, the correctness c_0 of its head's own predictions and every module's (CE_t, c_t), per
        trajectory, and which entries are trajectories."""
        if not chain_results:
            raise RuntimeError(
                f"The SPG chain did not run in the forward of {type(self.model).__name__}: its head family "
                f"{self.family.name} captures a module the forward did not call."
            )
        return [
            self._chain_terms(head, outputs, result) for head, result in zip(self.heads, chain_results[0], strict=True)
        ]

    def _chain_terms(self, head: HeadChain, outputs: Any, result: Any) -> ChainTerms:
        if result is None:
            raise RuntimeError(
                f"The SPG chain of {type(self.model).__name__}'s {head.log_prefix or 'main '}head did not run: its "
                f"forward did not call {head.family.rule}."
            )
        if head.objective.token_level:
            return result
        prediction = head.head_prediction if head.head_prediction is not None else head.objective.prediction(outputs)
        head.head_prediction = None
        objective, tolerance = head.objective, self.args.spg_regression_tolerance
        smoothing = self.smoothing(objective)
        _, base_correct = objective.terms(prediction, head.targets, tolerance)
        module_terms = [objective.terms(logits, head.targets, tolerance, smoothing) for logits in result]
        return ChainTerms(base_correct, module_terms, objective.trajectories(head.targets), head.weight)

    # ---- statistics for logging ----

    @property
    def counts_survivor_labels(self) -> bool:
        """Whether each example has one class label, so the labels of the module-1 survivors can be counted (a
        choice's index is no class)."""
        return self.objective.name == "classification" and self.family.task == "sequence_classification"

    @property
    def num_labels(self) -> int:
        return self.family.classes or self.model.config.num_labels

    def reset_statistics(self) -> None:
        for head in self.heads:
            head.survival_sum, head.module_loss_sum = 0.0, 0.0
        self.survivor_label_counts: torch.Tensor | int = 0
        self.recorded_batches = 0

    def record(self, result: SPGLoss, chains: list[ChainTerms]) -> None:
        for head, statistics in zip(self.heads, result.chains, strict=True):
            head.survival_sum = head.survival_sum + statistics.survival
            head.module_loss_sum = head.module_loss_sum + statistics.module_losses
        if self.counts_survivor_labels:
            # index_add_ rather than bincount of targets[base_correct]: masking and bincount wait for the GPU every
            # training step, to size their outputs.
            base_correct = chains[0].base_correct
            counts = torch.zeros(self.num_labels, dtype=torch.long, device=base_correct.device)
            # Ignored examples (-100) are never correct: clamped to a label, they add nothing.
            counts.index_add_(0, self.main.targets.to(base_correct.device).clamp(min=0), base_correct.long())
            self.survivor_label_counts = self.survivor_label_counts + counts
        self.recorded_batches += 1


def deepspeed_gathered(parameters: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    """ZeRO-3 partitioned parameters gathered whole on every process (a collective) for reading."""
    import deepspeed  # only under DeepSpeed, which is an optional dependency

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=None)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restores the random states of Python, NumPy and torch's CPU generator on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


# Trainer(args=None) trains into this folder.
DEFAULT_OUTPUT_DIR = "tmp_trainer"

# transformers losses that sum over the labelled items and divide by `num_items_in_batch` when they are given it.
ITEM_COUNT_LOSSES = (
    ForCausalLMLoss,
    ForMaskedLMLoss,
    ForTokenClassification,
    ForQuestionAnsweringLoss,
    ForSemanticSegmentationLoss,
)


def forward_passes_item_count_to_loss_function(model_class: type) -> bool:
    """Whether the class's forward calls `self.loss_function` with its `**kwargs` (where Trainer puts the count) or
    with `num_items_in_batch=`, read from its source; False when the source cannot be read."""
    forward = inspect.unwrap(model_class.forward)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(forward)))
    except (OSError, TypeError, SyntaxError):
        return False
    definition = next(node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    kwargs_name = definition.args.kwarg.arg if definition.args.kwarg else None
    for node in ast.walk(definition):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "loss_function":
            for keyword in node.keywords:
                if keyword.arg == "num_items_in_batch":
                    return True
                if keyword.arg is None and isinstance(keyword.value, ast.Name) and keyword.value.id == kwargs_name:
                    return True
    return False


def loss_divides_by_item_count(model: nn.Module) -> bool:
    """Whether the model's forward divides its loss by the `num_items_in_batch` Trainer passes it, rather than only
    accepting the argument in `**kwargs` (upstream issue #47688).

    A model with an `accepts_loss_kwargs` attribute is taken at its word, as Trainer takes it. Otherwise its forward
    must hand the count to `self.loss_function` (`forward_passes_item_count_to_loss_function`): a forward that
    builds its own loss module, as BertForSequenceClassification and BertForMaskedLM do, or calls `loss_function`
    without its `**kwargs`, as the decoder sequence classifiers (LlamaForSequenceClassification, ...) do, drops it.
    And the loss function must divide by the count: the causal LM, masked LM, token classification, QA and
    segmentation losses do; the sequence classification loss does for single-label classification only (its
    regression and multi-label branches take a plain mean; `problem_type=None` with several labels counts as
    single-label, as the loss decides for integer labels). Whatever this cannot see counts as not dividing: Trainer
    then trains it as it trains a model whose forward takes no `**kwargs`, which can average micro-batches unevenly
    but never inflates them.
    """
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    if not forward_passes_item_count_to_loss_function(type(model)):
        return False
    loss_function = model.loss_function
    if loss_function is ForSequenceClassificationLoss:
        problem_type = model.config.problem_type
        return problem_type == "single_label_classification" or (problem_type is None and model.config.num_labels > 1)
    return loss_function in ITEM_COUNT_LOSSES


def as_spg_arguments(args: TrainingArguments | None, arguments_class: type[SPGArguments]) -> SPGArguments:
    """`args` with the SPG settings: unchanged if they have them, converted to `arguments_class` from arguments
    without them (every field kept, SPG defaults added), or that class's defaults when there are none."""
    if args is None:
        logger.info(f"No `{arguments_class.__name__}` passed, using `output_dir={DEFAULT_OUTPUT_DIR}`.")
        return arguments_class(output_dir=DEFAULT_OUTPUT_DIR)
    if isinstance(args, SPGArguments):
        return args
    if isinstance(args, TrainingArguments):
        return arguments_class.from_training_arguments(args)
    raise TypeError(f"args must be a TrainingArguments or {arguments_class.__name__}, got {type(args).__name__}.")


class SPGTrainerMixin:
    """SPG for `Trainer` and any subclass of it: `class MyTrainer(SPGTrainerMixin, SomeTrainer)` with
    `spg_arguments_class` set to that trainer's arguments class with the SPG settings
    (`@dataclass class MyArguments(SPGArguments, SomeTrainingArguments)`). The mixin overrides `compute_loss` around
    the parent's own, so what the parent computes and logs (label smoothing, TRL's token accuracy, ...) stays.

    It takes every argument the parent takes. `args` may carry the SPG settings, lack them (converted, SPG defaults
    added) or be None (the defaults). With `spg_enabled=False` it is the parent trainer, except for models whose
    forward takes `num_items_in_batch` in `**kwargs` without dividing by it (`loss_divides_by_item_count`): Trainer
    would count their loss as scaled for gradient accumulation and inflate the update by the accumulation steps
    (upstream issue #47688), so they are trained as Trainer trains models without `**kwargs`: each micro-batch's
    mean, divided by the accumulation steps. Models that divide by the count keep Trainer's normalisation over the
    whole accumulated batch.

    A `PeftModel` trains with its adapter: the family is read from the adapted task model, the chain trains beside
    the adapter, and the saved folder is PEFT's adapter folder.
    """

    spg_arguments_class: type[SPGArguments] = SPGTrainingArguments

    USER_OPTIMIZER_ERROR = (
        "optimizers: SPG adds temporary parameters when training starts, so it needs the optimizer Trainer builds. "
        "Pass optimizer_cls_and_kwargs instead of optimizers=(optimizer, scheduler), or set spg_enabled=False."
    )

    def __init__(
        self, model: PreTrainedModel | nn.Module | None = None, args: TrainingArguments | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model=model, args=as_spg_arguments(args, self.spg_arguments_class), **kwargs)
        self._user_optimizer = kwargs.get("optimizers", (None, None))[0] is not None
        self._spg_run: SPGChainRun | None = None
        self._warned_low_survival = False
        self._warned_one_label = False
        self._update_steps_per_epoch: int | None = None
        self._chain_calls = (-1, 0)  # (optimizer step, compute_loss calls at that step): the chain's random stream
        # Trainer counts items, passes the count to the model and skips the division by the accumulation steps for
        # every model whose forward takes **kwargs; only a model that divides by the count may keep that.
        if self.model_accepts_loss_kwargs and not loss_divides_by_item_count(
            unwrap_peft_model(self.accelerator.unwrap_model(self.model))
        ):
            self.model_accepts_loss_kwargs = False
        self._resolved_head: tuple[tuple, HeadFamily] | None = None
        self._spg_settings_applied: dict[str, Any] = {}
        if self.args.spg_enabled:
            if self._user_optimizer:
                raise ValueError(self.USER_OPTIMIZER_ERROR)
            if self.model is not None:
                family = self._head_family()
                if family is not None:
                    self._check_spg_loss_settings(family.objective)

    def _head_family(self) -> HeadFamily | None:
        """The model's head family (`check_spg_support`), checked on the first training example against the model's
        logits and the loss this trainer computes, once per model and head setting. Without a training set it is
        checked when training starts, and under DeepSpeed not at all: ZeRO-3 weights are partitioned until DeepSpeed
        wraps the model. None: a head named with spg_head, which is read from that example, while there is none."""
        args = self.args
        key = (self.model, args.spg_head, args.spg_auxiliary_head, args.spg_auxiliary_weight, args.spg_attach)
        if self._resolved_head is not None and self._resolved_head[0] == key:
            return self._resolved_head[1]
        example = self.train_dataset is not None and not self.is_deepspeed_enabled
        family = check_spg_support(
            self.model,
            self.args,
            self._one_example_batch() if example else None,
            self._spg_family_form,
            self._loss_and_outputs,
            self._label_smoothing(),
        )
        if example:
            self._resolved_head = (key, family)
        return family

    def _loss_and_outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, Any]:
        """The loss and outputs the parent trainer computes for `batch` (the model's loss, compute_loss_func's or the
        label smoother's), for the construction check; loss None where it computes none."""
        if self.compute_loss_func is not None and "labels" not in batch:
            return None, self.model(**batch)  # a loss function that would be handed no labels
        try:
            loss, outputs = super().compute_loss(self.model, dict(batch), return_outputs=True)
        except ValueError as error:
            if "did not return a loss" not in str(error):  # Trainer's words for a batch without labels
                raise
            return None, self.model(**batch)
        return (loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None), outputs

    def _label_smoothing(self) -> float:
        """Trainer's label smoothing, which applies where no compute_loss_func replaces the model's loss."""
        return self.label_smoother.epsilon if self.label_smoother and self.compute_loss_func is None else 0.0

    def _spg_family_form(self, family: HeadFamily) -> HeadFamily:
        """The form of the model's head family this trainer's forward reaches; a trainer whose forward reaches the
        head another way (TRL's fused LM head) overrides it."""
        return family

    def _one_example_batch(self) -> dict[str, Any]:
        """The first training example as Trainer would feed it (unused columns removed, collated, on the model's
        device), leaving every random state as it was: collators may draw (MLM masking)."""
        dataset, collator = self.train_dataset, self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        indexable = hasattr(dataset, "__getitem__") and not isinstance(dataset, torch.utils.data.IterableDataset)
        example = dataset[0] if indexable else next(iter(dataset))
        with preserved_random_state():
            batch = collator([example])
        return send_to_device(batch, next(self.model.parameters()).device)

    def _check_spg_loss_settings(self, objective: str) -> None:
        """ValueErrors for loss settings SPG cannot honour. Where Trainer counts items it takes the loss as scaled
        for accumulation (see compute_loss)."""
        if self.args.spg_loss_normalization and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None):
            source = "compute_loss_func" if self.compute_loss_func is not None else type(self.model).__name__
            raise ValueError(
                "spg_loss_normalization multiplies a per-batch mean loss by exp(CE_0 - L), but the loss of "
                f"{source} is divided by the item count of the whole accumulated batch (num_items_in_batch). "
                "Set spg_loss_normalization=False."
            )
        if self.compute_loss_func is not None and objective == "question_answering":
            raise ValueError(
                "compute_loss_func: SPG computes the question-answering loss from start and end positions, with no "
                "labels to pass to it (and Trainer would take its loss as scaled for accumulation). Leave it unset "
                "or set spg_enabled=False."
            )

    # ---- attaching and detaching the chain ----

    def _hp_search_setup(self, trial: Any) -> None:
        # The last step of train() before resuming and building the optimizer: model_init has built the trial's
        # model and the trial's values are in self.args, so the chain is built from them here.
        super()._hp_search_setup(trial)
        if self.args.spg_enabled:
            validate_spg_settings(self.args)
            if self._user_optimizer:
                raise ValueError(self.USER_OPTIMIZER_ERROR)
            family = self._head_family()
            if family is None:
                raise ValueError(
                    f"spg_head={self.args.spg_head!r}: SPG reads what the named head predicts from one training "
                    "example before training, which DeepSpeed's partitioned weights cannot run."
                )
            self._spg_run = SPGChainRun(self.model, self.args, family, self._label_smoothing())
            self._spg_settings_applied = {"spg_normalize": self._spg_run.normalize}
            self._check_spg_loss_settings(self._spg_run.objective.name)
            # A second train() call would reuse the optimizer and DDP wrapper built around the previous, detached
            # chain; user optimizers are refused above, so both are Trainer's own and can be built afresh.
            self.optimizer = None
            self.model_wrapped = self.model
            logger.info(
                f"SPG: {len(self.args.spg_weights)} temporary modules (head family {self._spg_run.family.name}, "
                f"chain on the {self._spg_run.family.reads}, "
                + (
                    f"an auxiliary chain on {self._spg_run.auxiliary.family.rule} weighted "
                    f"{self._spg_run.auxiliary.weight}, "
                    if self._spg_run.auxiliary is not None
                    else ""
                )
                + f"{sum(p.numel() for h in self._spg_run.heads for p in h.chain.parameters()):,} parameters), "
                f"objective {self._spg_run.objective.name}, spg_normalize={self._spg_run.normalize!r}"
                + (" (the default for this task)" if self.args.spg_normalize is None else "")
                + "."
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        resume_from_checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._spg_run is not None:
                self._spg_run.detach()
                self._spg_run = None

    # ---- the loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        run = self._spg_run
        if run is None or not model.training:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        # Trainer counts the items of the accumulated batch only for a loss that divides by the count (the model's,
        # see loss_divides_by_item_count, or compute_loss_func's) and then takes the loss as scaled for accumulation.
        # The base term comes back divided by the count, and each SPG term, a mean over this micro-batch, is weighted
        # by the micro-batch's share of the items, so the accumulated loss is that of one large batch (exactly for
        # spg_normalize="batch"); both are multiplied by the processes that share the count. Without a count every
        # term is a micro-batch mean, which Trainer divides by the accumulation steps.
        weights = self.args.spg_weights
        if num_items_in_batch is not None:
            item_share = self._micro_batch_items(inputs) / num_items_in_batch
            if self.args.average_tokens_across_devices:
                item_share = item_share * self._processes_sharing_item_count()
            weights = [weight * item_share for weight in weights]
        # The base term is exactly Trainer's loss (label smoothing with its shift, compute_loss_func, ...).
        # Token-level terms come whole with the chain's result; asking for the outputs only when they are needed
        # spares trainers that recompute them for return_outputs (TRL's fused LM head) a forward.
        wants_outputs = return_outputs or not run.family.token_level
        with run.armed_call(model, inputs, self._next_chain_seed()) as chain_results:
            base_loss = super().compute_loss(
                model, inputs, return_outputs=wants_outputs, num_items_in_batch=num_items_in_batch
            )
            base_loss, outputs = base_loss if wants_outputs else (base_loss, None)
        chains = run.terms(outputs, chain_results)
        result = spg_loss(base_loss, chains, weights, run.normalize, self.args.spg_loss_normalization)
        run.record(result, chains)
        return (result.loss, outputs) if return_outputs else result.loss

    def _next_chain_seed(self) -> int:
        """The seed of this forward's chain stream (`chain_seed`): the micro-batches of one optimizer step count
        up from 0."""
        step, calls = self._chain_calls
        calls = calls + 1 if step == self.state.global_step else 0
        self._chain_calls = (self.state.global_step, calls)
        return chain_seed(self.args.seed, self.state.global_step, calls, self.args.process_index)

    def _micro_batch_items(self, inputs: dict[str, Any]) -> torch.Tensor:
        """This micro-batch's part of Trainer's item count: its labels that are not -100, taken after the shift
        for losses that shift them (causal LMs)."""
        if "shift_labels" in inputs:
            labels = inputs["shift_labels"]
        elif self._loss_shifts_labels:
            labels = inputs["labels"][..., 1:]
        else:
            labels = inputs["labels"]
        return labels.ne(-100).sum()

    def _processes_sharing_item_count(self) -> int:
        """With average_tokens_across_devices the item count is summed over the processes while data parallelism
        averages their gradients, so a loss divided by it is multiplied back by the number of data-parallel
        replicas (processes over tensor-parallel groups, or the GPUs of DataParallel), as Trainer does."""
        if self.args.n_gpu > 1:
            return self.args.n_gpu
        return self.accelerator.num_processes // self.get_tp_size()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        run = self._spg_run
        if run is not None and run.recorded_batches and "loss" in logs:
            # Every process logs training steps together, so this reduction is collective-safe.
            for head in run.heads:
                statistics = torch.stack([head.survival_sum, head.module_loss_sum]) / run.recorded_batches
                statistics = self.accelerator.reduce(statistics.to(self.args.device), reduction="mean").tolist()
                for t, (survival, module_loss) in enumerate(zip(*statistics, strict=True), start=1):
                    logs[f"spg/{head.log_prefix}survival_{t}"] = round(survival, 4)
                    logs[f"spg/{head.log_prefix}loss_{t}"] = round(module_loss, 4)
            if run.counts_survivor_labels:
                counts = self.accelerator.reduce(run.survivor_label_counts.to(self.args.device), reduction="sum")
                if counts.sum() > 0:
                    top_share = (counts.max() / counts.sum()).item()
                    logs["spg/survivors_in_top_label"] = round(top_share, 4)
                    self._warn_if_survivors_share_one_label(top_share, counts.argmax().item())
            run.reset_statistics()
            self._warn_if_few_tokens_survive(logs["spg/survival_1"])
        super().log(logs, start_time)

    def _warn_if_survivors_share_one_label(self, top_share: float, label: int) -> None:
        if (
            top_share >= ONE_LABEL_SURVIVORS
            and self.state.global_step >= ONE_LABEL_FROM_PROGRESS * self.state.max_steps
            and not self._warned_one_label
        ):
            self._warned_one_label = True
            config = getattr(self.model, "config", None)
            name = config.id2label.get(label, label) if config is not None else label
            logger.warning(
                f"SPG: at step {self.state.global_step} of {self.state.max_steps}, {top_share:.1%} of the examples "
                f"reaching module 1 have the label {name!r}: the model predicts one class, and the module terms add "
                "weight to that class alone, which holds it there. In our GLUE runs with HF's recipe (lr 2e-5, 3 "
                "epochs) SPG stayed in this state to the end on CoLA and RTE where plain fine-tuning left it; a larger "
                "learning rate (5e-5 on CoLA) or more epochs (5 at 5e-5 on RTE) let it learn (docs/results.md, 'When "
                "does SPG pay?')."
            )

    def _warn_if_few_tokens_survive(self, survival: float) -> None:
        if (
            self._spg_run.family.token_level
            and self._spg_run.normalize == "survivors"
            and survival < LOW_TOKEN_SURVIVAL
            and not self._warned_low_survival
        ):
            self._warned_low_survival = True
            logger.warning(
                f"SPG: only {survival:.1%} of the labelled positions reach module 1 (the model predicts few tokens "
                "right). With spg_normalize='survivors' the module terms put their whole weight on those few "
                "positions, which in our language-model runs made the model collapse onto frequent tokens "
                "(docs/results.md, token-level section); spg_normalize='batch' scales the terms by the survival "
                "instead."
            )

    # ---- checkpoints carry the temporary weights; saved models do not ----

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        chain_state = None
        if self._spg_run is not None:
            # Under ZeRO-3 the chain is partitioned like the model: every process gathers it, one writes it.
            chains = [parameter for head in self._spg_run.heads for parameter in head.chain.parameters()]
            gathered = deepspeed_gathered(chains) if is_deepspeed_zero3_enabled() else contextlib.nullcontext()
            with gathered:
                chain_state = {name: t.detach().cpu().clone() for name, t in self._spg_run.chain_state_dict().items()}
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._start_checkpoint(folder, chain_state)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Trainer saves a model that is not a PreTrainedModel as its whole state dict, which holds the chain while it
        # is attached: leave it out, as save_pretrained does for PreTrainedModels.
        if self._spg_run is not None and not isinstance(self._spg_run.model, PreTrainedModel):
            state_dict = self.model.state_dict() if state_dict is None else state_dict
            state_dict = {name: tensor for name, tensor in state_dict.items() if name not in self._spg_run.chain_keys}
        super()._save(output_dir, state_dict)

    def _start_checkpoint(self, folder: str, chain_state: dict[str, torch.Tensor] | None) -> None:
        # Trainer writes trainer_state.json last and deletes older checkpoints after it, so that file marks a complete
        # checkpoint (spg_hf.checkpoints): the SPG weights go in before Trainer starts, and the mark and SPG weights
        # that an interrupted earlier save of this step left behind go first, so that old and new files never pass
        # for one complete checkpoint.
        os.makedirs(folder, exist_ok=True)
        for name in (TRAINER_STATE_NAME, SPG_WEIGHTS_NAME):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
        if chain_state is not None:
            safetensors.torch.save_file(
                {name: tensor.contiguous() for name, tensor in chain_state.items()},
                os.path.join(folder, SPG_WEIGHTS_NAME),
            )

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """Trainer's `resume_from_checkpoint`, where True picks the newest *complete* checkpoint of output_dir (stock
        Trainer takes the newest folder, even one whose save was cut off) and a given folder must be complete."""
        if resume_from_checkpoint is True:
            checkpoint, skipped = last_complete_checkpoint(self.args.output_dir)
            if checkpoint is None:
                found = "; ".join(skipped) or "no checkpoint folders"
                # Trainer's wording first: scripts and tests match on it.
                raise ValueError(
                    f"No valid checkpoint found in output directory ({self.args.output_dir}): it has no complete "
                    f"checkpoint ({found}), and resume_from_checkpoint=True takes the newest complete one."
                )
            if skipped:
                logger.warning(f"Resuming from {checkpoint}, the newest complete checkpoint.")
            return checkpoint
        if isinstance(resume_from_checkpoint, str):
            defect = checkpoint_defect(resume_from_checkpoint)
            if defect is not None:
                # Trainer's wording first: scripts and tests match on it.
                raise ValueError(
                    f"Can't find a valid checkpoint at {resume_from_checkpoint}: {defect}. Pass an older checkpoint, "
                    "or resume_from_checkpoint=True for the newest complete one in output_dir."
                )
        if resume_from_checkpoint:
            self._check_checkpoint_mode(resume_from_checkpoint)
        return resume_from_checkpoint or None

    def _check_checkpoint_mode(self, checkpoint: str) -> None:
        """A ValueError before training where the checkpoint was saved in the other mode. The optimizer state covers
        the SPG modules exactly when the checkpoint has their weights, so a checkpoint only continues in the mode it
        was saved in; switching modes starts a new run from its weights. Checked here, before Trainer loads anything:
        under DeepSpeed, Trainer resumes through DeepSpeed's engine and never calls `_load_from_checkpoint`."""
        saved_by_spg = os.path.isfile(os.path.join(checkpoint, SPG_WEIGHTS_NAME))
        if self.args.spg_enabled and not saved_by_spg:
            raise ValueError(
                f"{checkpoint} was saved with spg_enabled=False: it has no {SPG_WEIGHTS_NAME}, which an SPG run "
                "writes before its checkpoint is complete, so its optimizer state has nothing for the SPG modules. "
                "Continue it with spg_enabled=False, or train with SPG from its weights in a new output_dir "
                f"(model_name_or_path={checkpoint})."
            )
        if not self.args.spg_enabled and saved_by_spg:
            raise ValueError(
                f"{checkpoint} was saved by an SPG run (it has {SPG_WEIGHTS_NAME}), so its optimizer state includes "
                "the SPG modules: continue it with spg_enabled=True and its spg_weights and spg_dropout, or train "
                "without SPG from its weights (which leave out the SPG modules) in a new output_dir "
                f"(model_name_or_path={checkpoint})."
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self._spg_run is not None:
            path = os.path.join(resume_from_checkpoint, SPG_WEIGHTS_NAME)
            self._spg_run.load_chain_state_dict(safetensors.torch.load_file(path, device="cpu"))

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        if self._spg_run is not None:
            load_result.missing_keys[:] = [k for k in load_result.missing_keys if k not in self._spg_run.chain_keys]
        super()._issue_warnings_after_load(load_result)

    # ---- optimizer cold start: the ColdStartCallback a plain Trainer takes, configured by the arguments ----

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]
        return values

    def cold_start(self) -> ColdStartCallback | None:
        """The cold start `cold_start_steps` / `cold_start_epochs` ask for, if any. Read when training starts, since
        a hyperparameter-search trial may set them."""
        if self.args.cold_start_steps > 0:
            return ColdStartCallback(steps=self.args.cold_start_steps)
        if self.args.cold_start_epochs > 0:
            return ColdStartCallback(epochs=self.args.cold_start_epochs)
        return None

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        cold_start = self.cold_start()
        if cold_start is not None:
            if any(isinstance(callback, ColdStartCallback) for callback in self.callback_handler.callbacks):
                raise ValueError(
                    "cold_start_steps / cold_start_epochs and a ColdStartCallback both ask for an optimizer cold "
                    "start; keep one of them."
                )
            cold_start.start(scheduler, self.args, num_training_steps, self._update_steps_per_epoch)
        return scheduler

    # ---- model card: after an SPG run it says so, where HF users look ----

    def create_model_card(self, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """Trainer's model card (README.md in output_dir, also written by `push_to_hub`). After an SPG run it carries
        the `spg` tag, names the method with a link to the paper, lists the SPG settings and gives a BibTeX citation.
        """
        if not self.args.spg_enabled:
            return super().create_model_card(tags=tags, **kwargs)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        if MODEL_CARD_TAG not in tags:
            tags.append(MODEL_CARD_TAG)
        super().create_model_card(tags=tags, **kwargs)
        if self.is_world_process_zero():
            card_path = Path(self.args.output_dir) / "README.md"
            card = add_spg_sections(card_path.read_text(encoding="utf-8"), self.args, self._spg_settings_applied)
            card_path.write_text(card, encoding="utf-8")


class SPGTrainer(SPGTrainerMixin, Trainer):
    """`Trainer` that trains with SPG when `args.spg_enabled` (`SPGTrainerMixin` says how); it takes every argument
    `Trainer` takes."""


class SPGSeq2SeqTrainer(SPGTrainerMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` that trains with SPG when `args.spg_enabled`: token-level SPG on the decoder's LM head of
    encoder-decoder models (T5, BART, mBART, Marian, Whisper, ...: the `seq2seq_lm_head` family). Evaluation with
    `predict_with_generate` and `predict()` are Seq2SeqTrainer's own; `args` are `SPGSeq2SeqTrainingArguments`."""

    spg_arguments_class = SPGSeq2SeqTrainingArguments
