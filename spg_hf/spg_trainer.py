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
import inspect
import os
import random
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, Trainer, TrainingArguments
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
    IGNORE_INDEX,
    AuxiliaryHead,
    HeadFamily,
    ctc_targets,
    head_family_for,
    named_head_family,
    segmentation_targets,
    token_targets,
    verify_head,
)
from spg_hf.model_card import MODEL_CARD_TAG, add_spg_sections
from spg_hf.spg import (
    ChainTerms,
    SPGLoss,
    TRPChain,
    per_example_terms,
    positions_per_chunk,
    spg_loss,
    token_level_terms,
)
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


def spg_objective(model: nn.Module, family: HeadFamily) -> str:
    """'classification', 'regression', 'multi_label', 'question_answering' or 'ctc' for this model, as its own loss
    would decide (a model whose config leaves problem_type unset sets it in its first forward with labels)."""
    if family.objective is not None:
        return family.objective
    if family.task == "semantic_segmentation":
        return "segmentation"
    if family.task in ("question_answering", "ctc"):
        return family.task
    if family.token_level or family.task == "multiple_choice":
        return "classification"  # of every labelled position, or among the choices
    problem_type = model.config.problem_type
    if problem_type == "regression" or (problem_type is None and model.config.num_labels == 1):
        return "regression"
    if problem_type in (None, "single_label_classification"):
        return "classification"
    if problem_type == "multi_label_classification":
        return "multi_label"
    raise ValueError(f"SPG does not know problem_type={problem_type!r}.")


def check_spg_support(
    model: nn.Module,
    args: SPGArguments,
    batch: dict[str, Any] | None = None,
    form: Callable[[HeadFamily], HeadFamily] | None = None,
) -> HeadFamily | None:
    """The model's shared-head family in the form `spg_attach` asks for (and `form` gives it: the trainer's forward
    may reach the head another way), checked on the one-example `batch` where there is one (`verify_head`), or a
    ValueError naming what is unsupported. A head named with `spg_head` is read from that batch: without one it is
    None until training starts."""
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
        return family
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
    if batch is not None:
        verify_head(model, family, batch)
    spg_objective(model, family)
    return family


