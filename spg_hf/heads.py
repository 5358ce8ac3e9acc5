"""Per-model shared heads: what each supported model applies to its final hidden state.

Each entry reproduces one model class's own head, so the TRP chain's states go through the same layers (shared, not
copied) as the base prediction. Adding a model is one entry: its task, where its head's input comes from, the head
itself, and (optionally) the final classifier the reference code's "pooled" attach point feeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

HeadFn = Callable[[PreTrainedModel, torch.Tensor, dict[str, Any]], Any]


@dataclass(frozen=True)
class SharedHead:
    task: str  # "sequence_classification" or "question_answering"
    head: HeadFn  # (model, hidden state, model inputs) -> logits, or (start_logits, end_logits)
    # Module whose forward input (pre-hook) carries the head's input; None: the output[0] of model.base_model.
    head_input_module: str | None = None
    # Final classifier layer whose input is the pooled vector (the "pooled" attach point); None: not offered.
    pooled_classifier: str | None = None


def _split_span_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    start_logits, end_logits = logits.split(1, dim=-1)
    return start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()


def _bert_classification(model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(model.bert.pooler(hidden)))


def _classification_head_on_tokens(
    model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]
) -> torch.Tensor:
    return model.classifier(hidden)


def _distilbert_classification(model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(hidden[:, 0]))))


def _deberta_v2_classification(model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    return model.classifier(model.dropout(model.pooler(hidden)))


def _span_head(model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return _split_span_logits(model.qa_outputs(hidden))


def _distilbert_span_head(
    model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]
) -> tuple[torch.Tensor, ...]:
    return _split_span_logits(model.qa_outputs(model.dropout(hidden)))


def _audio_classification(model: PreTrainedModel, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    projected = model.projector(hidden)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        return model.classifier(projected.mean(dim=1))
    frame_mask = model._get_feature_vector_attention_mask(projected.shape[1], attention_mask)
    frame_mask = frame_mask.unsqueeze(-1).to(projected.dtype)
    pooled = (projected * frame_mask).sum(dim=1) / frame_mask.sum(dim=1)
    return model.classifier(pooled)


_AUDIO = SharedHead("sequence_classification", _audio_classification, head_input_module="projector")

SHARED_HEADS: dict[str, SharedHead] = {
    "BertForSequenceClassification": SharedHead(
        "sequence_classification", _bert_classification, pooled_classifier="classifier"
    ),
    "RobertaForSequenceClassification": SharedHead("sequence_classification", _classification_head_on_tokens),
    "ElectraForSequenceClassification": SharedHead("sequence_classification", _classification_head_on_tokens),
    "DistilBertForSequenceClassification": SharedHead(
        "sequence_classification", _distilbert_classification, pooled_classifier="classifier"
    ),
    "DebertaV2ForSequenceClassification": SharedHead(
        "sequence_classification", _deberta_v2_classification, pooled_classifier="classifier"
    ),
    "BertForQuestionAnswering": SharedHead("question_answering", _span_head),
    "RobertaForQuestionAnswering": SharedHead("question_answering", _span_head),
    "DistilBertForQuestionAnswering": SharedHead("question_answering", _distilbert_span_head),
    "Wav2Vec2ForSequenceClassification": _AUDIO,
    "HubertForSequenceClassification": _AUDIO,
    "WavLMForSequenceClassification": _AUDIO,
}


def shared_head_for(model: nn.Module) -> SharedHead:
    """The registry entry for this model's class; a ValueError naming the supported classes otherwise."""
    name = type(model).__name__
    if name not in SHARED_HEADS:
        raise ValueError(
            f"SPG does not support {name}. Supported model classes: {', '.join(sorted(SHARED_HEADS))}. "
            "Add an entry to spg_hf.heads.SHARED_HEADS, or set spg_enabled=False."
        )
    return SHARED_HEADS[name]
