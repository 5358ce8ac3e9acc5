"""SPG's objectives, one object each, as transformers' `LOSS_MAPPING` has one loss per task.

An objective says, for a batch and a prediction of the shared head: the targets (read from the batch before Trainer
pops its labels), the per-trajectory loss CE_t(i) and correctness c_t(i), which entries are trajectories at all, and
the loss the model's own loss reduces those terms to. `check_objective` holds the last against the loss Trainer
computes for the same batch, so a family scores exactly what the model's loss scores, or is refused before training.

Adding an objective: one subclass here, registered in `OBJECTIVES`, and a family (or a task in `TASK_OBJECTIVES`)
that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # the label of an entry that is no trajectory, as transformers' losses ignore it


@dataclass(frozen=True)
class CTCTargets:
    """What a CTC model's loss reads besides the logits: the labels (padded with -100 or the blank), the number of
    valid frames of each utterance, and the model's own CTC settings."""

    labels: torch.Tensor  # [batch, label length]
    frame_lengths: torch.Tensor  # [batch]
    blank: int
    reduction: str  # the model's ctc_loss_reduction: "mean" or "sum"
    zero_infinity: bool
    ignore_index: int = IGNORE_INDEX

    def token_mask(self) -> torch.Tensor:
        """Which label positions are target tokens, as transformers' CTC loss reads them."""
        return (self.labels != self.ignore_index) & (self.labels != self.blank)


@dataclass(frozen=True)
class SegmentationTargets:
    """A segmentation model's labels [batch, height, width] and the label its loss ignores (255 for most)."""

    labels: torch.Tensor
    ignore_index: int

    def pixels(self) -> torch.Tensor:
        """Which pixels are trajectories: every labelled one, flattened."""
        return self.labels.flatten() != self.ignore_index


Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | CTCTargets | SegmentationTargets
Terms = tuple[torch.Tensor, torch.Tensor]