class SPGChainRun:
    """The chain attached to one model for one `train()` call: hooks, targets, and the statistics to log."""

    def __init__(
        self, trained: nn.Module, args: SPGArguments, family: HeadFamily, label_smoothing: float = 0.0
    ) -> None:
        # `trained` is the model Trainer trains (a PeftModel included): the chain joins its parameters and its
        # output carries the chain's result. `model` is the task model whose head the family reads.
        self.trained = trained
        self.model = model = unwrap_peft_model(trained)
        self.args = args
        self.family = family
        self.objective = spg_objective(model, family)
        self.normalize = args.spg_normalize_for(family.token_level)
        # Trainer smooths the model's classification loss; the classification module terms take the same smoothing.
        self.trainer_label_smoothing = label_smoothing
        self.label_smoothing = label_smoothing if self.objective == "classification" else 0.0
        # The chain computes in the model's precision: bf16 weights get a bf16 chain, and autocast (bf16=True) casts
        # a float32 chain as it casts the model's own layers.
        reference = next(p for p in model.parameters() if p.is_floating_point())
        self.chain = TRPChain(self.family.width(model), args.spg_dropout_rates, args.spg_activation)
        self.chain.to(device=reference.device, dtype=reference.dtype)
        trained.add_module(CHAIN_ATTRIBUTE, self.chain)
        self.auxiliary = family.auxiliary_head(model)
        self.auxiliary_chain: TRPChain | None = None
        if self.auxiliary is not None:
            self.auxiliary_objective = spg_objective(model, self.auxiliary.family)
            self.auxiliary_chain = TRPChain(
                self.auxiliary.family.width(model), args.spg_dropout_rates, args.spg_activation
            )
            self.auxiliary_chain.to(device=reference.device, dtype=reference.dtype)
            trained.add_module(AUXILIARY_CHAIN_ATTRIBUTE, self.auxiliary_chain)

        # save_pretrained leaves these out of every folder, a user's own call included; a plain nn.Module's are
        # filtered by SPGTrainer._save.
        self.saved_ignore_keys = getattr(trained, "_keys_to_ignore_on_save", None)
        self.chain_keys = {
            f"{attribute}.{name}" for attribute, chain in self.chains().items() for name in chain.state_dict()
        }
        trained._keys_to_ignore_on_save = set(self.saved_ignore_keys or ()) | self.chain_keys

        self.armed = False
        self.handed_pair = False
        self.positions_per_chunk: int | None = None
        self.inputs: dict[str, Any] = {}
        self.targets: Any = None
        self.captured: torch.Tensor | None = None
        self.captured_autocast: torch.autocast | None = None
        self.head_prediction: torch.Tensor | None = None
        self.chain_result: Any = None
        self.auxiliary_armed = False
        self.auxiliary_result: tuple[torch.Tensor, list] | None = None
        self.handles = [
            self.family.register_capture(model, self._run_chain),
            trained.register_forward_hook(self._on_model_output),
        ]
        if self.auxiliary is not None:
            self.handles.append(self.auxiliary.family.register_capture(model, self._run_auxiliary_chain))
        self.reset_statistics()

    def chains(self) -> dict[str, TRPChain]:
        """The temporary chains by the model attribute that holds them."""
        chains = {CHAIN_ATTRIBUTE: self.chain}
        if self.auxiliary_chain is not None:
            chains[AUXILIARY_CHAIN_ATTRIBUTE] = self.auxiliary_chain
        return chains

    def chain_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the chains: the main chain's weights as they are, the auxiliary chain's with
        AUXILIARY_PREFIX."""
        state = dict(self.chain.state_dict())
        if self.auxiliary_chain is not None:
            state.update({AUXILIARY_PREFIX + name: t for name, t in self.auxiliary_chain.state_dict().items()})
        return state

    def load_chain_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads `chain_state_dict`'s form; a ValueError where the checkpoint and this run disagree on having an
        auxiliary head (spg_auxiliary_head, or an HF model's `use_auxiliary_head`)."""
        auxiliary = {
            name.removeprefix(AUXILIARY_PREFIX): tensor
            for name, tensor in state.items()
            if name.startswith(AUXILIARY_PREFIX)
        }
        if bool(auxiliary) != (self.auxiliary_chain is not None):
            saved, run = ("has", "has none") if auxiliary else ("has none", "has one")
            raise ValueError(
                f"The checkpoint's SPG weights ({SPG_WEIGHTS_NAME}) {saved} for an auxiliary head, while this run "
                f"{run}: resume with the auxiliary head setting (spg_auxiliary_head, use_auxiliary_head) it was "
                "saved with."
            )
        self.chain.load_state_dict({name: t for name, t in state.items() if not name.startswith(AUXILIARY_PREFIX)})
        if self.auxiliary_chain is not None:
            self.auxiliary_chain.load_state_dict(auxiliary)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        for attribute in self.chains():
            delattr(self.trained, attribute)
        self.trained._keys_to_ignore_on_save = self.saved_ignore_keys

    # ---- running the chain inside the model's forward ----

    def _run_chain(self, captured: torch.Tensor, head_prediction: torch.Tensor | None = None) -> None:
        """Runs at the capture; `head_prediction` is the head's output where the capture module is the head itself
        (a head named with spg_head)."""
        if not self.armed:
            return
        # Disarm first: the shared head may contain the hooked module itself.
        self.armed = False
        self.head_prediction = head_prediction
        if self.family.token_level and head_prediction is not None:
            self.chain_result = self._token_level_terms(captured, self._predicted_right(head_prediction))
            return
        if self.family.token_level:
            # Token-level chains run only where the model's own prediction was right: known after its head ran, in
            # the model-level hook, which runs after accelerate's autocast has closed: it reopens the autocast state
            # the head's input was computed in.
            device_type = captured.device.type
            self.captured = captured
            self.captured_autocast = torch.autocast(
                device_type,
                dtype=torch.get_autocast_dtype(device_type),
                enabled=torch.is_autocast_enabled(device_type),
            )
            return
        state = self.family.select(self.model, captured, self.inputs)
        self.chain_result = [self.family.head(self.model, replica, self.inputs) for replica in self.chain(state)]

    def _run_auxiliary_chain(self, captured: torch.Tensor, prediction: torch.Tensor) -> None:
        """Runs at the auxiliary head: its own prediction and its chain's, through it."""
        if not self.auxiliary_armed:
            return
        self.auxiliary_armed = False
        family = self.auxiliary.family
        state = family.select(self.model, captured, self.inputs)
        replicas = [family.head(self.model, replica, self.inputs) for replica in self.auxiliary_chain(state)]
        self.auxiliary_result = (prediction, replicas)

    def _on_model_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self.captured is not None:
            captured, self.captured = self.captured, None
            with self.captured_autocast:
                self.chain_result = self._token_level_terms(captured, self._predicted_right(output))
        if self.chain_result is None:
            return None
        # Returned with the outputs so that DDP sees the chains' parameters used in the forward; `armed_call` hands
        # the outputs on without them.
        chain_result, self.chain_result = self.chain_result, None
        auxiliary_result, self.auxiliary_result = self.auxiliary_result, None
        self.handed_pair = True
        return output, (chain_result, auxiliary_result)

    def _predicted_right(self, output: Any) -> torch.Tensor:
        """Per position of the targets, whether the model's own prediction is the target: the argmax of its
        logits, or where it builds none (TRL's fused LM head) its `is_top1`, scored for the next token and so one
        position short of the unshifted length."""
        if isinstance(output, torch.Tensor) or output.get("logits") is not None:
            logits = output if isinstance(output, torch.Tensor) else output["logits"]
            # argmax over every position: indexing the [positions, vocabulary] logits first would copy them.
            return logits.detach().argmax(-1) == self.targets_over(logits.shape[-2]).to(logits.device)
        is_top1 = output["is_top1"].detach().bool()
        return F.pad(is_top1, (0, self.targets.shape[-1] - is_top1.shape[-1]))

    def targets_over(self, length: int) -> torch.Tensor:
        """The per-position targets over the `length` positions the model ran: positions it prepended (PEFT's
        prompt-learning virtual tokens) are no trajectories."""
        prepended = length - self.targets.shape[-1]
        return F.pad(self.targets, (prepended, 0), value=IGNORE_INDEX) if prepended > 0 else self.targets

    def _token_level_terms(self, captured: torch.Tensor, predicted_right: torch.Tensor) -> tuple[torch.Tensor, list]:
        targets = self.targets_over(captured.shape[-2]).reshape(-1).to(captured.device)
        positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        targets = targets[positions]
        base_correct = predicted_right.reshape(-1).to(captured.device)[positions]
        states = captured.reshape(-1, captured.shape[-1])[positions]

        def head(state: torch.Tensor) -> torch.Tensor:
            return self.family.head(self.model, state, self.inputs)

        if self.positions_per_chunk is None and len(states):
            with torch.no_grad():  # the head's output width, read once on one position
                self.positions_per_chunk = positions_per_chunk(head(states[:1]).shape[-1])
        terms = token_level_terms(
            self.chain, head, states, targets, base_correct, self.positions_per_chunk or 1, self.label_smoothing
        )
        return base_correct, terms

    @contextlib.contextmanager
    def armed_call(self, model: nn.Module, inputs: dict[str, Any], targets: Any) -> Iterator[list]:
        """Arms the chain for the next call of `model` (the model as Trainer wrapped it: DDP, compiled, or itself).
        That call returns the model's own outputs, as Trainer expects them; the chain's result goes into the list
        this yields."""
        chain_results: list = []

        def hand_on_outputs(module: nn.Module, args: tuple, result: Any) -> Any:
            # Not a pair: the capture never fired (`terms` says so), or a later call of the same compute_loss (TRL's
            # no-grad call for its metrics).
            if not self.handed_pair:
                return None
            self.handed_pair = False
            outputs, chain_result = result
            chain_results.append(chain_result)
            return outputs

        self.inputs, self.targets, self.armed = inputs, targets, True
        self.auxiliary_armed = self.auxiliary is not None
        handle = model.register_forward_hook(hand_on_outputs)
        try:
            yield chain_results
        finally:
            handle.remove()
            self.inputs, self.targets, self.armed, self.handed_pair = {}, None, False, False
            self.auxiliary_armed = False

    def terms(self, outputs: Any, targets: Any, chain_results: list) -> ChainTerms:
        """The correctness c_0 of the model's own predictions, every module's (CE_t, c_t), per example or, at the
        token level, per labelled position, and which examples are trajectories."""
        if not chain_results:
            raise RuntimeError(
                f"The SPG chain did not run in the forward of {type(self.model).__name__}: its head family "
                f"{self.family.name} captures a module the forward did not call."
            )
        chain_result = chain_results[0][0]
        if self.family.token_level:
            return ChainTerms(*chain_result)
        prediction, self.head_prediction = self.head_prediction, None
        if prediction is None:
            prediction = self.base_logits(outputs)
        return self._example_terms(self.objective, prediction, chain_result, targets)

    def auxiliary_terms(self, inputs: dict[str, Any], chain_results: list) -> tuple[ChainTerms, float] | None:
        """The auxiliary head's `ChainTerms` and the weight the model's loss gives it; None without one."""
        if self.auxiliary is None:
            return None
        if chain_results[0][1] is None:
            raise RuntimeError(
                f"The SPG chain of {type(self.model).__name__}'s auxiliary head did not run: its forward did not call "
                f"{self.auxiliary.family.rule}."
            )
        prediction, replicas = chain_results[0][1]
        targets = self.targets_for(self.auxiliary_objective, self.auxiliary.family, inputs)
        return self._example_terms(self.auxiliary_objective, prediction, replicas, targets), self.auxiliary.weight

    def _example_terms(self, objective: str, prediction: Any, replicas: list, targets: Any) -> ChainTerms:
        tolerance = self.args.spg_regression_tolerance
        smoothing = self.trainer_label_smoothing if objective == "classification" else 0.0
        _, base_correct = per_example_terms(objective, prediction, targets, tolerance)
        module_terms = [per_example_terms(objective, logits, targets, tolerance, smoothing) for logits in replicas]
        # An example labelled -100 is ignored by the model's loss, as by Trainer: it is no trajectory either.
        trajectories = targets != IGNORE_INDEX if objective == "classification" else None
        if objective == "segmentation":
            trajectories = targets.pixels()
        return ChainTerms(base_correct, module_terms, trajectories)

    # ---- loss pieces ----

    def targets_of(self, inputs: dict[str, Any]) -> Any:
        return self.targets_for(self.objective, self.family, inputs)

    def targets_for(self, objective: str, family: HeadFamily, inputs: dict[str, Any]) -> Any:
        if objective == "question_answering":
            return inputs["start_positions"], inputs["end_positions"]
        if objective == "ctc":
            return ctc_targets(self.model, inputs)
        if objective == "segmentation":
            return segmentation_targets(self.model, inputs)
        if family.token_level:
            return token_targets(family.task, inputs, inputs["labels"])
        return inputs["labels"]

    def base_logits(self, outputs: Any) -> Any:
        if self.objective == "question_answering":
            return outputs["start_logits"], outputs["end_logits"]
        return outputs["logits"]

    # ---- statistics for logging ----

    @property
    def counts_survivor_labels(self) -> bool:
        """Whether each example has one class label, so the labels of the module-1 survivors can be counted (a
        choice's index is no class)."""
        return self.objective == "classification" and self.family.task == "sequence_classification"

    @property
    def num_labels(self) -> int:
        return self.family.classes or self.model.config.num_labels

    def reset_statistics(self) -> None:
        self.survival_sum: torch.Tensor | float = 0.0
        self.module_loss_sum: torch.Tensor | float = 0.0
        self.auxiliary_survival_sum: torch.Tensor | float = 0.0
        self.auxiliary_module_loss_sum: torch.Tensor | float = 0.0
        self.survivor_label_counts: torch.Tensor | int = 0
        self.recorded_batches = 0

    def record(self, result: SPGLoss, targets: Any, base_correct: torch.Tensor) -> None:
        self.survival_sum = self.survival_sum + result.survival
        self.module_loss_sum = self.module_loss_sum + result.module_losses
        if result.auxiliary_survival is not None:
            self.auxiliary_survival_sum = self.auxiliary_survival_sum + result.auxiliary_survival
            self.auxiliary_module_loss_sum = self.auxiliary_module_loss_sum + result.auxiliary_module_losses
        if self.counts_survivor_labels:
            # index_add_ rather than bincount of targets[base_correct]: masking and bincount wait for the GPU every
            # training step, to size their outputs.
            counts = torch.zeros(self.num_labels, dtype=torch.long, device=base_correct.device)
            # Ignored examples (-100) are never correct: clamped to a label, they add nothing.
            counts.index_add_(0, targets.to(base_correct.device).clamp(min=0), base_correct.long())
            self.survivor_label_counts = self.survivor_label_counts + counts
        self.recorded_batches += 1


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
                    self._check_spg_loss_settings(spg_objective(unwrap_peft_model(self.model), family))

    def _head_family(self) -> HeadFamily | None:
        """The model's head family (`check_spg_support`), checked on the first training example, once per model and
        head setting. Without a training set it is checked when training starts, and under DeepSpeed not at all:
        ZeRO-3 weights are partitioned until DeepSpeed wraps the model. None: a head named with spg_head, which is
        read from that example, while there is none."""
        args = self.args
        key = (self.model, args.spg_head, args.spg_auxiliary_head, args.spg_auxiliary_weight, args.spg_attach)
        if self._resolved_head is not None and self._resolved_head[0] == key:
            return self._resolved_head[1]
        example = self.train_dataset is not None and not self.is_deepspeed_enabled
        family = check_spg_support(
            unwrap_peft_model(self.model),
            self.args,
            self._one_example_batch() if example else None,
            self._spg_family_form,
        )
        if example:
            self._resolved_head = (key, family)
        return family

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
            # Trainer's label smoother applies where no compute_loss_func replaces the model's loss.
            smoothing = self.label_smoother.epsilon if self.label_smoother and self.compute_loss_func is None else 0.0
            self._spg_run = SPGChainRun(self.model, self.args, family, smoothing)
            self._spg_settings_applied = {"spg_normalize": self._spg_run.normalize}
            self._check_spg_loss_settings(self._spg_run.objective)
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
                + f"{sum(p.numel() for c in self._spg_run.chains().values() for p in c.parameters()):,} parameters), "
                f"objective {self._spg_run.objective}, spg_normalize={self._spg_run.normalize!r}"
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

        targets = run.targets_of(inputs)
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
        with run.armed_call(model, inputs, targets) as chain_results:
            base_loss = super().compute_loss(
                model, inputs, return_outputs=wants_outputs, num_items_in_batch=num_items_in_batch
            )
            base_loss, outputs = base_loss if wants_outputs else (base_loss, None)
        chain = run.terms(outputs, targets, chain_results)
        result = spg_loss(
            base_loss,
            chain.base_correct,
            chain.module_terms,
            weights,
            run.normalize,
            self.args.spg_loss_normalization,
            chain.trajectories,
            run.auxiliary_terms(inputs, chain_results),
        )
        run.record(result, targets, chain.base_correct)
        return (result.loss, outputs) if return_outputs else result.loss

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
            sums = {"": (run.survival_sum, run.module_loss_sum)}
            if run.auxiliary is not None:
                sums["auxiliary_"] = (run.auxiliary_survival_sum, run.auxiliary_module_loss_sum)
            for prefix, (survival_sum, module_loss_sum) in sums.items():
                statistics = torch.stack([survival_sum, module_loss_sum]) / run.recorded_batches
                statistics = self.accelerator.reduce(statistics.to(self.args.device), reduction="mean").tolist()
                for t, (survival, module_loss) in enumerate(zip(*statistics, strict=True), start=1):
                    logs[f"spg/{prefix}survival_{t}"] = round(survival, 4)
                    logs[f"spg/{prefix}loss_{t}"] = round(module_loss, 4)
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
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._start_checkpoint(folder)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Trainer saves a model that is not a PreTrainedModel as its whole state dict, which holds the chain while it
        # is attached: leave it out, as save_pretrained does for PreTrainedModels.
        if self._spg_run is not None and not isinstance(self._spg_run.model, PreTrainedModel):
            state_dict = self.model.state_dict() if state_dict is None else state_dict
            state_dict = {name: tensor for name, tensor in state_dict.items() if name not in self._spg_run.chain_keys}
        super()._save(output_dir, state_dict)

    def _start_checkpoint(self, folder: str) -> None:
        # Trainer writes trainer_state.json last and deletes older checkpoints after it, so that file marks a complete
        # checkpoint (spg_hf.checkpoints): the SPG weights go in before Trainer starts, and the mark and SPG weights
        # that an interrupted earlier save of this step left behind go first, so that old and new files never pass
        # for one complete checkpoint.
        os.makedirs(folder, exist_ok=True)
        for name in (TRAINER_STATE_NAME, SPG_WEIGHTS_NAME):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
        if self._spg_run is not None:
            safetensors.torch.save_file(
                {name: tensor.contiguous() for name, tensor in self._spg_run.chain_state_dict().items()},
                os.path.join(folder, SPG_WEIGHTS_NAME),
            )

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """Trainer's `resume_from_checkpoint`, where True picks the newest *complete* checkpoint of output_dir (stock
        Trainer takes the newest folder, even one whose save was cut off) and a given folder must be complete."""
        if resume_from_checkpoint is True:
            checkpoint, skipped = last_complete_checkpoint(self.args.output_dir)
            if checkpoint is None:
                found = "; ".join(skipped) or "no checkpoint folders"
                raise ValueError(
                    f"resume_from_checkpoint=True: output_dir {self.args.output_dir} has no complete checkpoint "
                    f"({found})."
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
        return resume_from_checkpoint or None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, SPG_WEIGHTS_NAME)
        saved_by_spg = os.path.isfile(path)
        # The optimizer state covers the SPG modules exactly when the checkpoint has their weights, so a checkpoint
        # only continues in the mode it was saved in; switching modes starts a new run from its weights.
        if self._spg_run is not None and not saved_by_spg:
            raise ValueError(
                f"{resume_from_checkpoint} was saved with spg_enabled=False: it has no {SPG_WEIGHTS_NAME}, which an "
                "SPG run writes before its checkpoint is complete, so its optimizer state has nothing for the SPG "
                "modules. Continue it with spg_enabled=False, or train with SPG from its weights in a new "
                f"output_dir (model_name_or_path={resume_from_checkpoint})."
            )
        if self._spg_run is None and saved_by_spg:
            raise ValueError(
                f"{resume_from_checkpoint} was saved by an SPG run (it has {SPG_WEIGHTS_NAME}), so its optimizer "
                "state includes the SPG modules: continue it with spg_enabled=True and its spg_weights and "
                "spg_dropout, or train without SPG from its weights (which leave out the SPG modules) in a new "
                f"output_dir (model_name_or_path={resume_from_checkpoint})."
            )
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self._spg_run is not None:
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
