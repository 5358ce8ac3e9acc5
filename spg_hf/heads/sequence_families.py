"""The sequence-classification families of the registry (text, audio and image classifiers and regressors): its
largest group, kept apart so the registry reads by task. Within it, as in every task, the first family whose
`matches` holds is the model's."""

from __future__ import annotations

from torch import nn

from spg_hf.heads.family import (
    READS_ALL,
    READS_FIRST,
    READS_LAST,
    READS_VECTOR,
    HeadFamily,
)
from spg_hf.heads.functions import (
    base_linear_pooler_head,
    base_pooler_head,
    classifier_head,
    dense_classifier_head,
    dense_classifier_reads,
    distilled_pair_head,
    eos_classification_head,
    final_layer_head,
    frame_pooling_head,
    last_token_prediction_head,
    last_token_score_head,
    own_pooler_head,
    pooled_classifier_head,
    pre_classifier_head,
    prediction_head,
    summary_head,
    summary_reads,
    timm_classifier,
    timm_classifier_head,
)
from spg_hf.heads.modules import (
    base_pooler,
    child_module,
    classification_final_layer,
    classifies_pooled,
    has_linear,
    pooled_classifier,
    reads_text,
    token_scorer,
    uses_prediction_head,
)

SEQUENCE_CLASSIFICATION_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="frame_pooling",
        task="sequence_classification",
        rule="`projector` → masked mean over the valid frames → `classifier` (all frames)",
        matches=lambda m: (
            has_linear(m, "projector")
            and has_linear(m, "classifier")
            and hasattr(m, "_get_feature_vector_attention_mask")
        ),
        head=frame_pooling_head,
        reads=READS_ALL,
        capture="projector",
    ),
    HeadFamily(
        name="timm_classifier",
        task="sequence_classification",
        rule="the timm model's own classifier (`timm_model.get_classifier()`) on the features it pools (that vector)",
        matches=lambda m: (
            isinstance(getattr(m, "timm_model", None), nn.Module) and hasattr(m.timm_model, "get_classifier")
        ),
        head=timm_classifier_head,
        reads=READS_VECTOR,
        capture=timm_classifier,
    ),
    HeadFamily(
        name="eos_classification_head",
        task="sequence_classification",
        rule=(
            "`classification_head` on the decoder state of the last EOS token, in encoder-decoder classifiers (that "
            "vector)"
        ),
        matches=lambda m: child_module(m, "classification_head") is not None,
        head=eos_classification_head,
        reads=READS_VECTOR,
        capture="classification_head",
    ),
    HeadFamily(
        name="image_pooled",
        task="sequence_classification",
        rule=(
            "`classifier` (or a linear `fc` where `classifier` only pools, HGNetV2's) on the vector an image or audio "
            "model pools: its first token, or the mean over patches, positions or frames (that vector)"
        ),
        matches=lambda m: not reads_text(m) and pooled_classifier(m) is not None,
        head=pooled_classifier_head,
        reads=READS_VECTOR,
        capture=pooled_classifier,
        offers_pooled=True,
    ),
    HeadFamily(
        name="distilled_pair",
        task="sequence_classification",
        rule=(
            "the mean of a linear `head` and a linear distillation `dist_head` on the vector the model pools (that "
            "vector)"
        ),
        matches=lambda m: has_linear(m, "head") and has_linear(m, "dist_head"),
        head=distilled_pair_head,
        reads=READS_VECTOR,
        capture="head",
    ),
    HeadFamily(
        name="last_token_score",
        task="sequence_classification",
        rule=(
            "`score` (or a `classifier` that is the only head module, CTRL's) at the last non-padding token, left or "
            "right padding (that token)"
        ),
        matches=lambda m: reads_text(m) and token_scorer(m) is not None,
        head=last_token_score_head,
        reads=READS_LAST,
    ),
    HeadFamily(
        name="prediction_head_last",
        task="sequence_classification",
        rule="`head` → `drop` → `classifier` at the last non-padding token (that token)",
        matches=lambda m: uses_prediction_head(m, None),
        head=last_token_prediction_head,
        reads=READS_LAST,
    ),
    HeadFamily(
        name="dense_classifier",
        task="sequence_classification",
        rule=(
            '`dense` → `activation` → `classifier` on the first token (`classifier_pooling="bos"`), on the masked mean '
            'of the tokens (`"mean"`), or on every token with the logits averaged (`"late"`, the default) (first '
            "token, or all tokens)"
        ),
        matches=lambda m: (
            reads_text(m)
            and has_linear(m, "dense")
            and child_module(m, "activation") is not None
            and has_linear(m, "classifier")
            and getattr(m.config, "classifier_pooling", None) in ("bos", "mean", "late")
        ),
        head=dense_classifier_head,
        reads=dense_classifier_reads,
    ),
    HeadFamily(
        name="sequence_summary",
        task="sequence_classification",
        rule=(
            "the model's `sequence_summary` (first, final or every position, as its `summary_type` says; projection, "
            "activation) → `logits_proj` where the summary does not project to the labels itself (those positions)"
        ),
        matches=lambda m: child_module(m, "sequence_summary") is not None,
        head=summary_head,
        reads=summary_reads,
        capture="sequence_summary",
    ),
    HeadFamily(
        name="decoder_final_layer",
        task="sequence_classification",
        rule="a classification decoder's linear `final_layer` on its one query's output (Perceiver; that vector)",
        matches=lambda m: classification_final_layer(m) is not None,
        head=final_layer_head,
        reads=READS_FIRST,
        capture=classification_final_layer,
    ),
    HeadFamily(
        name="prediction_head_first",
        task="sequence_classification",
        rule='`classifier_pooling="cls"`: `head` → `drop` → `classifier` (first token)',
        matches=lambda m: uses_prediction_head(m, "cls"),
        head=prediction_head,
        reads=READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        name="prediction_head_mean",
        task="sequence_classification",
        rule='`classifier_pooling="mean"`: masked mean over the tokens → `head` → `drop` → `classifier` (all tokens)',
        matches=lambda m: uses_prediction_head(m, "mean"),
        head=prediction_head,
        reads=READS_ALL,
        offers_pooled=True,
    ),
    HeadFamily(
        name="pre_classifier",
        task="sequence_classification",
        rule="`pre_classifier` → ReLU → `dropout` → `classifier` (first token)",
        matches=lambda m: has_linear(m, "pre_classifier") and classifies_pooled(m),
        head=pre_classifier_head,
        reads=READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        name="own_pooler",
        task="sequence_classification",
        rule="the task model's own `pooler` → `dropout` → `classifier` (first token)",
        matches=lambda m: child_module(m, "pooler") is not None and classifies_pooled(m),
        head=own_pooler_head,
        reads=READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        name="base_pooler",
        task="sequence_classification",
        rule=(
            "the base model's pooler module → `dropout` → `classifier` (first token of the state the pooler reads: "
            "CANINE pools its downsampled sequence)"
        ),
        matches=lambda m: (
            child_module(m.base_model, "pooler") is not None
            and not has_linear(m.base_model, "pooler")
            and classifies_pooled(m)
        ),
        head=base_pooler_head,
        reads=READS_FIRST,
        capture=base_pooler,
        offers_pooled=True,
    ),
    HeadFamily(
        name="base_linear_pooler",
        task="sequence_classification",
        rule="the base model's linear `pooler` and `pooler_activation` → `dropout` → `classifier` (first token)",
        matches=lambda m: (
            has_linear(m.base_model, "pooler")
            and child_module(m.base_model, "pooler_activation") is not None
            and classifies_pooled(m)
        ),
        head=base_linear_pooler_head,
        reads=READS_FIRST,
        offers_pooled=True,
    ),
    HeadFamily(
        name="first_token_classifier",
        task="sequence_classification",
        rule=(
            "a `classifier` head module (dense, activation, projection) that reads the first token itself, or is "
            "handed it (first token)"
        ),
        matches=lambda m: (
            reads_text(m) and child_module(m, "classifier") is not None and not has_linear(m, "classifier")
        ),
        head=classifier_head,
        reads=READS_FIRST,
        capture="classifier",
    ),
)
