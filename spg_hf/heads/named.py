"""Heads named with `spg_head` (and `spg_auxiliary_head`): the family of one module whose output is the prediction,
read from one example (`named_head_family`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spg_hf.heads.family import (
    NAMED_HEAD,
    READS_ALL,
    READS_FEATURE_MAP,
    READS_LABELLED,
    TOKEN_LEVEL_TASKS,
    HeadFamily,
    HeadFn,
    first_input,
)


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