class Objective:
    """What every objective answers; the defaults hold for most of them, and each subclass overrides what differs.

    `token_level`: every labelled position is a trajectory, and the chain runs on the positions the model got right
    only (spg.token_level_terms). `smoothed`: Trainer's label smoother smooths this loss, so the module terms are
    smoothed alike."""

    name: str
    token_level = False
    smoothed = False

    def targets(self, model: nn.Module, inputs: dict[str, Any]) -> Targets:
        return inputs["labels"]

    def prediction(self, outputs: Any) -> Logits:
        """The model's own prediction in its outputs."""
        return outputs["logits"]

    def reads(self, labels: Any) -> bool:
        """Whether labels of this kind can be read this way at all (integer classes, 0/1 multi-labels, ...)."""
        return True

    def label_smoothing(self, trainer_smoothing: float) -> float:
        """The smoothing of this objective's terms: Trainer's, where Trainer smooths this loss."""
        return trainer_smoothing if self.smoothed else 0.0

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        """CE_t(i) and c_t(i) per trajectory, in float32 (`smoothing`: as Trainer's label smoother smooths it)."""
        raise NotImplementedError

    def trajectories(self, targets: Targets) -> torch.Tensor | None:
        """Which entries of the terms are trajectories (the others count in no term, denominator or survival
        share); None: all."""
        return None

    def model_loss(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> torch.Tensor:
        """The terms reduced as the model's own loss reduces them: the mean over the trajectories."""
        losses, _ = self.terms(logits, targets, tolerance, smoothing)
        trajectories = self.trajectories(targets)
        return (losses if trajectories is None else losses[trajectories]).mean()


class Classification(Objective):
    """One label per example (or choice): argmax == label is right; the cross-entropy; -100 is no trajectory."""

    name = "classification"
    smoothed = True

    def reads(self, labels: Any) -> bool:
        return isinstance(labels, torch.Tensor) and not labels.is_floating_point()

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        logits = logits.float()
        losses = F.cross_entropy(logits, targets, reduction="none", label_smoothing=smoothing)
        return losses, logits.argmax(-1) == targets

    def trajectories(self, targets: Targets) -> torch.Tensor | None:
        return targets != IGNORE_INDEX


class Regression(Objective):
    """|prediction - label| <= tolerance is right; the squared error is the loss (MSELoss)."""

    name = "regression"

    def reads(self, labels: Any) -> bool:
        return isinstance(labels, torch.Tensor) and labels.is_floating_point()

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        error = logits.float().view(-1) - targets.float().view(-1)
        return error.square(), error.abs() <= tolerance


class MultiLabel(Objective):
    """Every label right (sigmoid > 0.5 against the label); the mean binary cross-entropy over the labels."""

    name = "multi_label"

    def reads(self, labels: Any) -> bool:
        # Soft targets in [0, 1] are read as BCE reads them; other floats are regression targets, never multi-label.
        return (
            isinstance(labels, torch.Tensor)
            and labels.is_floating_point()
            and bool(((labels >= 0) & (labels <= 1)).all())
        )

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        logits, targets = logits.float(), targets.float()
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
        return losses, ((logits > 0) == (targets > 0.5)).all(-1)


class QuestionAnswering(Objective):
    """Start and end argmax both right; the mean of the start and end cross-entropies. Positions outside the window
    are clamped to an ignored index, as the models' own QA loss does."""

    name = "question_answering"

    def targets(self, model: nn.Module, inputs: dict[str, Any]) -> Targets:
        return inputs["start_positions"], inputs["end_positions"]

    def prediction(self, outputs: Any) -> Logits:
        return outputs["start_logits"], outputs["end_logits"]

    def _each_side(self, logits: Logits, targets: Targets) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        sides = []
        for position_logits, positions in zip(logits, targets, strict=True):
            ignored_index = position_logits.size(1)
            sides.append((position_logits.float(), positions.view(-1).clamp(0, ignored_index), ignored_index))
        return sides

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        losses, hits = [], []
        for position_logits, positions, ignored_index in self._each_side(logits, targets):
            losses.append(F.cross_entropy(position_logits, positions, ignore_index=ignored_index, reduction="none"))
            hits.append(position_logits.argmax(-1) == positions)
        return (losses[0] + losses[1]) / 2, hits[0] & hits[1]

    def model_loss(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> torch.Tensor:
        # Each side is a mean over its own positions inside the window.
        sides = [
            F.cross_entropy(position_logits, positions, ignore_index=ignored_index)
            for position_logits, positions, ignored_index in self._each_side(logits, targets)
        ]
        return (sides[0] + sides[1]) / 2


class TokenClassification(Classification):
    """One class per labelled position, the label read where it stands: token classification, masked and
    sequence-to-sequence LMs, and LMs whose loss reads the labels unshifted (XLNet, XLM)."""

    name = "token_classification"
    token_level = True

    def targets(self, model: nn.Module, inputs: dict[str, Any]) -> Targets:
        return inputs["labels"]

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        targets = aligned(targets, logits.shape[-2])
        return super().terms(logits.flatten(0, -2), targets.flatten(), tolerance, smoothing)

    def trajectories(self, targets: Targets) -> torch.Tensor:
        return targets.flatten() != IGNORE_INDEX

    def model_loss(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> torch.Tensor:
        losses, _ = self.terms(logits, targets, tolerance, smoothing)
        return losses[self.trajectories(aligned(targets, logits.shape[-2]))].mean()


class NextToken(TokenClassification):
    """Causal language modelling: each position predicts the next token (labels shifted left by one, or the
    `shift_labels` input). In packed or padding-free batches (`position_ids` restarting at 0) the last token of a
    sequence predicts nothing: no trajectory crosses into the next sequence, whatever the collator did to the
    labels."""

    name = "next_token"

    def targets(self, model: nn.Module, inputs: dict[str, Any]) -> Targets:
        return next_token_targets(inputs, inputs["labels"])


class CTC(Objective):
    """One utterance per trajectory: right while greedy decoding gets at least half its target tokens right at their
    positions (`ctc_correct`); the term is the model's own CTC loss of the utterance (`ctc_terms`)."""

    name = "ctc"

    def targets(self, model: nn.Module, inputs: dict[str, Any]) -> Targets:
        return ctc_targets(model, inputs)

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        return ctc_terms(logits, targets)


class Segmentation(Objective):
    """One trajectory per labelled pixel (`segmentation_terms`); the ignored label is no trajectory."""

    name = "segmentation"

    def targets(self, model: nn.Module, inputs: dict[str, Any]) -> Targets:
        config = getattr(model, "config", None)  # a model of your own (spg_head) has none: 255, as torchvision's
        ignore_index = getattr(config, "semantic_loss_ignore_index", getattr(config, "loss_ignore_index", 255))
        return SegmentationTargets(inputs["labels"], ignore_index)

    def terms(self, logits: Logits, targets: Targets, tolerance: float, smoothing: float = 0.0) -> Terms:
        return segmentation_terms(logits, targets)

    def trajectories(self, targets: Targets) -> torch.Tensor:
        return targets.pixels()


OBJECTIVES: dict[str, Objective] = {
    objective.name: objective
    for objective in (
        Classification(),
        Regression(),
        MultiLabel(),
        QuestionAnswering(),
        TokenClassification(),
        NextToken(),
        CTC(),
        Segmentation(),
    )
}
# The objective of each task class, in the order the loss check tries them where the batch's labels leave the
# reading open (the first is what the model's config says; sequence classification reads its problem_type).
TASK_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("classification", "regression", "multi_label"),
    "multiple_choice": ("classification",),
    "question_answering": ("question_answering",),
    "token_classification": ("token_classification",),
    "masked_lm": ("token_classification",),
    "causal_lm": ("next_token", "token_classification"),
    "seq2seq_lm": ("token_classification",),
    "semantic_segmentation": ("segmentation",),
    "ctc": ("ctc",),
}


def configured_objective(task: str, config: Any) -> str:
    """The objective a task model's config says, as its loss decides it: sequence classifiers by problem_type (a
    model whose config leaves it unset sets it in its first forward with labels: one label is regression)."""
    if task != "sequence_classification":
        return TASK_OBJECTIVES[task][0]
    problem_type = config.problem_type
    if problem_type == "regression" or (problem_type is None and config.num_labels == 1):
        return "regression"
    if problem_type in (None, "single_label_classification"):
        return "classification"
    if problem_type == "multi_label_classification":
        return "multi_label"
    raise ValueError(f"SPG does not know problem_type={problem_type!r}.")


def aligned(targets: torch.Tensor, length: int) -> torch.Tensor:
    """Per-position targets over the `length` positions the model ran: positions it prepended (PEFT's
    prompt-learning virtual tokens) are no trajectories."""
    prepended = length - targets.shape[-1]
    return F.pad(targets, (prepended, 0), value=IGNORE_INDEX) if prepended > 0 else targets


def next_token_targets(inputs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
    """Per position, the next token's label (`NextToken`)."""
    if inputs.get("shift_labels") is not None:
        return inputs["shift_labels"]
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    position_ids = inputs.get("position_ids")
    if position_ids is not None and position_ids.shape == labels.shape:
        next_starts_a_sequence = F.pad(position_ids[..., 1:] == 0, (0, 1), value=True)
        targets = targets.masked_fill(next_starts_a_sequence, IGNORE_INDEX)
    return targets


def ctc_targets(model: nn.Module, inputs: dict[str, Any]) -> CTCTargets:
    """The labels of a CTC model's batch and, per utterance, the frames its loss reads, as its forward computes them:
    the feature encoder's output length for the attention mask's sum (the whole input without a mask); blank,
    reduction and zero_infinity from its config."""
    features = inputs[model.main_input_name]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long, device=features.device)
    else:
        lengths = attention_mask.sum(-1)
    config = model.config
    return CTCTargets(
        inputs["labels"],
        model._get_feat_extract_output_lengths(lengths).to(torch.long),
        config.pad_token_id,
        config.ctc_loss_reduction,
        config.ctc_zero_infinity,
    )


def ctc_correct(logits: torch.Tensor, targets: CTCTargets) -> torch.Tensor:
    """Per utterance, the authors' CTC survival rule: greedy decoding of the logits (argmax on each valid frame,
    repeats collapsed, blanks dropped) gets at least half of the target tokens right at their positions
    (decoded[i] == target[i] for i < len(target)). An utterance with no target tokens is right when nothing is
    decoded (the rule's share is 0 / 0 there)."""
    frames = logits.argmax(-1)  # [batch, frames]
    labels = targets.labels.to(frames.device)
    token_mask = targets.token_mask().to(frames.device)
    batch, length = frames.shape
    valid = torch.arange(length, device=frames.device) < targets.frame_lengths.to(frames.device)[:, None]
    starts_a_run = F.pad(frames[:, 1:] != frames[:, :-1], (1, 0), value=True)
    emitted = valid & starts_a_run & (frames != targets.blank)
    # Decoded tokens and target tokens, each left-aligned in a row of `width`; index `width` takes the rest.
    width = max(length, labels.shape[1])
    decoded = frames.new_full((batch, width + 1), -1)
    decoded.scatter_(1, torch.where(emitted, emitted.long().cumsum(1) - 1, width), frames)
    target = labels.new_full((batch, width + 1), -2)
    target.scatter_(1, torch.where(token_mask, token_mask.long().cumsum(1) - 1, width), labels)
    right = (decoded[:, :width] == target[:, :width]).sum(1)
    total = token_mask.sum(1)
    return torch.where(total > 0, 2 * right >= total, ~emitted.any(1))


def ctc_terms(logits: torch.Tensor, targets: CTCTargets) -> Terms:
    """Per utterance, the model's own CTC loss (its blank and zero_infinity, as transformers' `ForCTCLoss` computes
    it with reduction 'none') and `ctc_correct`.

    spg_loss averages the per-example terms over the batch (or the survivors), so each utterance's term is scaled
    to make a module term over a batch in which every utterance is alive equal the model's own loss on that module's
    logits: reduction 'mean' divides each utterance's loss by its target length (as torch's ctc_loss does before
    its batch mean), reduction 'sum' multiplies it by the number of utterances (the batch mean times the batch size
    is the sum). Survivors then count with the weight the model's loss gives them."""
    token_mask = targets.token_mask().to(logits.device)
    labels = targets.labels.to(logits.device)
    target_lengths = token_mask.sum(-1)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):
        losses = F.ctc_loss(
            log_probs,
            labels.masked_select(token_mask),
            targets.frame_lengths.to(logits.device),
            target_lengths,
            blank=targets.blank,
            reduction="none",
            zero_infinity=targets.zero_infinity,
        )
    if targets.reduction == "mean":
        losses = losses / target_lengths.clamp(min=1)
    elif targets.reduction == "sum":
        losses = losses * losses.numel()
    else:
        raise ValueError(
            f"SPG does not know ctc_loss_reduction={targets.reduction!r} (the model's loss takes 'mean' or 'sum')."
        )
    return losses, ctc_correct(logits, targets)


def segmentation_terms(logits: torch.Tensor, targets: SegmentationTargets) -> Terms:
    """Per labelled pixel (flattened over the batch), the cross-entropy and correctness of [batch, classes, h, w]
    logits, upsampled to the labels' size as the segmentation models' own loss does (bilinear, corners unaligned);
    an ignored pixel gets loss 0 and is no trajectory (`SegmentationTargets.pixels`)."""
    logits = F.interpolate(logits.float(), size=targets.labels.shape[-2:], mode="bilinear", align_corners=False)
    losses = F.cross_entropy(logits, targets.labels, ignore_index=targets.ignore_index, reduction="none")
    return losses.flatten(), (logits.argmax(1) == targets.labels).flatten()


@dataclass(frozen=True)
class ScoredHead:
    """One head's part of the model's loss in the loss check: its objective, its prediction (the family's head on
    the captured state), its targets and the weight the model's loss gives it."""

    objective: Objective
    prediction: Logits
    targets: Targets
    weight: float = 1.0


def spg_base_loss(heads: list[ScoredHead], tolerance: float, smoothing: float) -> torch.Tensor:
    """What SPG's objectives make of the heads' predictions, reduced as the model's loss reduces them."""
    total = torch.zeros(())
    for head in heads:
        loss = head.objective.model_loss(
            head.prediction, head.targets, tolerance, head.objective.label_smoothing(smoothing)
        )
        total = total + head.weight * loss.detach().float().cpu()
    return total


def losses_agree(computed: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the rounding of a recomputation: in float32, or from a loss the model computed in half precision
    (bf16 keeps 8 bits of mantissa: 0.4 % per rounding)."""
    tolerance = 2e-3 if expected.dtype in (torch.float32, torch.float64) else 2e-2
    return bool(torch.isclose(computed.float(), expected.detach().float().cpu(), rtol=tolerance, atol=tolerance / 10))
