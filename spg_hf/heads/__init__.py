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

The package: `family` (the family type and the capture hooks), `functions` (the heads as functions), `modules` (what
head modules look like), `registry` (`FAMILIES`, by task), `resolve` (task, family and the logits check), `named`
(heads named with `spg_head`).
"""

from spg_hf.heads.family import (
    AUXILIARY_HEAD,
    NAMED_HEAD,
    READS_ALL,
    READS_FEATURE_MAP,
    READS_FINAL,
    READS_FIRST,
    READS_LABELLED,
    READS_LAST,
    READS_VECTOR,
    TASK_SUFFIXES,
    TOKEN_LEVEL_TASKS,
    AuxiliaryHead,
    HeadFamily,
    register_call_inputs,
)
from spg_hf.heads.modules import lm_head_module
from spg_hf.heads.named import module_head_family, named_head_family
from spg_hf.heads.registry import FAMILIES
from spg_hf.heads.resolve import HeadCheck, head_family_for, resized_like, task_of, verify_head

__all__ = [
    "AUXILIARY_HEAD",
    "FAMILIES",
    "NAMED_HEAD",
    "READS_ALL",
    "READS_FEATURE_MAP",
    "READS_FINAL",
    "READS_FIRST",
    "READS_LABELLED",
    "READS_LAST",
    "READS_VECTOR",
    "TASK_SUFFIXES",
    "TOKEN_LEVEL_TASKS",
    "AuxiliaryHead",
    "HeadCheck",
    "HeadFamily",
    "head_family_for",
    "lm_head_module",
    "module_head_family",
    "named_head_family",
    "register_call_inputs",
    "resized_like",
    "task_of",
    "verify_head",
]
