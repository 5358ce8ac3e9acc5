"""The registry of head families (`FAMILIES`), grouped by task; the sequence-classification group is in
`spg_hf.heads.sequence_families`."""

from __future__ import annotations

from spg_hf.heads.family import (
    READS_ALL,
    READS_FEATURE_MAP,
    READS_FIRST,
    READS_LABELLED,
    HeadFamily,
)
from spg_hf.heads.functions import (
    choice_scores_head,
    choice_summary_head,
    classifier_head,
    decoder_output_projection_head,
    frame_lm_head,
    output_embeddings_head,
    question_aware_span_head,
    question_masked_span_head,
    span_head,
    summary_reads,
    token_score_head,
    vocab_projector_head,
)
from spg_hf.heads.modules import (
    child_module,
    decoder_output_projection,
    final_linear_outputs,
    has_linear,
    has_span_layer,
    lm_head_module,
    segmentation_auxiliary,
    segmentation_classifier,
    segmentation_head,
)
from spg_hf.heads.sequence_families import SEQUENCE_CLASSIFICATION_FAMILIES

# Families by task. Within a task the first family whose `matches` holds is the model's: a more specific head is
# listed before a more general one that would also match it. Tasks never share a family.
QUESTION_ANSWERING_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="span",
        task="question_answering",
        rule="`qa_outputs` on every token state, split into start and end logits (all tokens)",
        matches=lambda m: has_span_layer(m, "qa_outputs"),
        head=span_head("qa_outputs"),
        reads=READS_ALL,
        capture="qa_outputs",
    ),
    HeadFamily(
        name="question_aware_span",
        task="question_answering",
        rule=(
            "`splinter_qass`: each token's start and end scores against the question token's (`question_positions`, or "
            "the first `question_token_id`), padding masked out as the model does (all tokens)"
        ),
        matches=lambda m: child_module(m, "splinter_qass") is not None and hasattr(m, "question_token_id"),
        head=question_aware_span_head,
        reads=READS_ALL,
        capture="splinter_qass",
    ),
    HeadFamily(
        name="span_classifier",
        task="question_answering",
        rule=(
            "a 2-output `classifier` on every token state, after the model's own transform, split into start and end "
            "logits (all tokens)"
        ),
        matches=lambda m: has_span_layer(m, "classifier"),
        head=span_head("classifier"),
        reads=READS_ALL,
        capture="classifier",
    ),
    HeadFamily(
        name="question_masked_span",
        task="question_answering",
        rule=(
            "`qa_classifier` (transform and 2-output `qa_outputs`) on every token state, question tokens masked out as "
            "the model does, split into start and end logits (all tokens)"
        ),
        matches=lambda m: child_module(m, "qa_classifier") is not None and hasattr(m, "prepare_question_mask"),
        head=question_masked_span_head,
        reads=READS_ALL,
        capture="qa_classifier",
    ),
)


SEMANTIC_SEGMENTATION_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="segmentation_classifier",
        task="semantic_segmentation",
        rule=(
            "the main head's last class convolution (`decode_head`, `segmentation_head` or `head`, with what follows "
            "it there, e.g. DPT's upsampling) on every feature-map position; logits upsampled to the labels as the "
            "model's loss does; every labelled pixel a trajectory (the ignore index, 255 for most, is none); an "
            "auxiliary head (UperNet's, BEiT's, DPT's) gets a chain of its own, its loss weighted as the model weights "
            "it (every feature-map position)"
        ),
        matches=lambda m: segmentation_classifier(m) is not None and m.config.num_labels > 1,
        head=segmentation_head,
        reads=READS_FEATURE_MAP,
        capture=segmentation_classifier,
        auxiliary=segmentation_auxiliary,
    ),
)


CTC_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="ctc_lm_head",
        task="ctc",
        rule=(
            "a linear `lm_head` on every frame (after the model's own dropout); an utterance survives while greedy CTC "
            "decoding (argmax per valid frame, repeats collapsed, blanks dropped) gets at least half of its target "
            "tokens right at their positions; module terms are the model's own CTC loss per utterance (all frames)"
        ),
        matches=lambda m: has_linear(m, "lm_head") and hasattr(m, "_get_feat_extract_output_lengths"),
        head=frame_lm_head,
        reads=READS_ALL,
        capture="lm_head",
    ),
)


