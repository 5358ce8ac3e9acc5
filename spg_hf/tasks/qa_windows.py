"""Windows: a question with a long context becomes several overlapping model inputs, and the start/end logits of
all a question's windows become one answer (HF run_qa's utils_qa.py, shortened)."""

from __future__ import annotations

import collections
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase


def _tokenize_windows(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> tuple[Any, int]:
    """Tokenize question + context into windows of max_seq_length overlapping by doc_stride tokens."""
    question_first = tokenizer.padding_side == "right"
    # Leading whitespace in some SQuAD questions would only waste window room.
    questions = [question.lstrip() for question in examples["question"]]
    first, second = (questions, examples["context"]) if question_first else (examples["context"], questions)
    windows = tokenizer(
        first,
        second,
        truncation="only_second" if question_first else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )
    return windows, 1 if question_first else 0


def prepare_train_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> dict[str, list]:
    """Windows with start_positions / end_positions: the answer's token span, or the CLS index when the
    (first) answer is not wholly inside the window or the question has none."""
    windows, context_id = _tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    example_index = windows.pop("overflow_to_sample_mapping")
    offset_mapping = windows.pop("offset_mapping")
    windows["start_positions"], windows["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = windows["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        answers = examples["answers"][example_index[i]]
        start, end = cls_index, cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_tokens = [t for t, sequence_id in enumerate(windows.sequence_ids(i)) if sequence_id == context_id]
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start = max(t for t in context_tokens if offsets[t][0] <= start_char)
                end = min(t for t in context_tokens if offsets[t][1] >= end_char)
        windows["start_positions"].append(start)
        windows["end_positions"].append(end)
    return windows


def prepare_validation_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> dict[str, list]:
    """Windows with example_id and an offset_mapping that is None outside the context, for post-processing.
    Both columns must be removed before the windows go to the model."""
    windows, context_id = _tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    example_index = windows.pop("overflow_to_sample_mapping")
    windows["example_id"] = [examples["id"][index] for index in example_index]
    windows["offset_mapping"] = [
        [
            offset if sequence_id == context_id else None
            for offset, sequence_id in zip(offsets, windows.sequence_ids(i), strict=True)
        ]
        for i, offsets in enumerate(windows["offset_mapping"])
    ]
    return windows


def postprocess_qa_predictions(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """The answer text for each question id: the best-scoring span (start logit + end logit) over all its windows,
    among the n_best_size best starts x ends of each window, inside the context, end >= start, at most
    max_answer_length tokens. v2.0: '' when the smallest null score (CLS start + end) beats that span's score by
    more than null_score_diff_threshold. Rows of the logits may be padded with -100 past a window's length.
    """
    if len(features) != len(start_logits) or len(features) != len(end_logits):
        raise ValueError(f"{len(features)} windows but {len(start_logits)} / {len(end_logits)} rows of logits.")
    windows_of = collections.defaultdict(list)
    for window, example_id in enumerate(features["example_id"]):
        windows_of[example_id].append(window)
    all_offsets = features["offset_mapping"]

    predictions = {}
    for example in examples:
        best_score, best_text, null_score = -np.inf, "", np.inf
        for window in windows_of[example["id"]]:
            starts, ends, offsets = start_logits[window], end_logits[window], all_offsets[window]
            null_score = min(null_score, starts[0] + ends[0])
            for start in np.argsort(starts)[::-1][:n_best_size]:
                for end in np.argsort(ends)[::-1][:n_best_size]:
                    if max(start, end) >= len(offsets) or offsets[start] is None or offsets[end] is None:
                        continue
                    if not 0 <= end - start < max_answer_length or starts[start] + ends[end] <= best_score:
                        continue
                    best_score = starts[start] + ends[end]
                    best_text = example["context"][offsets[start][0] : offsets[end][1]]
        if version_2_with_negative and null_score - best_score > null_score_diff_threshold:
            best_text = ""
        predictions[example["id"]] = best_text
    return predictions
