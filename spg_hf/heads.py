"""Shared heads by family: what a task model applies to its final hidden state, resolved from how its head is built.

SPG sends the temporary chain's states through the model's own head (shared, not copied). Models that build their
head the same way form a family, so a new model of a known family needs no code: XLM-R and CamemBERT are RoBERTa's
family, Qwen2 and Mistral Llama's. A family says
- the task, from the task class (`...ForSequenceClassification`, `...ForQuestionAnswering`, ...; where the name
  says none, its forward or the transformers task mapping that lists it: `task_of`);
- when it applies, from the head's modules (a pooler in the base model, a `score` layer, `qa_outputs`, ...);
- where the head's input is captured: the base model's first output, or the input of one head module;
- which positions the head reads: the first token, the last non-padding token, a pooled vector, all positions, or
  (token-level tasks) every labelled position. The chain runs on those positions only, so a first-token head costs
  one position per example, not the sequence;
- the head as a function of the captured (and reduced) state.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import unwrap_peft_model

from spg_hf.objectives import IGNORE_INDEX, TASK_OBJECTIVES, Logits, configured_objective

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

    def pooled_form(self) -> HeadFamily:
        """The reference code's form: the chain on the classifier's input, the classifier alone as shared head."""
        return replace(self, capture=pooled_classifier, reads=READS_VECTOR, head=_pooled_classifier_head)

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
        every position; training picks the labelled ones (`token_targets`)."""
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


# ---------------------------------------------------------------- heads


def _split_span_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    start_logits, end_logits = logits.split(1, dim=-1)
    return start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()


def _span_head(layer: str) -> HeadFn:
    def head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return _split_span_logits(getattr(model, layer)(state))

    return head


def _question_masked_span_head(
    model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """BigBird's QA head: `qa_classifier`, then the question's tokens (up to the first separator, or the
    `question_lengths` input) taken out of the competition with the model's own mask, as its forward does."""
    logits = model.qa_classifier(state)
    question_lengths = inputs.get("question_lengths")
    if question_lengths is None and inputs.get("input_ids") is not None:
        question_lengths = (inputs["input_ids"].eq(model.sep_token_id).int().argmax(dim=-1) + 1).unsqueeze(1)
    if question_lengths is not None:
        question_mask = model.prepare_question_mask(question_lengths, logits.shape[1])
        question_mask[:, 0] = 0
        logits = logits - question_mask.unsqueeze(2) * 1e6
    return _split_span_logits(logits)


def _base_pooler_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(model.base_model.pooler(state)))


def _base_linear_pooler_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    base = model.base_model
    return model.classifier(model.dropout(base.pooler_activation(base.pooler(state[:, 0]))))


def _own_pooler_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(model.pooler(state)))


def _pre_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(state[:, 0]))))