MULTIPLE_CHOICE_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="choice_classifier",
        task="multiple_choice",
        rule=(
            "a `classifier` ending in one output (a linear layer, or Funnel's two) on each choice's pooled vector, "
            "scores regrouped into [batch, choices] (each choice's vector)"
        ),
        matches=lambda m: final_linear_outputs(m, "classifier") == 1,
        head=choice_scores_head,
        reads=READS_FIRST,
        capture="classifier",
    ),
    HeadFamily(
        name="choice_summary",
        task="multiple_choice",
        rule=(
            "the model's `sequence_summary` on each choice (first, final or every position, as its `summary_type` "
            "says) → one-output `logits_proj`, scores regrouped into [batch, choices] (the positions the summary reads)"
        ),
        matches=lambda m: (
            child_module(m, "sequence_summary") is not None and final_linear_outputs(m, "logits_proj") == 1
        ),
        head=choice_summary_head,
        reads=summary_reads,
        capture="sequence_summary",
    ),
)


TOKEN_CLASSIFICATION_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="token_classifier",
        task="token_classification",
        rule="a linear `classifier` on every token (after the model's own dropout or transform) (labelled tokens)",
        matches=lambda m: has_linear(m, "classifier"),
        head=classifier_head,
        reads=READS_LABELLED,
        capture="classifier",
    ),
    HeadFamily(
        name="token_score",
        task="token_classification",
        rule="a `score` ending in a linear layer on every token (labelled tokens)",
        matches=lambda m: final_linear_outputs(m, "score") is not None,
        head=token_score_head,
        reads=READS_LABELLED,
        capture="score",
    ),
)


MASKED_LM_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="vocab_projector",
        task="masked_lm",
        rule="`vocab_transform` → activation → `vocab_layer_norm` → `vocab_projector` (labelled tokens)",
        matches=lambda m: has_linear(m, "vocab_transform") and has_linear(m, "vocab_projector"),
        head=vocab_projector_head,
        reads=READS_LABELLED,
        capture="vocab_transform",
    ),
    HeadFamily(
        name="masked_lm_head",
        task="masked_lm",
        rule=(
            "the child module holding the output embeddings: head transform (dense, activation, norm) and decoder "
            "(labelled tokens)"
        ),
        matches=lambda m: lm_head_module(m) is not None,
        head=output_embeddings_head,
        reads=READS_LABELLED,
        capture=lm_head_module,
    ),
)


CAUSAL_LM_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="causal_lm_head",
        task="causal_lm",
        rule=(
            "the child module holding the output embeddings (`lm_head`; the output embeddings alone where it holds "
            "nothing else: XLM's and Flaubert's `pred_layer`), then the config scales its forward applies to the "
            "head's output, read from the forward "
            "(Cohere's `logit_scale`, Granite's division by `logits_scaling`, Falcon-H1's `lm_head_multiplier`; "
            "MiniCPM3's `logits_scaling` scales the head's input, which the captured state holds), and "
            "`final_logit_softcapping` (Gemma 2/3); labels as the model's loss reads them: shifted by one, or "
            "unshifted where its loss reads them so (XLNet's, XLM's and Flaubert's) (labelled tokens)"
        ),
        matches=lambda m: lm_head_module(m) is not None,
        head=output_embeddings_head,
        reads=READS_LABELLED,
        capture=lm_head_module,
    ),
)


SEQ2SEQ_LM_FAMILIES: tuple[HeadFamily, ...] = (
    HeadFamily(
        name="seq2seq_lm_head",
        task="seq2seq_lm",
        rule=(
            "the decoder's LM head (the child module holding the output embeddings: `lm_head`, Whisper's `proj_out`; "
            "EncoderDecoderModel's decoder's) plus `final_logits_bias` where the model has one; labels as the loss "
            "reads them, unshifted (labelled tokens)"
        ),
        matches=lambda m: lm_head_module(m) is not None,
        head=output_embeddings_head,
        reads=READS_LABELLED,
        capture=lm_head_module,
    ),
    HeadFamily(
        name="decoder_output_projection",
        task="seq2seq_lm",
        rule=(
            "the linear `output_projection` that ends the base model's decoder, where the model has no LM head of its "
            "own (FSMT); labels unshifted (labelled tokens)"
        ),
        matches=lambda m: decoder_output_projection(m) is not None,
        head=decoder_output_projection_head,
        reads=READS_LABELLED,
        capture=decoder_output_projection,
    ),
)

FAMILIES: tuple[HeadFamily, ...] = (
    *QUESTION_ANSWERING_FAMILIES,
    *SEMANTIC_SEGMENTATION_FAMILIES,
    *SEQUENCE_CLASSIFICATION_FAMILIES,
    *CTC_FAMILIES,
    *MULTIPLE_CHOICE_FAMILIES,
    *TOKEN_CLASSIFICATION_FAMILIES,
    *MASKED_LM_FAMILIES,
    *CAUSAL_LM_FAMILIES,
    *SEQ2SEQ_LM_FAMILIES,
)
