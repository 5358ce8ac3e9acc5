"""Sequential Policy Gradient: the temporary module chain and the loss (the paper's equations in order, arXiv
2506.15051).

Module t maps h_{t-1} to h_t = d_t + W_t d_t + b_t with d_t = Dropout_p(h_{t-1}) and W_t, b_t zero-initialised,
and every h_t goes through the model's own (shared) head. In the block form (Sec. 4.3) module t is instead copies of
the model's last block applied to d_t, starting as the identity, and h_t goes through what the model applies after
that block. Example i survives to module t while every earlier
prediction was correct:

    M_0(i) = c_0(i),   M_t(i) = M_{t-1}(i) c_t(i)
    L = mean_i CE_0(i) + sum_t lambda_t sum_i M_{t-1}(i) CE_t(i) / (sum_i M_{t-1}(i) + eps)      ("survivors")

or with the denominator replaced by the batch size ("batch"). What a trajectory is, its CE and its c come from the
objective (`spg_hf.objectives`): an example, a labelled position (token-level tasks), an utterance (CTC) or a
labelled pixel (segmentation). In REINFORCE terms the action is the label, the policy is the shared head's
distribution and the binary return is M; the masked cross-entropy is exactly the policy-gradient estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class ReplicaChain(nn.Module):
    """T modules in sequence; returns every module's output h_1..h_T. Arguments after the state go to every module
    (the block form's: the arguments the model called its last block with)."""

    def __init__(self, replicas: list[nn.Module]) -> None:
        super().__init__()
        self.replicas = nn.ModuleList(replicas)

    def forward(self, hidden: torch.Tensor, *arguments: Any) -> list[torch.Tensor]:
        outputs = []
        for replica in self.replicas:
            hidden = replica(hidden, *arguments)
            outputs.append(hidden)
        return outputs


class TRPChain(ReplicaChain):
    """The paper's first form: T `TRPModule`s of the state's width, one per dropout rate."""

    def __init__(self, width: int, dropouts: list[float], activation: str) -> None:
        super().__init__([TRPModule(width, rate, activation) for rate in dropouts])


def block_output(output: Any) -> torch.Tensor:
    """The hidden state a block returns: itself, or the first element of the tuple HF layers may return."""
    return output[0] if isinstance(output, (tuple, list)) else output


class BlockModule(nn.Module):
    """One temporary module of the block form: dropout, then copies of the model's last block, called as the model
    called that block (its other arguments: attention mask, position embeddings). Copies that their zeroed output
    projections do not make the identity (a post-norm layer re-normalises its input) are mixed in by a
    zero-initialised gate, d + g (blocks(d) - d), so the module still starts as the identity."""

    def __init__(self, blocks: list[nn.Module], dropout: float, gated: bool) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(blocks)
        self.gate = nn.Parameter(torch.zeros(())) if gated else None

    def forward(self, hidden: torch.Tensor, args: tuple = (), kwargs: dict | None = None) -> torch.Tensor:
        dropped = self.dropout(hidden)
        out = dropped
        for block in self.blocks:
            out = block_output(block(out, *args, **(kwargs or {})))
        return out if self.gate is None else dropped + self.gate.to(out.dtype) * (out - dropped)


class BlockChain(ReplicaChain):
    """The block form's chain: T `BlockModule`s, each called with the last block's other arguments; its outputs are
    whole sequences or feature maps."""


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
    alive = base_correct.nonzero().squeeze(1)
    hidden = states[alive]
    terms = []
    for replica in chain.replicas:
        hidden = replica(hidden)
        losses, correct, alive_correct = _alive_position_terms(head, hidden, targets, alive, chunk, label_smoothing)
        terms.append((losses, correct))
        alive, hidden = alive[alive_correct], hidden[alive_correct]
    return terms


def block_token_level_terms(
    chain: BlockChain,
    block_call: tuple[torch.Tensor, tuple, dict],
    read: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    base_correct: torch.Tensor,
    chunk: int,
    label_smoothing: float = 0.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`token_level_terms` for the block form: each module runs on the whole sequence (attention reads every
    position), `read` maps its output to the states of the labelled positions [N, D] (what the model applies after
    its last block), and the head runs only on the positions still alive. block_call is the last block's input and
    the other arguments the model called it with."""
    hidden, args, kwargs = block_call
    alive = base_correct.nonzero().squeeze(1)
    terms = []
    for replica in chain.replicas:
        hidden = replica(hidden, args, kwargs)
        states = read(hidden)[alive]
        losses, correct, alive_correct = _alive_position_terms(head, states, targets, alive, chunk, label_smoothing)
        terms.append((losses, correct))
        alive = alive[alive_correct]
    return terms


def _alive_position_terms(
    head: Callable[[torch.Tensor], torch.Tensor],
    states: torch.Tensor,
    targets: torch.Tensor,
    alive: torch.Tensor,
    chunk: int,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE, c) of one module over every labelled position (0 and False where not alive), and c of the alive ones;
    `states` are the alive positions' states."""
    size = targets.numel()
    pieces = [
        checkpoint(_position_terms, head, states_chunk, chunk_targets, label_smoothing, use_reentrant=False)
        for states_chunk, chunk_targets in zip(states.split(chunk), targets[alive].split(chunk), strict=True)
    ]
    # split() yields one empty chunk when no position is alive, so every module still takes part in the graph.
    alive_losses = torch.cat([losses for losses, _ in pieces])
    alive_correct = torch.cat([correct for _, correct in pieces])
    losses = alive_losses.new_zeros(size).index_put((alive,), alive_losses)
    correct = torch.zeros(size, dtype=torch.bool, device=targets.device).index_put((alive,), alive_correct)
    return losses, correct, alive_correct


@dataclass(frozen=True)
class ChainTerms:
    """What one chain contributes: c_0 of its head's own prediction per trajectory, (CE_t, c_t) per module, which
    entries are trajectories (None: all; the others, whose labels the model's loss ignores, count in no term,
    denominator or survival share), and the weight the model's loss gives its head (an auxiliary head's)."""

    base_correct: torch.Tensor
    module_terms: list[tuple[torch.Tensor, torch.Tensor]]
    trajectories: torch.Tensor | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class ChainStatistics:
    survival: torch.Tensor  # [T]: share of the trajectories that reached module t (mean of M_{t-1})
    module_losses: torch.Tensor  # [T]: module t's normalised term, before its weight lambda_t


@dataclass(frozen=True)
class SPGLoss:
    loss: torch.Tensor  # the full SPG loss, differentiable
    chains: list[ChainStatistics]  # per chain, in the order given to spg_loss (the main head's first)

    @property
    def survival(self) -> torch.Tensor:
        return self.chains[0].survival

    @property
    def module_losses(self) -> torch.Tensor:
        return self.chains[0].module_losses


def _weighted_terms(chain: ChainTerms, weights: list[float], normalize: str) -> tuple[Any, ChainStatistics]:
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
        if weight:  # a zero weight adds nothing, not even zero gradients: gradient norms stay those of Trainer
            total = total + weight * term
        survival.append(alive.sum() / batch_size)
        module_losses.append(term.detach())
        alive = alive * correct.float()
    return total, ChainStatistics(torch.stack(survival).detach(), torch.stack(module_losses))


def spg_loss(
    base_loss: torch.Tensor,
    chains: list[ChainTerms],
    weights: list[float],
    normalize: str,
    loss_normalization: bool = False,
) -> SPGLoss:
    """The base loss (mean CE_0: the model's own loss) plus every chain's masked module terms, each chain weighted
    as the model's loss weights its head. loss_normalization multiplies by the detached exp(CE_0 - L), as the
    reference code does for QA."""
    total = base_loss
    statistics = []
    for chain in chains:
        terms, chain_statistics = _weighted_terms(chain, weights, normalize)
        total = total + chain.weight * terms
        statistics.append(chain_statistics)
    if loss_normalization:
        total = total * torch.exp(base_loss - total).detach()
    return SPGLoss(total, statistics)