def _masked_mean(values: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The mean over the positions the attention mask keeps (all of them without a mask), as encoders pool."""
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        return values.mean(dim=1)
    attention_mask = attention_mask.to(values.device).unsqueeze(-1)
    return (values * attention_mask).sum(dim=1) / attention_mask.sum(dim=1)


def _prediction_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    pooled = state[:, 0] if model.config.classifier_pooling == "cls" else _masked_mean(state, inputs)
    return model.classifier(model.drop(model.head(pooled)))


def _last_token_prediction_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.drop(model.head(state)))[:, 0]


def _dense_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """EuroBERT's head: `dense`, `activation`, `classifier` on the first token ("bos"), on the masked mean of the
    tokens ("mean"), or on every token with the logits averaged ("late")."""
    pooling = model.config.classifier_pooling
    if pooling == "late":
        return _masked_mean(model.classifier(model.activation(model.dense(state))), inputs)
    pooled = state[:, 0] if pooling == "bos" else _masked_mean(state, inputs)
    return model.classifier(model.activation(model.dense(pooled)))


def _dense_classifier_reads(model: PreTrainedModel) -> str:
    return READS_FIRST if model.config.classifier_pooling == "bos" else READS_ALL


def _summary_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The model's `sequence_summary`, then `logits_proj` where the summary does not project to the labels
    itself (XLNet; XLM and Flaubert project inside the summary)."""
    summary = model.sequence_summary(state)
    projection = _module(model, "logits_proj")
    return summary if projection is None else projection(summary)


def _summary_reads(model: PreTrainedModel) -> str:
    """The positions the summary reads, by its `summary_type`: the first or the final position, or every position
    (the mean, or a `cls_index` the forward may pass)."""
    return {"first": READS_FIRST, "last": READS_FINAL}.get(model.sequence_summary.summary_type, READS_ALL)


def _choice_summary_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return _summary_head(model, state, inputs).view(-1, _choices(inputs))


def _classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(state)


def _choices(inputs: dict[str, Any]) -> int:
    """How many choices each example has: multiple-choice models score one (example, choice) row at a time and
    regroup the scores into [batch, choices]."""
    return next(inputs[name] for name in ("input_ids", "inputs_embeds") if inputs.get(name) is not None).shape[1]


def _choice_scores_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(state).view(-1, _choices(inputs))


def _pooled_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return pooled_classifier(model)(state)


def _classification_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classification_head(state)


def timm_classifier(model: nn.Module) -> nn.Module:
    return model.timm_model.get_classifier()


def _timm_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return timm_classifier(model)(state)


def _score_per_token_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.score(state)


def _lm_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The head module, then what the model's forward does to its output: BART's and Marian's `final_logits_bias`,
    the config scales it multiplies or divides the logits by (`logit_scale_ops`: Cohere's `logit_scale`, Granite's
    `logits_scaling`, Falcon-H1's `lm_head_multiplier`), Gemma 2's and Gemma 3's `final_logit_softcapping`
    (`verify_head` checks that the forward does exactly this)."""
    logits = lm_head_module(model)(state)
    final_logits_bias = getattr(model, "final_logits_bias", None)
    if isinstance(final_logits_bias, torch.Tensor):
        logits = logits + final_logits_bias
    config = model.config.get_text_config()
    for operator, name in logit_scale_ops(type(model)):
        scale = getattr(config, name)
        logits = logits * scale if operator == "*" else logits / scale
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _decoder_output_projection_head(
    model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]
) -> torch.Tensor:
    return decoder_output_projection(model)(state)


# `logits = logits * self.config.logit_scale`, `logits = self.lm_head(hidden_states) / self.logits_scaling`, ...: a
# config scale applied to the LM head's output. The same name may be applied before the head (MiniCPM3 divides the
# hidden states by `logits_scaling`) or multiply where another model divides, so the forward says which.
LOGIT_SCALE_STATEMENT = re.compile(
    r"logits\s*=\s*(?:logits|self\.lm_head\(\w+\))\s*([*/])\s*"
    r"self\.(?:config\.(?:text_config\.)?|model\.)?(logit_scale|logits_scaling|lm_head_multiplier|output_multiplier)\b"
)


@cache
def logit_scale_ops(model_class: type) -> tuple[tuple[str, str], ...]:
    """The config scales the class's forward multiplies ("*") or divides ("/") its LM head's output by, in order,
    read from its source; none where the source cannot be read."""
    try:
        source = inspect.getsource(inspect.unwrap(model_class.forward))
    except (OSError, TypeError):
        return ()
    return tuple((match.group(1), match.group(2)) for match in LOGIT_SCALE_STATEMENT.finditer(source))


def _frame_lm_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.lm_head(state)


def _vocab_projector_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(state))))


def _score_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    # `token_scorer` matched the family before training, when SPG's chain was no module of the model yet.
    scorer = model.score if _module(model, "score") is not None else model.classifier
    return scorer(state)[:, 0]


def _final_layer_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return classification_final_layer(model)(state)[:, 0]


def _distilled_pair_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return (model.head(state) + model.dist_head(state)) / 2


def _question_aware_span_head(
    model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Splinter's head: start and end scores of every token against the question token's (the `question_positions`
    input, or the first `question_token_id` of the input ids), padding masked out, as its forward computes them."""
    positions = inputs.get("question_positions")
    one_question = positions is None
    if one_question:
        input_ids = inputs.get("input_ids")
        if input_ids is None:
            positions = torch.zeros(state.shape[0], dtype=torch.long, device=state.device)
        else:
            positions = input_ids.eq(model.question_token_id).int().argmax(dim=-1)
        positions = positions.unsqueeze(-1)
    start_logits, end_logits = model.splinter_qass(state, positions)
    if one_question:
        start_logits, end_logits = start_logits.squeeze(1), end_logits.squeeze(1)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None:
        start_logits = start_logits + (1 - attention_mask) * torch.finfo(start_logits.dtype).min
        end_logits = end_logits + (1 - attention_mask) * torch.finfo(end_logits.dtype).min
    return start_logits, end_logits


def _frame_pooling_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    projected = model.projector(state)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        return model.classifier(projected.mean(dim=1))
    frame_mask = model._get_feature_vector_attention_mask(projected.shape[1], attention_mask)
    frame_mask = frame_mask.unsqueeze(-1).to(projected.dtype)
    pooled = (projected * frame_mask).sum(dim=1) / frame_mask.sum(dim=1)
    return model.classifier(pooled)


# ---------------------------------------------------------------- what the head modules look like


def _unwrapped(module: Any) -> Any:
    """The layer a PEFT adapter wraps (a LoRA layer's `base_layer`, a `modules_to_save` wrapper's
    `original_module`), so that an adapted head matches its family as the plain one does; anything else as it is."""
    while isinstance(module, nn.Module):
        inner = getattr(module, "original_module", None) or getattr(module, "base_layer", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    return module


def _module(model: nn.Module, name: str) -> nn.Module | None:
    module = getattr(model, name, None)
    return module if isinstance(module, nn.Module) else None


def _has_linear(model: nn.Module, name: str) -> bool:
    return isinstance(_unwrapped(getattr(model, name, None)), nn.Linear)


def lm_head_module(model: nn.Module) -> nn.Module | None:
    """The task model's own child that holds the output embeddings (BERT's `cls`, RoBERTa's and Llama's `lm_head`):
    the head transform where the model has one, then the decoder; the output embeddings alone where that child holds
    no other weights (XLM's and Flaubert's `pred_layer`, whose forward returns a tuple with its own loss). Where the
    child is a model of its own (EncoderDecoderModel's decoder, a speech LM's language model), that model's head.
    None when the output embeddings are missing or inside the base model."""
    output_embeddings = model.get_output_embeddings()
    if output_embeddings is None:
        return None
    for child in model.children():
        if child is not model.base_model and any(module is output_embeddings for module in child.modules()):
            if isinstance(child, PreTrainedModel):
                return lm_head_module(child)
            own_weights = {id(parameter) for parameter in output_embeddings.parameters()}
            if all(id(parameter) in own_weights for parameter in child.parameters()):
                return output_embeddings
            return child
    return None


def token_scorer(model: nn.Module) -> nn.Module | None:
    """The linear layer a decoder classifier applies to every token before it pools the last non-padding one: its
    `score`, or a linear `classifier` that is the task model's only module besides its base model (CTRL's)."""
    if _has_linear(model, "score"):
        return model.score
    head_modules = [child for child in model.children() if child is not model.base_model]
    if _has_linear(model, "classifier") and head_modules == [model.classifier]:
        return model.classifier
    return None


def classification_final_layer(model: nn.Module) -> nn.Module | None:
    """The linear `final_layer` of a classification decoder that turns its query's output into the logits
    (Perceiver's decoders: the logits are its output at the one query)."""
    layers = [
        module
        for name, module in model.named_modules()
        if name.split(".")[-1] == "final_layer" and isinstance(_unwrapped(module), nn.Linear)
    ]
    return layers[-1] if len(layers) == 1 and _unwrapped(layers[-1]).out_features == model.config.num_labels else None


def pooled_classifier(model: nn.Module) -> nn.Module | None:
    """The module that turns the vector an image or audio model pools into its logits: its `classifier`, or a linear
    `fc` where `classifier` is a list of the pooling layers (HGNetV2's)."""
    classifier = _module(model, "classifier")
    if classifier is not None and not isinstance(classifier, nn.ModuleList):
        return classifier
    return model.fc if _has_linear(model, "fc") else None


def decoder_output_projection(model: nn.Module) -> nn.Module | None:
    """The linear projection to the vocabulary that ends the base model's decoder, where the task model has no LM
    head of its own (FSMT's `output_projection`)."""
    decoder = _module(model.base_model, "decoder")
    return decoder.output_projection if decoder is not None and _has_linear(decoder, "output_projection") else None


def base_pooler(model: nn.Module) -> nn.Module:
    """The base model's pooler: its input is the state the pooler reads, whichever of the base model's states that
    is (CANINE pools the downsampled sequence, not its final output)."""
    return model.base_model.pooler


def _has_span_layer(model: nn.Module, name: str) -> bool:
    return _has_linear(model, name) and _unwrapped(getattr(model, name)).out_features == 2


def _reads_text(model: nn.Module) -> bool:
    return model.main_input_name == "input_ids"


def _classifies_pooled(model: nn.Module) -> bool:
    return _reads_text(model) and _has_linear(model, "classifier") and _module(model, "dropout") is not None


def _uses_prediction_head(model: nn.Module, pooling: str | None) -> bool:
    """A prediction head (`head`, `drop`, `classifier`) pooled as the config's `classifier_pooling` says; None: a
    config without one (a decoder's, read at the last non-padding token)."""
    return (
        _reads_text(model)
        and _module(model, "head") is not None
        and _module(model, "drop") is not None
        and _has_linear(model, "classifier")
        and getattr(model.config, "classifier_pooling", None) == pooling
    )


def _final_linear_outputs(model: nn.Module, name: str) -> int | None:
    """The output width of the last linear layer in the model's module `name` (the module itself, if linear);
    None without one."""
    module = _module(model, name)
    linears = [] if module is None else [m for m in module.modules() if isinstance(_unwrapped(m), nn.Linear)]
    return _unwrapped(linears[-1]).out_features if linears else None


# Where segmentation models keep their main head (Segformer, UperNet, BEiT: decode_head; MobileViT:
# segmentation_head; DPT: head).
SEGMENTATION_HEADS = ("decode_head", "segmentation_head", "head")


def _class_convolution(head: nn.Module, classes: int) -> nn.Module | None:
    """A segmentation head's classifier: its last 2-D convolution with one output channel per class."""
    convolutions = [m for m in head.modules() if isinstance(m, nn.Conv2d) and m.out_channels == classes]
    return convolutions[-1] if convolutions else None


def segmentation_classifier(model: nn.Module) -> nn.Module | None:
    """The main segmentation head's classifier."""
    for name in SEGMENTATION_HEADS:
        head = _module(model, name)
        if head is not None:
            return _class_convolution(head, model.config.num_labels)
    return None


def segmentation_auxiliary(model: nn.Module) -> AuxiliaryHead | None:
    """The class convolution of the model's `auxiliary_head` (built with `use_auxiliary_head`; its output is the
    auxiliary logits, which the loss upsamples to the labels as it does the main ones) and the config's
    `auxiliary_loss_weight`; None for a model without one."""
    head = _module(model, "auxiliary_head")
    classifier = None if head is None else _class_convolution(head, model.config.num_labels)
    if classifier is None:
        return None
    path = next(name for name, module in model.named_modules() if module is classifier)
    family = module_head_family(
        AUXILIARY_HEAD, path, "semantic_segmentation", ("segmentation",), classifier.in_channels,
        classifier.out_channels,
        f"`{path}`, the auxiliary head's class convolution",
    )  # fmt: skip
    return AuxiliaryHead(family, model.config.auxiliary_loss_weight)


def _segmentation_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The class convolution, then what follows it in its Sequential (DPT's own upsampling)."""
    classifier = segmentation_classifier(model)
    logits = classifier(state.movedim(-1, 1))
    for sequence in model.modules():
        if isinstance(sequence, nn.Sequential) and any(child is classifier for child in sequence):
            children = list(sequence)
            for module in children[next(i for i, child in enumerate(children) if child is classifier) + 1 :]:
                logits = module(logits)
    return logits


FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        "span",
        "question_answering",
        "`qa_outputs` on every token state, split into start and end logits",
        lambda m: _has_span_layer(m, "qa_outputs"),
        _span_head("qa_outputs"),
        READS_ALL,
        capture="qa_outputs",
    ),
    HeadFamily(
        "question_aware_span",
        "question_answering",
        "`splinter_qass`: every token's start and end scores against the question token's (its `question_positions`,"
        " or its first `question_token_id`), padding masked out as the model does",
        lambda m: _module(m, "splinter_qass") is not None and hasattr(m, "question_token_id"),
        _question_aware_span_head,
        READS_ALL,
        capture="splinter_qass",
    ),
    HeadFamily(
        "span_classifier",
        "question_answering",
        "a 2-output `classifier` on every token state (after the model's own transform), split into start and end",
        lambda m: _has_span_layer(m, "classifier"),
        _span_head("classifier"),
        READS_ALL,
        capture="classifier",
    ),
    HeadFamily(
        "question_masked_span",
        "question_answering",
        "`qa_classifier` (transform and 2-output `qa_outputs`) on every token state, question tokens masked out as the "
        "model does, split into start and end logits",
        lambda m: _module(m, "qa_classifier") is not None and hasattr(m, "prepare_question_mask"),
        _question_masked_span_head,
        READS_ALL,
        capture="qa_classifier",
    ),
    HeadFamily(
        "segmentation_classifier",
        "semantic_segmentation",
        "the main head's last class convolution (`decode_head`, `segmentation_head` or `head`) on every feature-map "
        "position; logits upsampled to the labels as the model's loss does, every labelled pixel a trajectory",
        lambda m: segmentation_classifier(m) is not None and m.config.num_labels > 1,
        _segmentation_head,
        READS_FEATURE_MAP,
        capture=segmentation_classifier,
        auxiliary=segmentation_auxiliary,
    ),
    HeadFamily(
        "frame_pooling",
        "sequence_classification",
        "`projector`, masked mean over the valid frames, `classifier` (chain on every frame state)",
        lambda m: (
            _has_linear(m, "projector")
            and _has_linear(m, "classifier")
            and hasattr(m, "_get_feature_vector_attention_mask")
        ),
        _frame_pooling_head,
        READS_ALL,
        capture="projector",
    ),
    HeadFamily(
        "ctc_lm_head",
        "ctc",
        "a linear `lm_head` on every frame state (after the model's own dropout); an utterance survives while greedy "
        "CTC decoding of its logits gets at least half of its target tokens right at their positions",
        lambda m: _has_linear(m, "lm_head") and hasattr(m, "_get_feat_extract_output_lengths"),
        _frame_lm_head,
        READS_ALL,
        capture="lm_head",
    ),
    HeadFamily(
        "timm_classifier",
        "sequence_classification",
        "the timm model's own classifier (`timm_model.get_classifier()`) on the features it pools",
        lambda m: isinstance(getattr(m, "timm_model", None), nn.Module) and hasattr(m.timm_model, "get_classifier"),
        _timm_classifier_head,
        READS_VECTOR,
        capture=timm_classifier,
    ),
    HeadFamily(
        "eos_classification_head",
        "sequence_classification",
        "`classification_head` on the decoder state of the last EOS token (encoder-decoder classifiers)",
        lambda m: _module(m, "classification_head") is not None,
        _classification_head,
        READS_VECTOR,
        capture="classification_head",
    ),
    HeadFamily(
        "choice_classifier",
        "multiple_choice",
        "a `classifier` ending in one output (a linear layer, or Funnel's two) on each choice's pooled vector, scores "
        "regrouped into [batch, choices]",
        lambda m: _final_linear_outputs(m, "classifier") == 1,
        _choice_scores_head,
        READS_FIRST,
        capture="classifier",
    ),
    HeadFamily(
        "choice_summary",
        "multiple_choice",
        "the model's `sequence_summary` on each choice (first, final or every position, as its `summary_type` says) "
        "and `logits_proj` to one score, regrouped into [batch, choices]",
        lambda m: _module(m, "sequence_summary") is not None and _final_linear_outputs(m, "logits_proj") == 1,
        _choice_summary_head,
        _summary_reads,
        capture="sequence_summary",
    ),
    HeadFamily(
        "image_pooled",
        "sequence_classification",
        "`classifier` (or a linear `fc` where `classifier` only pools) on the vector an image or audio model pools "
        "(first token, mean over patches, positions or frames)",
        lambda m: not _reads_text(m) and pooled_classifier(m) is not None,
        _pooled_classifier_head,
        READS_VECTOR,
        capture=pooled_classifier,
        offers_pooled=True,
    ),
    HeadFamily(
        "distilled_pair",
        "sequence_classification",
        "the mean of a linear `head` and a linear distillation `dist_head` on the vector the model pools",
        lambda m: _has_linear(m, "head") and _has_linear(m, "dist_head"),
        _distilled_pair_head,
        READS_VECTOR,
        capture="head",
    ),
    HeadFamily(
        "last_token_score",
        "sequence_classification",
        "`score` (or a `classifier` that is the only head module, CTRL's) on every token, read at the last "
        "non-padding token (decoder classifiers, left or right padding)",
        lambda m: _reads_text(m) and token_scorer(m) is not None,
        _score_head,
        READS_LAST,
    ),
    HeadFamily(
        "prediction_head_last",
        "sequence_classification",
        "`head`, `drop`, `classifier` on every token, read at the last non-padding token (decoder prediction heads)",
        lambda m: _uses_prediction_head(m, None),
        _last_token_prediction_head,
        READS_LAST,
    ),
    HeadFamily(
        "dense_classifier",
        "sequence_classification",
        "`dense`, `activation`, `classifier` on the first token, on the masked mean of the tokens, or on every "
        "token with the logits averaged, as `classifier_pooling` says ('bos', 'mean', 'late')",
        lambda m: (
            _reads_text(m)
            and _has_linear(m, "dense")
            and _module(m, "activation") is not None
            and _has_linear(m, "classifier")
            and getattr(m.config, "classifier_pooling", None) in ("bos", "mean", "late")
        ),
        _dense_classifier_head,
        _dense_classifier_reads,
    ),
    HeadFamily(
        "sequence_summary",
        "sequence_classification",
        "the model's `sequence_summary` (first, final or every position, as its `summary_type` says; projection, "
        "activation), then `logits_proj` where the summary does not project to the labels itself",
        lambda m: _module(m, "sequence_summary") is not None,
        _summary_head,
        _summary_reads,
        capture="sequence_summary",
    ),
    HeadFamily(
        "decoder_final_layer",
        "sequence_classification",
        "a classification decoder's linear `final_layer` on its one query's output (Perceiver)",
        lambda m: classification_final_layer(m) is not None,
        _final_layer_head,
        READS_FIRST,
        capture=classification_final_layer,
    ),
    HeadFamily(
        "prediction_head_first",
        "sequence_classification",
        "`classifier_pooling='cls'`: first token, `head`, `drop`, `classifier`",
        lambda m: _uses_prediction_head(m, "cls"),
        _prediction_head,
        READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        "prediction_head_mean",
        "sequence_classification",
        "`classifier_pooling='mean'`: masked mean over tokens, `head`, `drop`, `classifier` (chain on every token)",
        lambda m: _uses_prediction_head(m, "mean"),
        _prediction_head,
        READS_ALL,
        offers_pooled=True,
    ),
    HeadFamily(
        "pre_classifier",
        "sequence_classification",
        "first token, `pre_classifier`, ReLU, `dropout`, `classifier`",
        lambda m: _has_linear(m, "pre_classifier") and _classifies_pooled(m),
        _pre_classifier_head,
        READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        "own_pooler",
        "sequence_classification",
        "the task model's own first-token `pooler`, `dropout`, `classifier`",
        lambda m: _module(m, "pooler") is not None and _classifies_pooled(m),
        _own_pooler_head,
        READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        "base_pooler",
        "sequence_classification",
        "the base model's first-token pooler module, `dropout`, `classifier` (chain on the first token of the state "
        "the pooler reads)",
        lambda m: (
            _module(m.base_model, "pooler") is not None
            and not _has_linear(m.base_model, "pooler")
            and _classifies_pooled(m)
        ),
        _base_pooler_head,
        READS_FIRST,
        capture=base_pooler,
        offers_pooled=True,
    ),
    HeadFamily(
        "base_linear_pooler",
        "sequence_classification",
        "the base model's linear `pooler` and `pooler_activation` on the first token, `dropout`, `classifier`",
        lambda m: (
            _has_linear(m.base_model, "pooler")
            and _module(m.base_model, "pooler_activation") is not None
            and _classifies_pooled(m)
        ),
        _base_linear_pooler_head,
        READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        "first_token_classifier",
        "sequence_classification",
        "a `classifier` head module that reads the first token itself, or the first token the model hands it (dense, "
        "activation, projection)",
        lambda m: _reads_text(m) and _module(m, "classifier") is not None and not _has_linear(m, "classifier"),
        _classifier_head,
        READS_FIRST,
        capture="classifier",
    ),
    HeadFamily(
        "token_classifier",
        "token_classification",
        "a linear `classifier` on every token state (after the model's own dropout or transform)",
        lambda m: _has_linear(m, "classifier"),
        _classifier_head,
        READS_LABELLED,
        capture="classifier",
    ),
    HeadFamily(
        "token_score",
        "token_classification",
        "a `score` ending in a linear layer on every token state (decoder token classifiers)",
        lambda m: _final_linear_outputs(m, "score") is not None,
        _score_per_token_head,
        READS_LABELLED,
        capture="score",
    ),
    HeadFamily(
        "vocab_projector",
        "masked_lm",
        "`vocab_transform`, activation, `vocab_layer_norm`, `vocab_projector` (tied to the input embeddings)",
        lambda m: _has_linear(m, "vocab_transform") and _has_linear(m, "vocab_projector"),
        _vocab_projector_head,
        READS_LABELLED,
        capture="vocab_transform",
    ),
    HeadFamily(
        "masked_lm_head",
        "masked_lm",
        "the child module holding the output embeddings: head transform (dense, activation, norm) and decoder",
        lambda m: lm_head_module(m) is not None,
        _lm_head,
        READS_LABELLED,
        capture=lm_head_module,
    ),
    HeadFamily(
        "causal_lm_head",
        "causal_lm",
        "the child module holding the output embeddings (`lm_head`; the output embeddings alone where it holds "
        "nothing else), then the config scales the forward applies to its output and `final_logit_softcapping`; "
        "labels as the model's loss reads them (shifted by one; unshifted for XLNet, XLM, Flaubert)",
        lambda m: lm_head_module(m) is not None,
        _lm_head,
        READS_LABELLED,
        capture=lm_head_module,
    ),
    HeadFamily(
        "seq2seq_lm_head",
        "seq2seq_lm",
        "the decoder's LM head (the child module holding the output embeddings: `lm_head`, Whisper's `proj_out`), "
        "plus `final_logits_bias` where the model has one; labels as the model's loss reads them (unshifted)",
        lambda m: lm_head_module(m) is not None,
        _lm_head,
        READS_LABELLED,
        capture=lm_head_module,
    ),
    HeadFamily(
        "decoder_output_projection",
        "seq2seq_lm",
        "the linear `output_projection` that ends the base model's decoder (FSMT: its output embeddings are the "
        "decoder's input embeddings, tied to it); labels as the model's loss reads them (unshifted)",
        lambda m: decoder_output_projection(m) is not None,
        _decoder_output_projection_head,
        READS_LABELLED,
        capture=decoder_output_projection,
    ),
)


def task_of(model: nn.Module) -> str | None:
    """The SPG task of a model from its task class, or None for a class of no supported task: the suffix of its
    class name (along the class hierarchy); else its forward (an encoder-decoder model whose forward takes
    `decoder_input_ids` and that has an LM head is a sequence-to-sequence LM, whatever its name: MarianMTModel); else
    the transformers task mapping that lists it (`BertGenerationDecoder`, `...ForQuestionAnsweringSimple`,
    `SeamlessM4TForTextToText`). A decoder-only model of the sequence-to-sequence mapping (a speech LM) is a causal
    LM, as its loss reads it."""
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    for cls in type(model).__mro__:
        for suffix, task in TASK_SUFFIXES.items():
            if cls.__name__.endswith(suffix):
                if task == "seq2seq_lm" and not encoder_decoder:
                    break  # a decoder-only ...ForConditionalGeneration (vision-language): a causal LM, if any
                return task
    forward_inputs = inspect.signature(model.forward).parameters
    if encoder_decoder and "decoder_input_ids" in forward_inputs and lm_head_module(model) is not None:
        return "seq2seq_lm"
    task = _mapped_tasks().get(type(model).__name__)
    return "causal_lm" if task == "seq2seq_lm" and not encoder_decoder else task


# transformers' task mappings, for the classes whose name does not say their task; a class listed in several takes
# the first.
MAPPED_TASKS = {
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "causal_lm",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "seq2seq_lm",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": "masked_lm",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": "question_answering",
    "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES": "multiple_choice",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "token_classification",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "sequence_classification",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "sequence_classification",
    "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES": "sequence_classification",
    "MODEL_FOR_CTC_MAPPING_NAMES": "ctc",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES": "semantic_segmentation",
}


@cache
def _mapped_tasks() -> dict[str, str]:
    from transformers.models.auto import modeling_auto

    tasks: dict[str, str] = {}
    for mapping, task in MAPPED_TASKS.items():
        for names in getattr(modeling_auto, mapping).values():
            for name in names if isinstance(names, tuple) else (names,):
                tasks.setdefault(name, task)
    return tasks


def head_family_for(model: nn.Module) -> HeadFamily:
    """The first family whose rule matches the model's task and head modules, with the positions it reads resolved
    from the model's config where they depend on it; a ValueError saying what is missing otherwise."""
    name = type(model).__name__
    task = task_of(model)
    if task is None:
        raise ValueError(
            f"SPG does not support {name}: it is not a task class SPG knows (class names ending in "
            f"{', '.join(TASK_SUFFIXES)}, or listed in transformers' task mappings of those tasks). Name its head "
            "with spg_head='<path of the module whose output is the "
            "prediction>' (e.g. 'fc', 'classifier', 'heads.head'), or set spg_enabled=False to train it as with "
            "Trainer."
        )
    for family in FAMILIES:
        if family.task == task and family.matches(model):
            return replace(family, reads=family.reads(model)) if callable(family.reads) else family
    rules = "; ".join(f"{family.name}: {family.rule}" for family in FAMILIES if family.task == task)
    raise ValueError(
        f"SPG does not support {name}: its head matches none of the {task.replace('_', ' ')} head families ({rules})."
        " Name its head with spg_head='<module path>', add a HeadFamily to spg_hf.heads.FAMILIES, or set "
        "spg_enabled=False."
    )


def _describe_capture(family: HeadFamily, model: nn.Module) -> str:
    module = family.capture_module(model)
    path = next(name for name, candidate in model.named_modules() if candidate is module)
    return f"`{path}`" + (" (the base model)" if family.capture is None else "")


def _predictions_agree(shared: Any, own: Any) -> bool:
    """Whether the shared head's logits equal the model's own, up to the rounding of a recomputation in their
    dtype (a head applied to fewer positions may sum in another order)."""
    pairs = zip(shared, own, strict=True) if isinstance(own, tuple) else [(shared, own)]
    for computed, expected in pairs:
        if not isinstance(computed, torch.Tensor) or computed.shape != expected.shape:
            return False
        tolerance = 1e-3 if expected.dtype in (torch.float32, torch.float64) else 5e-2
        expected = expected.float()
        if (computed.float() - expected).abs().max() > tolerance * (expected.abs().max() + 1):
            return False
    return True


def resized_like(segmentation_logits: torch.Tensor, model_logits: torch.Tensor) -> torch.Tensor:
    """Segmentation logits at the model's logits size: UperNet resizes them to the image inside its forward (the
    others leave it to their loss), the same bilinear resize SPG's terms apply on the way to the labels' size."""
    if segmentation_logits.shape[-2:] == model_logits.shape[-2:]:
        return segmentation_logits
    return F.interpolate(segmentation_logits, size=model_logits.shape[-2:], mode="bilinear", align_corners=False)


def _next_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label of the next position) at each position, 0 where that label is ignored, as TRL's fused head
    returns them."""
    next_labels = labels[:, 1:]
    log_probs = logits[:, :-1].float().log_softmax(-1).gather(-1, next_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return log_probs.masked_fill(next_labels == IGNORE_INDEX, 0.0)


@dataclass(frozen=True)
class HeadCheck:
    """What the construction check saw on one batch: each head's prediction as the family computes it from the state
    it captures (the main head's, then the auxiliary head's), the width of the state the main head reads, and the
    loss Trainer computes for the batch (None where it computes none: no labels, or a model that returns no loss)."""

    predictions: list[Logits]
    width: int
    loss: torch.Tensor | None


def _model_loss(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else None
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def verify_head(
    trained: nn.Module,
    family: HeadFamily,
    batch: dict[str, Any],
    forward: Callable[[dict[str, Any]], tuple[torch.Tensor | None, Any]] | None = None,
) -> HeadCheck:
    """Runs `trained` (the model Trainer trains: the task model, or a PeftModel around it) once in eval mode on
    `batch`, through `forward` (Trainer's loss computation, returning the loss and the outputs; by default the
    model's own call), and checks what SPG relies on: the forward calls the module the family captures, and the
    family's head on the captured state, given the inputs the task model was called with, reproduces the model's own
    logits (a head named with spg_head is its own prediction). A model that matches a family by its modules but
    computes its prediction another way gets a ValueError that names the family and what failed, before training."""
    model = unwrap_peft_model(trained)
    name = type(model).__name__
    refusal = f"SPG does not support {name} with head family {family.name} ({family.rule}): "
    captured: list[tuple[torch.Tensor, Any]] = []
    call_inputs: list[dict[str, Any]] = []
    handles = [
        family.register_capture(model, lambda state, output=None: captured.append((state, output))),
        register_call_inputs(model, call_inputs.append),
    ]
    auxiliary = family.auxiliary_head(model)
    auxiliary_calls: list[torch.Tensor] = []
    if auxiliary is not None:
        handles.append(auxiliary.family.register_capture(model, lambda state, output: auxiliary_calls.append(output)))
    was_training = trained.training
    trained.eval()
    try:
        with torch.no_grad():
            loss, outputs = forward(batch) if forward is not None else (None, trained(**batch))
            for calls, head in ((captured, family), (auxiliary_calls, auxiliary and auxiliary.family)):
                if head is not None and not calls:
                    raise ValueError(
                        refusal + f"its forward never calls {_describe_capture(head, model)}, where the "
                        f"{'auxiliary ' if head is not family else ''}head's input is captured. Set "
                        "spg_enabled=False to train it as with Trainer."
                    )
            inputs = call_inputs[0]
            state = family.select(model, captured[0][0], inputs)
            try:
                shared = family.head(model, state, inputs)
            except (RuntimeError, IndexError, TypeError, AttributeError) as error:
                failure = f"the family's head fails on the state its forward hands on ({error})."
                raise ValueError(refusal + failure) from error
            reproduces = family.prediction_at_capture or _predictions_agree(
                *_comparable(family, shared, outputs, batch)
            )
    finally:
        for handle in handles:
            handle.remove()
        trained.train(was_training)
    if not reproduces:
        raise ValueError(
            refusal + "the family's head on the captured state does not reproduce the model's logits, so its forward "
            "computes the prediction another way. Set spg_enabled=False to train it as with Trainer."
        )
    return HeadCheck(
        [shared, *auxiliary_calls[:1]], state.shape[-1], loss if loss is not None else _model_loss(outputs)
    )


def _comparable(family: HeadFamily, shared: Any, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """The family's prediction and the model's own, in the form the model's outputs hold it."""
    if family.task == "question_answering":
        return shared, (outputs["start_logits"], outputs["end_logits"])
    if outputs.get("logits") is None and outputs.get("log_probs") is not None:
        # TRL's fused LM head builds no logits: compare the log-probability of each next-token label.
        return _next_token_log_probs(shared, batch["labels"]), outputs["log_probs"]
    own = outputs["logits"]
    if family.task == "semantic_segmentation":
        shared = resized_like(shared, own)
    return shared, own


def _prediction_readings(prediction: torch.Tensor, labels: Any) -> tuple[str, tuple[str, ...]] | None:
    """(task, objectives) of a head's output against the labels, the objectives in the order the loss check tries
    them where the shapes leave the reading open, or None where the shapes do not tell."""
    if not isinstance(labels, torch.Tensor):
        return None
    integer_labels = not labels.is_floating_point()
    if prediction.dim() == 3 and labels.shape == prediction.shape[:2] and integer_labels:
        return "token_classification", ("token_classification", "next_token")
    if prediction.dim() == 2 and labels.dim() == 1 and len(labels) == len(prediction):
        if integer_labels and prediction.shape[1] > 1:
            return "sequence_classification", ("classification",)
        if not integer_labels and prediction.shape[1] == 1:
            return "sequence_classification", ("regression",)
    if prediction.dim() == 2 and labels.shape == prediction.shape and not integer_labels:
        # One output per example is a regression first; several, multi-label first (MultiLabel reads 0/1 labels).
        first, second = ("regression", "multi_label") if prediction.shape[1] == 1 else ("multi_label", "regression")
        return "sequence_classification", (first, second)
    if prediction.dim() == 1 and labels.shape == prediction.shape and not integer_labels:
        return "sequence_classification", ("regression",)
    if prediction.dim() == 4 and labels.dim() == 3 and len(labels) == len(prediction) and integer_labels:
        return "semantic_segmentation", ("segmentation",)
    return None


def _named_head(path: str, feature_map: bool) -> HeadFn:
    def head(model: nn.Module, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        module = model.get_submodule(path)
        return module(state.movedim(-1, 1)) if feature_map else module(state)

    return head


def named_head_family(model: nn.Module, path: str, batch: dict[str, Any], argument: str = "spg_head") -> HeadFamily:
    """The family of the head `spg_head` (or `spg_auxiliary_head`, the `argument`) names: the module at `path` is
    the shared head, the chain runs on its input, its output is the prediction. One forward on `batch` (eval mode,
    no gradient) reads what the trajectories are from its output and the labels: one class per example, regression,
    multi-label, or one class per position. A ValueError names the argument and what to pass where the path names
    no module, the module never runs in the forward, or its output cannot be read as a prediction."""
    name = type(model).__name__
    try:
        module = model.get_submodule(path)
    except AttributeError:
        children = ", ".join(child for child, _ in model.named_children())
        raise ValueError(
            f"{argument}={path!r} names no module of {name} (its top-level modules: {children}). Pass the dotted path "
            "of the module whose output is the prediction, as model.get_submodule takes it."
        ) from None
    calls: list[tuple[Any, Any]] = []
    handle = module.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((first_input(args, kwargs), output)), with_kwargs=True
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
        model.train(was_training)
    if not calls:
        raise ValueError(
            f"{argument}={path!r}: {name}'s forward never calls that module ({type(module).__name__}) on a training "
            "example. Name the module whose output is the model's prediction."
        )
    state, prediction = calls[0]
    labels = batch.get("labels")
    kind = _prediction_readings(prediction, labels) if isinstance(prediction, torch.Tensor) else None
    if kind is None:
        shape = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
        label_shape = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, torch.Tensor) else repr(labels)
        raise ValueError(
            f"{argument}={path!r}: its output ({shape}) cannot be read as a prediction of the labels ({label_shape}). "
            "SPG reads [batch, classes] logits with integer labels [batch] (one class per example), [batch, 1] "
            "with float labels (regression), [batch, classes] with float 0/1 labels [batch, classes] (multi-label) "
            "or [batch, length, classes] with integer labels [batch, length] (one class per position, -100 "
            "ignored) or [batch, classes, h, w] with integer labels [batch, H, W] (one class per pixel, 255 "
            "ignored). Name the module that outputs the logits the model's loss reads."
        )
    task, readings = kind
    # A feature map in, class maps out: the chain acts on the channels.
    channels = 1 if task == "semantic_segmentation" else -1
    return module_head_family(
        NAMED_HEAD, path, task, readings, state.shape[channels], prediction.shape[channels],
        f"`{path}`, named by spg_head",
    )  # fmt: skip


def module_head_family(
    name: str, path: str, task: str, readings: tuple[str, ...], width: int, classes: int, rule: str
) -> HeadFamily:
    """The family of a head that is one module (at `path`): the chain runs on its input, its output is the
    prediction, read where it is computed."""
    feature_map = task == "semantic_segmentation"
    if feature_map:
        reads = READS_FEATURE_MAP
    else:
        reads = READS_LABELLED if task in TOKEN_LEVEL_TASKS else READS_ALL
    return HeadFamily(
        name,
        task,
        rule,
        lambda model: True,
        _named_head(path, feature_map),
        reads,
        capture=path,
        prediction_at_capture=True,
        readings=readings,
        feature_width=width,
        classes=classes,
    )
