"""Which task and family a model has (`task_of`, `head_family_for`), and the logits check on one batch
(`verify_head`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.trainer_utils import unwrap_peft_model

from spg_hf.heads.family import TASK_SUFFIXES, HeadFamily, register_call_inputs
from spg_hf.heads.modules import lm_head_module
from spg_hf.heads.registry import FAMILIES
from spg_hf.objectives import IGNORE_INDEX, Logits


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


def scalar_loss(loss: Any) -> torch.Tensor | None:
    """A loss as a scalar tensor, or None where there is none (a model's `None`, or tuple outputs whose first
    element is its logits)."""
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
    if forward is None:  # the model's own call: its outputs' loss, where it returns one
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
    return HeadCheck([shared, *auxiliary_calls[:1]], state.shape[-1], scalar_loss(loss))


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
