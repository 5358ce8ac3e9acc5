"""The head family type: what a family says about a task model's head (task, when it applies, where its input is
captured, which positions it reads, the head as a function), and the hooks that capture a head's input."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel

from spg_hf.objectives import TASK_OBJECTIVES, configured_objective

if TYPE_CHECKING:
    from spg_hf.heads.blocks import BlockSite

HeadFn = Callable[[PreTrainedModel, torch.Tensor, dict[str, Any]], Any]

# Task classes by the suffix of their class name (searched along the class hierarchy, so subclasses keep their task).
TASK_SUFFIXES = {
    "ForSequenceClassification": "sequence_classification",
    "ForAudioClassification": "sequence_classification",
    "ForImageClassification": "sequence_classification",
    "ForMultipleChoice": "multiple_choice",
    "ForQuestionAnswering": "question_answering",
    "ForTokenClassification": "token_classification",
    "ForMaskedLM": "masked_lm",
    "ForCausalLM": "causal_lm",
    "LMHeadModel": "causal_lm",
    "ForConditionalGeneration": "seq2seq_lm",  # encoder-decoder models only (task_of)
    "ForSemanticSegmentation": "semantic_segmentation",  # every labelled pixel a trajectory
    "ForCTC": "ctc",  # speech recognition: one utterance per example, its state every frame
}
NAMED_HEAD = "spg_head"  # the family of a head named with SPGTrainingArguments.spg_head
AUXILIARY_HEAD = "auxiliary_head"  # the family of a model's auxiliary head (AuxiliaryHead)
# Tasks whose trajectories are positions (every labelled token), not examples.
TOKEN_LEVEL_TASKS = ("token_classification", "masked_lm", "causal_lm", "seq2seq_lm")

# Positions a head reads from the captured state [batch, length, width] (or [batch, width, ...] for "vector").
READS_FIRST = "first token"
READS_LAST = "last non-padding token"
READS_FINAL = "final position"  # the sequence's last position, padding or not (XLNet's summary)
READS_VECTOR = "pooled vector"
READS_ALL = "all positions"
READS_LABELLED = "labelled positions"
READS_FEATURE_MAP = "every feature-map position"  # a [batch, channels, h, w] state, the chain on its channels


@dataclass(frozen=True)
class HeadFamily:
    name: str
    task: str  # a value of TASK_SUFFIXES
    rule: str  # what the family's heads do, as the README's supported-models table states it
    matches: Callable[[PreTrainedModel], bool]
    # (model, state reduced to the positions read, model inputs) -> logits or (start, end) logits. Token-level heads
    # are position-wise: they map states of any leading shape ([positions, width] in training) to logits.
    head: HeadFn
    # One of READS_*, or where the model's config picks the pooling (XLNet's summary_type, EuroBERT's
    # classifier_pooling) a function of the model that gives it (`head_family_for` resolves it).
    reads: str | Callable[[PreTrainedModel], str]
    # Where the head's input is captured: the forward input of a module (its dotted path in the model, or a function
    # that finds it), or with None the first output of model.base_model.
    capture: str | Callable[[nn.Module], nn.Module] | None = None
    # The head ends in a linear `classifier` on a pooled vector: the reference code's "pooled" attach point.
    offers_pooled: bool = False
    # A head named with `spg_head` is the capture module itself: its output is the model's prediction, read where
    # it is computed, and its feature width and possible objectives were read from one example (`named_head_family`).
    prediction_at_capture: bool = False
    readings: tuple[str, ...] = ()
    # Set by the construction check (`check_spg_support`): the objective whose loss is the model's, and the width
    # of the state the head reads, as captured.
    objective: str | None = None
    feature_width: int | None = None
    classes: int | None = None
    # The model's second head, trained beside this one (`AuxiliaryHead`), found from the model; None: it has none.
    auxiliary: Callable[[nn.Module], AuxiliaryHead | None] | None = None
    # The block form's site (spg_module='block'), found by the construction check; None: the linear form.
    block: BlockSite | None = None

    def pooled_form(self) -> HeadFamily:
        """The reference code's form: the chain on the classifier's input, the classifier alone as shared head."""
        # Imported here: the head functions and module finders are built on this module's types.
        from spg_hf.heads.functions import pooled_classifier_head
        from spg_hf.heads.modules import pooled_classifier

        return replace(self, capture=pooled_classifier, reads=READS_VECTOR, head=pooled_classifier_head)

    def objective_names(self, model: nn.Module) -> tuple[str, ...]:
        """The objectives (`spg_hf.objectives.OBJECTIVES`) this family's predictions may be scored by, the one its
        config or output shape says first; the loss check picks the one whose loss is the model's."""
        if self.objective is not None:
            return (self.objective,)
        if self.readings:
            return self.readings
        configured = configured_objective(self.task, model.config)
        return (configured, *(name for name in TASK_OBJECTIVES[self.task] if name != configured))

    def auxiliary_head(self, model: nn.Module) -> AuxiliaryHead | None:
        return None if self.auxiliary is None else self.auxiliary(model)

    @property
    def token_level(self) -> bool:
        return self.task in TOKEN_LEVEL_TASKS

    def capture_module(self, model: nn.Module) -> nn.Module:
        if self.capture is None:
            return model.base_model
        if callable(self.capture):
            return self.capture(model)
        return model.get_submodule(self.capture)

    def register_capture(self, model: nn.Module, receive: Callable[[torch.Tensor], None]) -> Any:
        """Hooks `receive(state)` onto every call of the capture module with the state it captures; returns the
        hook's handle."""
        module = self.capture_module(model)
        if self.capture is None:
            return module.register_forward_hook(lambda module, args, output: receive(output[0]))
        if self.prediction_at_capture:
            return module.register_forward_hook(
                lambda module, args, kwargs, output: receive(first_input(args, kwargs), output), with_kwargs=True
            )
        return module.register_forward_pre_hook(
            lambda module, args, kwargs: receive(first_input(args, kwargs)), with_kwargs=True
        )

    def select(self, model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """The positions of the captured state the head reads, kept as a length-1 sequence where the head indexes
        a sequence itself (a state captured already pooled, [batch, width], stays as it is). Token-level heads read
        every position; training picks the labelled ones (their objective's targets, `spg_hf.objectives`)."""
        if self.reads == READS_FIRST:
            return state if state.dim() == 2 else state[:, :1]
        if self.reads == READS_LAST:
            rows = torch.arange(state.shape[0], device=state.device)
            return state[rows, last_non_padding_position(model, inputs, state.device)].unsqueeze(1)
        if self.reads == READS_FINAL:
            return state[:, -1:]
        if self.reads == READS_VECTOR:
            return state.flatten(1)
        if self.reads == READS_FEATURE_MAP:
            return state.movedim(1, -1)  # channels last: the chain's linear layers act per position
        return state

    def width(self, model: PreTrainedModel) -> int:
        """Feature width of the state the head reads: as captured by the construction check, or where it did not run
        (DeepSpeed) the in_features of the capturing module's first linear layer (the in_channels of a convolution,
        for a feature map), or the model's hidden size for the base model's output."""
        if self.feature_width is not None:
            return self.feature_width
        if self.capture is None:
            return model.config.get_text_config().hidden_size
        first = next(m for m in self.capture_module(model).modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        return first.in_channels if isinstance(first, nn.Conv2d) else first.in_features


@dataclass(frozen=True)
class AuxiliaryHead:
    """A head a model trains beside its main one, adding its loss with a weight (UperNet's, BEiT's and DPT's
    `auxiliary_head`, torchvision's `aux_classifier` in FCN and DeepLabV3). As in the authors' code, it gets a chain
    of its own: its survivors are those of its own predictions, and its module terms take the model's weight."""

    family: HeadFamily  # the head is the captured module itself (prediction_at_capture)
    weight: float


def first_input(args: tuple, kwargs: dict) -> Any:
    """A module call's first argument, positional or keyword."""
    return args[0] if args else next(iter(kwargs.values()))


def register_call_inputs(model: nn.Module, receive: Callable[[dict[str, Any]], None]) -> Any:
    """Hooks `receive(inputs)` onto every call of the task model with the inputs it is called with, by name: what
    its head reads (input_ids, attention_mask), which are not the batch's where an adapter changes them (PEFT's
    prompt learning prepends virtual tokens and hands the model inputs_embeds). Returns the hook's handle."""
    names = list(inspect.signature(model.forward).parameters)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        receive({**dict(zip(names, args, strict=False)), **kwargs})  # positional arguments by name

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def last_non_padding_position(model: PreTrainedModel, inputs: dict[str, Any], device: torch.device) -> Any:
    """The position decoder classifiers pool, as their forward picks it: the rightmost token that is not padding
    (left and right padding alike), or the last position when there is no pad token or no input_ids."""
    pad_token_id = model.config.get_text_config().pad_token_id
    input_ids = inputs.get("input_ids")
    if pad_token_id is None or input_ids is None:
        return -1
    not_padding = (input_ids != pad_token_id).to(device, torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=device, dtype=torch.int32)
    return (positions * not_padding).argmax(-1)
