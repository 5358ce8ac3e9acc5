"""Sequential Policy Gradient: the temporary module chain and the loss (the paper's equations in order, arXiv
2506.15051).

Module t maps h_{t-1} to h_t = d_t + W_t d_t + b_t with d_t = Dropout_p(h_{t-1}) and W_t, b_t zero-initialised,
and every h_t goes through the model's own (shared) head. Example i survives to module t while every earlier
prediction was correct:

    M_0(i) = c_0(i),   M_t(i) = M_{t-1}(i) c_t(i)
    L = mean_i CE_0(i) + sum_t lambda_t sum_i M_{t-1}(i) CE_t(i) / (sum_i M_{t-1}(i) + eps)      ("survivors")

or with the denominator replaced by the batch size ("batch"). At the token level (token classification, masked and
causal language modelling) every labelled position is a trajectory: i runs over positions, not examples. In CTC
speech recognition an utterance is a trajectory (its state is every frame), correct while greedy decoding gets at
least half of its target tokens right at their positions (`ctc_correct`).
In REINFORCE terms the action is the label, the
policy is the shared head's distribution and the binary return is M; the masked cross-entropy is exactly the
policy-gradient estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

SURVIVOR_EPS = 1e-8
# Logits per head call in token-level terms (positions x vocabulary): bounds the transient logits and their
# log-softmax to 64 MiB each in float32 (a 151k vocabulary: 110 positions a call), under the peak of an LM's own step.
TOKEN_CHUNK_LOGITS = 2**24


def positions_per_chunk(vocabulary: int) -> int:
    """How many positions one head call of `token_level_terms` takes for a head with `vocabulary` outputs."""
    return max(1, TOKEN_CHUNK_LOGITS // vocabulary)


Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CTCTargets:
    """What a CTC model's loss reads besides the logits: the labels (padded with -100 or the blank), the number of
    valid frames of each utterance, and the model's own CTC settings."""

    labels: torch.Tensor  # [batch, label length]
    frame_lengths: torch.Tensor  # [batch]
    blank: int
    reduction: str  # the model's ctc_loss_reduction: "mean" or "sum"
    zero_infinity: bool
    ignore_index: int = -100

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


Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | CTCTargets | SegmentationTargets


