"""The shared heads as functions of the captured (and reduced) state: what each family applies to the chain's states,
as the model's own forward applies it."""

from __future__ import annotations

import inspect
import re
from functools import cache
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from spg_hf.heads.family import READS_ALL, READS_FINAL, READS_FIRST, HeadFn
from spg_hf.heads.modules import (
    child_module,
    classification_final_layer,
    decoder_output_projection,
    lm_head_module,
    pooled_classifier,
)


def _split_span_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    start_logits, end_logits = logits.split(1, dim=-1)
    return start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()


def span_head(layer: str) -> HeadFn:
    def head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return _split_span_logits(getattr(model, layer)(state))

    return head


def question_masked_span_head(
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


def base_pooler_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(model.base_model.pooler(state)))


def base_linear_pooler_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    base = model.base_model
    return model.classifier(model.dropout(base.pooler_activation(base.pooler(state[:, 0]))))


def own_pooler_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(model.pooler(state)))


def pre_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(state[:, 0]))))


def _masked_mean(values: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The mean over the positions the attention mask keeps (all of them without a mask), as encoders pool."""
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        return values.mean(dim=1)
    attention_mask = attention_mask.to(values.device).unsqueeze(-1)
    return (values * attention_mask).sum(dim=1) / attention_mask.sum(dim=1)


def prediction_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    pooled = state[:, 0] if model.config.classifier_pooling == "cls" else _masked_mean(state, inputs)
    return model.classifier(model.drop(model.head(pooled)))


def last_token_prediction_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.drop(model.head(state)))[:, 0]


def dense_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """EuroBERT's head: `dense`, `activation`, `classifier` on the first token ("bos"), on the masked mean of the
    tokens ("mean"), or on every token with the logits averaged ("late")."""
    pooling = model.config.classifier_pooling
    if pooling == "late":
        return _masked_mean(model.classifier(model.activation(model.dense(state))), inputs)
    pooled = state[:, 0] if pooling == "bos" else _masked_mean(state, inputs)
    return model.classifier(model.activation(model.dense(pooled)))


def dense_classifier_reads(model: PreTrainedModel) -> str:
    return READS_FIRST if model.config.classifier_pooling == "bos" else READS_ALL


def summary_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The model's `sequence_summary`, then `logits_proj` where the summary does not project to the labels
    itself (XLNet; XLM and Flaubert project inside the summary)."""
    summary = model.sequence_summary(state)
    projection = child_module(model, "logits_proj")
    return summary if projection is None else projection(summary)


def summary_reads(model: PreTrainedModel) -> str:
    """The positions the summary reads, by its `summary_type`: the first or the final position, or every position
    (the mean, or a `cls_index` the forward may pass)."""
    return {"first": READS_FIRST, "last": READS_FINAL}.get(model.sequence_summary.summary_type, READS_ALL)


def choice_summary_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return summary_head(model, state, inputs).view(-1, _choices(inputs))


def classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(state)


def _choices(inputs: dict[str, Any]) -> int:
    """How many choices each example has: multiple-choice models score one (example, choice) row at a time and
    regroup the scores into [batch, choices]."""
    return next(inputs[name] for name in ("input_ids", "inputs_embeds") if inputs.get(name) is not None).shape[1]


def choice_scores_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(state).view(-1, _choices(inputs))


def pooled_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return pooled_classifier(model)(state)


def eos_classification_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classification_head(state)


def timm_classifier(model: nn.Module) -> nn.Module:
    return model.timm_model.get_classifier()


def timm_classifier_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return timm_classifier(model)(state)


def token_score_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.score(state)


def output_embeddings_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
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


def decoder_output_projection_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
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


def frame_lm_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.lm_head(state)


def vocab_projector_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(state))))


def last_token_score_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    # `token_scorer` matched the family before training, when SPG's chain was no module of the model yet.
    scorer = model.score if child_module(model, "score") is not None else model.classifier
    return scorer(state)[:, 0]


def final_layer_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return classification_final_layer(model)(state)[:, 0]


def distilled_pair_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return (model.head(state) + model.dist_head(state)) / 2


def question_aware_span_head(
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


def frame_pooling_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    projected = model.projector(state)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        return model.classifier(projected.mean(dim=1))
    frame_mask = model._get_feature_vector_attention_mask(projected.shape[1], attention_mask)
    frame_mask = frame_mask.unsqueeze(-1).to(projected.dtype)
    pooled = (projected * frame_mask).sum(dim=1) / frame_mask.sum(dim=1)
    return model.classifier(pooled)
