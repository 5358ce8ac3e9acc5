"""Tiny random models (hidden size 32) for every shared-head registry entry, and toy datasets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
import transformers
from datasets import Dataset

HIDDEN = 32
TEXT = dict(vocab_size=99, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
AUDIO = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    classifier_proj_size=16,
    mask_time_prob=0.0,
)
TINY_CONFIGS = {
    "BertForSequenceClassification": (transformers.BertConfig, TEXT),
    "RobertaForSequenceClassification": (transformers.RobertaConfig, TEXT),
    "ElectraForSequenceClassification": (transformers.ElectraConfig, dict(TEXT, embedding_size=HIDDEN)),
    "DistilBertForSequenceClassification": (
        transformers.DistilBertConfig,
        dict(vocab_size=99, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=64),
    ),
    "DebertaV2ForSequenceClassification": (transformers.DebertaV2Config, dict(TEXT, pooler_hidden_size=HIDDEN)),
    "BertForQuestionAnswering": (transformers.BertConfig, TEXT),
    "RobertaForQuestionAnswering": (transformers.RobertaConfig, TEXT),
    "DistilBertForQuestionAnswering": (
        transformers.DistilBertConfig,
        dict(vocab_size=99, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=64),
    ),
    "Wav2Vec2ForSequenceClassification": (transformers.Wav2Vec2Config, AUDIO),
    "HubertForSequenceClassification": (transformers.HubertConfig, AUDIO),
    "WavLMForSequenceClassification": (transformers.WavLMConfig, AUDIO),
}


def tiny_model(class_name: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    config_class, kwargs = TINY_CONFIGS[class_name]
    config = config_class(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, class_name)(config)


def tiny_bert(seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    return tiny_model("BertForSequenceClassification", seed=seed, **overrides)


def no_dropout() -> dict:
    return dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def text_dataset(size: int = 32, length: int = 12, seed: int = 0, regression: bool = False) -> Dataset:
    """Token sequences whose label is a learnable function of the second token."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (size, length), generator=generator)
    labels = (ids[:, 1].float() / 20.0).tolist() if regression else (ids[:, 1] > 50).long().tolist()
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels})


def qa_dataset(size: int = 16, length: int = 12, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (size, length), generator=generator)
    starts = torch.randint(1, length // 2, (size,), generator=generator)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "start_positions": starts.tolist(), "end_positions": (starts + 2).tolist()}
    )


@pytest.fixture
def output_dir(tmp_path):
    return str(tmp_path / "out")