class TRPModule(nn.Module):
    """One task replica prediction module: dropout, then a zero-initialised residual linear map."""

    def __init__(self, width: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        # Plain zero tensors rather than nn.Linear: its random init would draw from the global RNG and shift every
        # later random draw (dropout masks, data order) away from a plain run with the same seed.
        self.weight = nn.Parameter(torch.zeros(width, width))
        self.bias = nn.Parameter(torch.zeros(width))
        # The reference code's ReLU sits at 0 for zero weights and passes no gradient: its modules stay inert.
        self.activation = nn.ReLU() if activation == "relu" else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dropped = self.dropout(hidden)
        return dropped + self.activation(F.linear(dropped, self.weight, self.bias))


class TRPChain(nn.Module):
    """T modules in sequence; returns every module's output h_1..h_T."""

    def __init__(self, width: int, dropouts: list[float], activation: str) -> None:
        super().__init__()
        self.replicas = nn.ModuleList(TRPModule(width, rate, activation) for rate in dropouts)

    def forward(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for replica in self.replicas:
            hidden = replica(hidden)
            outputs.append(hidden)
        return outputs


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


def ctc_terms(logits: torch.Tensor, targets: CTCTargets) -> tuple[torch.Tensor, torch.Tensor]:
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


def segmentation_terms(logits: torch.Tensor, targets: SegmentationTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """Per labelled pixel (flattened over the batch), the cross-entropy and correctness of [batch, classes, h, w]
    logits, upsampled to the labels' size as the segmentation models' own loss does (bilinear, corners unaligned);
    an ignored pixel gets loss 0 and is no trajectory (`SegmentationTargets.pixels`)."""
    logits = F.interpolate(logits.float(), size=targets.labels.shape[-2:], mode="bilinear", align_corners=False)
    losses = F.cross_entropy(logits, targets.labels, ignore_index=targets.ignore_index, reduction="none")
    return losses.flatten(), (logits.argmax(1) == targets.labels).flatten()


def per_example_terms(
    objective: str, logits: Logits, targets: Targets, regression_tolerance: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss CE_t(i) and correctness c_t(i) of one prediction, in float32.

    objective: "classification" (argmax == label), "regression" (|prediction - label| <= tolerance, squared error
    as the loss), "multi_label" (every label right, sigmoid > 0.5 against the 0/1 label; the mean binary
    cross-entropy over the labels, as the model's own loss takes it), "question_answering" (start and end argmax
    both right, mean of start and end cross-entropy), "ctc" (one utterance per example, `ctc_terms`) or
    "segmentation" (one term per labelled pixel, `segmentation_terms`).
    `label_smoothing` smooths the classification cross-entropy as Trainer's label smoother smooths the model's own
    loss ((1 - eps) NLL + eps mean over the classes of -log p), so the module terms train toward the same target.
    """
    if objective == "classification":
        logits = logits.float()
        losses = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
        return losses, logits.argmax(-1) == targets
    if objective == "multi_label":
        logits, targets = logits.float(), targets.float()
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
        return losses, ((logits > 0) == (targets > 0.5)).all(-1)
    if objective == "regression":
        predictions = logits.float().view(-1)
        error = predictions - targets.float().view(-1)
        return error.square(), error.abs() <= regression_tolerance
    if objective == "question_answering":
        losses, hits = [], []
        for position_logits, positions in zip(logits, targets, strict=True):
            position_logits = position_logits.float()
            # Positions outside the window are clamped to an ignored index, as the models' own QA loss does.
            ignored_index = position_logits.size(1)
            positions = positions.view(-1).clamp(0, ignored_index)
            losses.append(F.cross_entropy(position_logits, positions, ignore_index=ignored_index, reduction="none"))
            hits.append(position_logits.argmax(-1) == positions)
        return (losses[0] + losses[1]) / 2, hits[0] & hits[1]
    if objective == "segmentation":
        return segmentation_terms(logits, targets)
    if objective == "ctc":
        return ctc_terms(logits, targets)
    raise ValueError(f"Unknown SPG objective {objective!r}.")


def _position_terms(
    head: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor, targets: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(states).float()
    losses = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    return losses, logits.argmax(-1) == targets


def token_level_terms(
    chain: TRPChain,
    head: Callable[[torch.Tensor], torch.Tensor],
    states: torch.Tensor,
    targets: torch.Tensor,
    base_correct: torch.Tensor,
    chunk: int,
    label_smoothing: float = 0.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(CE_t, c_t) per labelled position for every module, computed where they count.

    states [N, D] and targets [N] are the labelled positions; base_correct [N] is c_0. Module t's term is masked by
    M_{t-1}, so the chain and the head run only on the positions still alive: an exact shortcut, not an
    approximation (CE_t and c_t of a dead position are reported as 0 and False, which the mask ignores anyway). The
    head runs in chunks of `chunk` positions (`positions_per_chunk`) under activation checkpointing, so no
    [positions, vocabulary] logits are kept for backward: they are recomputed chunk by chunk.
    """
    size = targets.numel()
    alive = base_correct.nonzero().squeeze(1)
    hidden = states[alive]
    terms = []
    for replica in chain.replicas:
        hidden = replica(hidden)
        pieces = [
            checkpoint(_position_terms, head, states_chunk, chunk_targets, label_smoothing, use_reentrant=False)
            for states_chunk, chunk_targets in zip(hidden.split(chunk), targets[alive].split(chunk), strict=True)
        ]
        # split() yields one empty chunk when no position is alive, so every module still takes part in the graph.
        alive_losses = torch.cat([losses for losses, _ in pieces])
        alive_correct = torch.cat([correct for _, correct in pieces])
        losses = alive_losses.new_zeros(size).index_put((alive,), alive_losses)
        correct = torch.zeros(size, dtype=torch.bool, device=targets.device).index_put((alive,), alive_correct)
        terms.append((losses, correct))
        alive, hidden = alive[alive_correct], hidden[alive_correct]
    return terms


@dataclass(frozen=True)
class ChainTerms:
    """What one chain contributes: c_0 of its head's own prediction per trajectory, (CE_t, c_t) per module, and which
    examples are trajectories (None: all; the others, whose labels the model's loss ignores, count in no term,
    denominator or survival share)."""

    base_correct: torch.Tensor
    module_terms: list[tuple[torch.Tensor, torch.Tensor]]
    trajectories: torch.Tensor | None = None


@dataclass
class SPGLoss:
    loss: torch.Tensor  # the full SPG loss, differentiable
    survival: torch.Tensor  # [T]: share of the batch that reached module t (mean of M_{t-1})
    module_losses: torch.Tensor  # [T]: module t's normalised term, before its weight lambda_t
    auxiliary_survival: torch.Tensor | None = None  # the same for the auxiliary head's chain
    auxiliary_module_losses: torch.Tensor | None = None


def _weighted_terms(
    chain: ChainTerms, weights: list[float], normalize: str
) -> tuple[torch.Tensor | float, torch.Tensor, torch.Tensor]:
    """sum_t lambda_t (masked, normalised module term t) of one chain, with its survival shares and module terms."""
    if chain.trajectories is None:
        alive = chain.base_correct.float()
        batch_size = alive.numel()
    else:
        alive = (chain.base_correct & chain.trajectories).float()
        batch_size = chain.trajectories.sum()
    # A micro-batch may hold no trajectory (no labelled position or example): its terms are then 0, not 0 / 0.
    batch_size = batch_size.clamp(min=1) if isinstance(batch_size, torch.Tensor) else max(batch_size, 1)
    total: torch.Tensor | float = 0.0
    survival, module_losses = [], []
    for weight, (losses, correct) in zip(weights, chain.module_terms, strict=True):
        denominator = alive.sum() + SURVIVOR_EPS if normalize == "survivors" else batch_size
        term = (alive * losses).sum() / denominator
        total = total + weight * term
        survival.append(alive.sum() / batch_size)
        module_losses.append(term.detach())
        alive = alive * correct.float()
    return total, torch.stack(survival).detach(), torch.stack(module_losses)


def spg_loss(
    base_loss: torch.Tensor,
    base_correct: torch.Tensor,
    module_terms: list[tuple[torch.Tensor, torch.Tensor]],
    weights: list[float],
    normalize: str,
    loss_normalization: bool = False,
    trajectories: torch.Tensor | None = None,
    auxiliary: tuple[ChainTerms, float] | None = None,
) -> SPGLoss:
    """Combine the base loss with the masked module losses.

    base_loss: mean CE_0 (the model's own loss); base_correct, module_terms, trajectories: the chain's `ChainTerms`;
    auxiliary: for a model with an auxiliary head, its chain's terms and the weight the model's loss gives that head.
    loss_normalization multiplies by the detached exp(CE_0 - L), as the reference code does for QA.
    """
    chain = ChainTerms(base_correct, module_terms, trajectories)
    terms, survival, module_losses = _weighted_terms(chain, weights, normalize)
    total = base_loss + terms
    result = SPGLoss(total, survival, module_losses)
    if auxiliary is not None:
        auxiliary_chain, auxiliary_weight = auxiliary
        auxiliary_terms, result.auxiliary_survival, result.auxiliary_module_losses = _weighted_terms(
            auxiliary_chain, weights, normalize
        )
        total = total + auxiliary_weight * auxiliary_terms
    if loss_normalization:
        total = total * torch.exp(base_loss - total).detach()
    result.loss = total
    return result
