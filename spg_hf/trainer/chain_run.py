"""The chains attached to one model for one `train()` call (`SPGChainRun`): where they live, how they run inside the
model's forward, and the statistics they log.

- Each chain is registered as a submodule of the model Trainer trains (`model.spg_chain`, and
  `model.spg_auxiliary_chain` for an auxiliary head), so the optimizer, device placement, zero_grad, clipping and DDP
  include it; `detach` removes it when `train()` returns.
- It runs inside the model's forward: a hook on the module that feeds the head captures the state (inside
  accelerate's autocast), runs the chain and the shared head, and a hook on the model returns the chains' results
  with the outputs, so DDP sees the chains' parameters used. Hooks act only in armed (SPG training) calls.
- A chain pass draws from a random stream of its own and leaves the model's buffers alone, so the model's own
  computation is exactly Trainer's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from transformers.trainer_utils import unwrap_peft_model

from spg_hf.heads import HeadFamily, register_call_inputs
from spg_hf.heads.blocks import block_call_arguments, block_copies
from spg_hf.objectives import IGNORE_INDEX, OBJECTIVES, Objective, aligned
from spg_hf.spg import (
    BlockChain,
    BlockModule,
    ChainTerms,
    SPGLoss,
    TRPChain,
    block_output,
    block_token_level_terms,
    positions_per_chunk,
    token_level_terms,
)
from spg_hf.spg_config import SPGArguments
from spg_hf.trainer.checkpoints import SPG_WEIGHTS_NAME

CHAIN_ATTRIBUTE = "spg_chain"
AUXILIARY_CHAIN_ATTRIBUTE = "spg_auxiliary_chain"
# Keys of the auxiliary chain in spg_modules.safetensors, beside the main chain's.
AUXILIARY_PREFIX = "auxiliary."


@dataclass(eq=False)
class HeadChain:
    """A temporary chain on one head: the model's main head, or its auxiliary head, whose terms take the weight the
    model's loss gives that head. Per step it holds what its capture hook computed."""

    family: HeadFamily
    objective: Objective
    chain: TRPChain | BlockChain
    weight: float
    attribute: str  # the model attribute that holds the chain
    state_prefix: str  # its keys' prefix in spg_modules.safetensors
    log_prefix: str  # its statistics' prefix in the logs: spg/{log_prefix}survival_t
    armed: bool = False
    targets: Any = None
    # The replicas' logits (example level) or the ChainTerms (token level) of this step; the head's own output where
    # the capture module is the head; a token-level capture that waits for the model's prediction.
    result: Any = None
    head_prediction: Any = None
    deferred: tuple[torch.Tensor, torch.autocast] | None = None
    survival_sum: torch.Tensor | float = 0.0
    module_loss_sum: torch.Tensor | float = 0.0


def chain_seed(seed: int, step: int, call: int, process: int) -> int:
    """The seed of the chain's random stream for one forward: a function of the run's seed, the optimizer step, the
    micro-batch within it and the process, so a resumed run draws what the uninterrupted one drew."""
    digest = hashlib.blake2b(f"{seed}/{step}/{call}/{process}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def chain_random_stream(seed: int, device: torch.device) -> Iterator[None]:
    """Runs the chain's random draws (its dropout, the head's own dropout on its states) on a stream of their own, so
    the model's random stream is exactly Trainer's: with zero weights SPG trains as Trainer, bit for bit."""
    accelerator = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else "cuda"):
        torch.random.default_generator.manual_seed(seed)
        if accelerator:
            device_module = torch.get_device_module(device.type)
            with device_module.device(device):
                device_module.manual_seed(seed)
        yield


@contextlib.contextmanager
def statistics_kept(norms: list[_NormBase], buffers: list[tuple[str, torch.Tensor]]) -> Iterator[None]:
    """A chain pass that leaves the model's buffers as they are, so its state moves only as Trainer's forward moves
    it: normalisation layers in training mode (BatchNorm in a head) normalise the chain's states by their own batch
    statistics, as in the model's forward, without updating their running statistics and batch count. Any other
    buffer a pass changes in place is a RuntimeError naming it."""
    tracking = [module for module in norms if module.training and module.track_running_stats]
    versions = [buffer._version for _, buffer in buffers]
    for module in tracking:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in tracking:
            module.track_running_stats = True
    changed = [name for (name, buffer), version in zip(buffers, versions, strict=True) if buffer._version != version]
    if changed:
        raise RuntimeError(
            f"SPG: a pass of the temporary chain through the shared head changed the model's buffers {changed} in "
            "place, which would make the trained model differ from Trainer's beyond its gradients. Set "
            "spg_enabled=False for this model."
        )


class SPGChainRun:
    """The chains attached to one model for one `train()` call: hooks, targets, and the statistics to log."""

    def __init__(
        self, trained: nn.Module, args: SPGArguments, family: HeadFamily, label_smoothing: float = 0.0
    ) -> None:
        # `trained` is the model Trainer trains (a PeftModel included): the chains join its parameters and its
        # output carries their results. `model` is the task model whose heads the families read.
        self.trained = trained
        self.model = model = unwrap_peft_model(trained)
        self.args = args
        self.family = family
        self.normalize = args.spg_normalize_for(family.token_level)
        # Trainer smooths the model's classification loss; the classification module terms take the same smoothing.
        self.label_smoothing = label_smoothing
        # The chain computes in the model's precision: bf16 weights get a bf16 chain, and autocast (bf16=True) casts
        # a float32 chain as it casts the model's own layers.
        reference = next(p for p in model.parameters() if p.is_floating_point())
        heads = [(family, 1.0, CHAIN_ATTRIBUTE, "", "")]
        auxiliary = family.auxiliary_head(model)
        if auxiliary is not None:
            heads.append(
                (auxiliary.family, auxiliary.weight, AUXILIARY_CHAIN_ATTRIBUTE, AUXILIARY_PREFIX, "auxiliary_")
            )
        self.heads: list[HeadChain] = []
        for head_family, weight, attribute, state_prefix, log_prefix in heads:
            chain = self._chain(head_family)
            chain.to(device=reference.device, dtype=reference.dtype)
            trained.add_module(attribute, chain)
            objective = OBJECTIVES[head_family.objective or head_family.objective_names(model)[0]]
            self.heads.append(HeadChain(head_family, objective, chain, weight, attribute, state_prefix, log_prefix))
        self.main = self.heads[0]
        self.objective = self.main.objective
        self.buffers = list(model.named_buffers())
        self.norms = [module for module in model.modules() if isinstance(module, _NormBase)]

        # save_pretrained leaves these out of every folder, a user's own call included; a plain nn.Module's are
        # filtered by SPGTrainer._save.
        self.saved_ignore_keys = getattr(trained, "_keys_to_ignore_on_save", None)
        self.chain_keys = {f"{head.attribute}.{name}" for head in self.heads for name in head.chain.state_dict()}
        trained._keys_to_ignore_on_save = set(self.saved_ignore_keys or ()) | self.chain_keys

        self.seed = 0
        self.handed_pair = False
        self.positions_per_chunk: int | None = None
        self.call_inputs: dict[str, Any] = {}
        # The block form's last block call of this step: its output and the other arguments it was called with.
        self.block_call: tuple[torch.Tensor, tuple, dict[str, Any]] | None = None
        self.handles = [
            register_call_inputs(model, self._on_model_call),
            trained.register_forward_hook(self._on_model_output),
        ]
        if family.block is not None:
            block = model.get_submodule(family.block.block)
            self.handles.append(block.register_forward_hook(self._on_block_output, with_kwargs=True))
        for head in self.heads:
            self.handles.append(head.family.register_capture(model, functools.partial(self._on_capture, head)))
        self.reset_statistics()

    def _chain(self, family: HeadFamily) -> TRPChain | BlockChain:
        args = self.args
        if family.block is None:
            return TRPChain(family.width(self.model), args.spg_dropout_rates, args.spg_activation)
        modules = [
            BlockModule(block_copies(self.model, family.block, args.spg_blocks_per_module), rate, family.block.gated)
            for rate in args.spg_dropout_rates
        ]
        return BlockChain(modules)

    def describe_chain(self) -> str:
        """The chain's form and place, for the first SPG log line."""
        site = self.family.block
        if site is None:
            return f"linear modules on the {self.family.reads}"
        copies = self.args.spg_blocks_per_module
        return (
            f"block modules of {copies} cop{'y' if copies == 1 else 'ies'} of {site.block} each, "
            + (f"{', '.join(site.zeroed)} zeroed" if site.zeroed else "nothing zeroed")
            + (" and a zero gate (zeroing alone is not the identity)" if site.gated else "")
            + f", then {', '.join(site.tail) if site.tail else 'the head'} as the model applies them"
        )

    @property
    def auxiliary(self) -> HeadChain | None:
        return self.heads[1] if len(self.heads) > 1 else None

    def chain_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the chains: each chain's weights under its state prefix (none for the main
        chain, AUXILIARY_PREFIX for the auxiliary head's)."""
        return {head.state_prefix + name: t for head in self.heads for name, t in head.chain.state_dict().items()}

    def load_chain_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads `chain_state_dict`'s form; a ValueError where the checkpoint and this run disagree on having an
        auxiliary head (spg_auxiliary_head, or an HF model's `use_auxiliary_head`)."""
        saved_auxiliary = any(name.startswith(AUXILIARY_PREFIX) for name in state)
        if saved_auxiliary != (self.auxiliary is not None):
            saved, run = ("has", "has none") if saved_auxiliary else ("has none", "has one")
            raise ValueError(
                f"The checkpoint's SPG weights ({SPG_WEIGHTS_NAME}) {saved} for an auxiliary head, while this run "
                f"{run}: resume with the auxiliary head setting (spg_auxiliary_head, use_auxiliary_head) it was "
                "saved with."
            )
        for head in reversed(self.heads):  # the auxiliary chain's prefixed keys first, the rest are the main chain's
            own = {name: t for name, t in state.items() if name.startswith(head.state_prefix)}
            head.chain.load_state_dict({name.removeprefix(head.state_prefix): t for name, t in own.items()})
            state = {name: t for name, t in state.items() if name not in own}

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        for head in self.heads:
            delattr(self.trained, head.attribute)
        self.trained._keys_to_ignore_on_save = self.saved_ignore_keys

    # ---- running the chains inside the model's forward ----

    @contextlib.contextmanager
    def _chain_pass(self, device: torch.device) -> Iterator[None]:
        with chain_random_stream(self.seed, device), statistics_kept(self.norms, self.buffers):
            yield

    def _on_model_call(self, inputs: dict[str, Any]) -> None:
        if self.main.armed:
            self.call_inputs = inputs

    def _on_block_output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.main.armed:
            self.block_call = (block_output(output), *block_call_arguments(args, kwargs))

    def _on_capture(self, head: HeadChain, captured: torch.Tensor, head_prediction: torch.Tensor | None = None) -> None:
        """Runs at a head's capture; `head_prediction` is the head's output where the capture module is the head
        itself (a head named with spg_head, an auxiliary head)."""
        if not head.armed:
            return
        # Disarm first: the shared head may contain the hooked module itself.
        head.armed = False
        head.head_prediction = head_prediction
        if head.objective.token_level and head_prediction is None:
            # Token-level chains run only where the model's own prediction was right: known after its head ran, in
            # the model-level hook, which runs after accelerate's autocast has closed: it reopens the autocast state
            # the head's input was computed in.
            device_type = captured.device.type
            autocast = torch.autocast(
                device_type,
                dtype=torch.get_autocast_dtype(device_type),
                enabled=torch.is_autocast_enabled(device_type),
            )
            head.deferred = (captured, autocast)
            return
        with self._chain_pass(captured.device):
            if head.objective.token_level:
                head.result = self._token_level_terms(head, captured, self._predicted_right(head, head_prediction))
            else:
                head.result = [
                    head.family.head(self.model, state, self.call_inputs)
                    for state in self._replica_states(head, captured)
                ]

    def _replica_states(self, head: HeadChain, captured: torch.Tensor) -> list[torch.Tensor]:
        """Each module's state as the head reads it: the chain on the positions the head reads, or in the block form
        the chain after the last block and then what the model applies up to the head."""
        site = head.family.block
        if site is None:
            return head.chain(head.family.select(self.model, captured, self.call_inputs))
        hidden, args, kwargs = self._block_call()
        return [
            head.family.select(self.model, site.head_input(self.model, output), self.call_inputs)
            for output in head.chain(hidden, args, kwargs)
        ]

    def _block_call(self) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
        if self.block_call is None:
            raise RuntimeError(
                f"SPG: the forward of {type(self.model).__name__} reached its head without calling the last block "
                f"{self.family.block.block} the block form follows."
            )
        return self.block_call

    def _on_model_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        for head in self.heads:
            if head.deferred is not None:
                (captured, autocast), head.deferred = head.deferred, None
                with autocast, self._chain_pass(captured.device):
                    head.result = self._token_level_terms(head, captured, self._predicted_right(head, output))
        if self.main.result is None:
            return None
        # Returned with the outputs so that DDP sees the chains' parameters used in the forward; `armed_call` hands
        # the outputs on without them.
        results = [head.result for head in self.heads]
        for head in self.heads:
            head.result = None
        self.handed_pair = True
        return output, results

    def _predicted_right(self, head: HeadChain, output: Any) -> torch.Tensor:
        """Per position the model ran, whether its own prediction is the target: the argmax of its logits, or where
        it builds none (TRL's fused LM head) its `is_top1`, scored for the next token and so one position short."""
        if isinstance(output, torch.Tensor) or output.get("logits") is not None:
            logits = output if isinstance(output, torch.Tensor) else output["logits"]
            # argmax over every position: indexing the [positions, vocabulary] logits first would copy them.
            targets = aligned(head.targets, logits.shape[-2]).to(logits.device)
            return logits.detach().argmax(-1) == targets
        is_top1 = output["is_top1"].detach().bool()
        return F.pad(is_top1, (0, 1))

    def _token_level_terms(self, head: HeadChain, captured: torch.Tensor, predicted_right: torch.Tensor) -> ChainTerms:
        targets = aligned(head.targets, captured.shape[-2]).reshape(-1).to(captured.device)
        positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        targets = targets[positions]
        base_correct = predicted_right.reshape(-1).to(captured.device)[positions]
        states = captured.reshape(-1, captured.shape[-1])[positions]

        def shared_head(state: torch.Tensor) -> torch.Tensor:
            # Also run again in backward (activation checkpointing): the buffers are kept there too.
            with statistics_kept(self.norms, self.buffers):
                return head.family.head(self.model, state, self.call_inputs)

        if self.positions_per_chunk is None and len(states):
            with torch.no_grad():  # the head's output width, read once on one position
                self.positions_per_chunk = positions_per_chunk(shared_head(states[:1]).shape[-1])
        chunk, smoothing = self.positions_per_chunk or 1, head.objective.label_smoothing(self.label_smoothing)
        site = head.family.block
        if site is None:
            terms = token_level_terms(head.chain, shared_head, states, targets, base_correct, chunk, smoothing)
        else:

            def labelled_states(hidden: torch.Tensor) -> torch.Tensor:
                state = site.head_input(self.model, hidden)
                return state.reshape(-1, state.shape[-1])[positions]

            terms = block_token_level_terms(
                head.chain, self._block_call(), labelled_states, shared_head, targets, base_correct, chunk, smoothing
            )
        return ChainTerms(base_correct, terms, weight=head.weight)

    @contextlib.contextmanager
    def armed_call(self, model: nn.Module, inputs: dict[str, Any], seed: int) -> Iterator[list]:
        """Arms the chains for the next call of `model` (the model as Trainer wrapped it: DDP, compiled, or itself),
        with their targets read from `inputs` now (Trainer pops the labels before the call for its label smoother
        and compute_loss_func) and `seed` for their random stream. That call returns the model's own outputs, as
        Trainer expects them; the chains' results go into the list this yields."""
        chain_results: list = []

        def hand_on_outputs(module: nn.Module, args: tuple, result: Any) -> Any:
            # Not a pair: the capture never fired (`terms` says so), or a later call of the same compute_loss (TRL's
            # no-grad call for its metrics).
            if not self.handed_pair:
                return None
            self.handed_pair = False
            outputs, results = result
            chain_results.append(results)
            return outputs

        for head in self.heads:
            head.targets = head.objective.targets(self.model, inputs)
            head.armed = True
        self.seed = seed
        handle = model.register_forward_hook(hand_on_outputs)
        try:
            yield chain_results
        finally:
            handle.remove()
            self.handed_pair, self.call_inputs, self.block_call = False, {}, None
            for head in self.heads:
                head.armed, head.deferred, head.result = False, None, None

    def terms(self, outputs: Any, chain_results: list) -> list[ChainTerms]:
        """Per chain, the correctness c_0 of its head's own predictions and every module's (CE_t, c_t), per
        trajectory, and which entries are trajectories."""
        if not chain_results:
            raise RuntimeError(
                f"The SPG chain did not run in the forward of {type(self.model).__name__}: its head family "
                f"{self.family.name} captures a module the forward did not call."
            )
        return [
            self._chain_terms(head, outputs, result) for head, result in zip(self.heads, chain_results[0], strict=True)
        ]

    def _chain_terms(self, head: HeadChain, outputs: Any, result: Any) -> ChainTerms:
        if result is None:
            raise RuntimeError(
                f"The SPG chain of {type(self.model).__name__}'s {head.log_prefix or 'main '}head did not run: its "
                f"forward did not call {head.family.rule}."
            )
        if head.objective.token_level:
            return result
        prediction = head.head_prediction if head.head_prediction is not None else head.objective.prediction(outputs)
        head.head_prediction = None
        objective, tolerance = head.objective, self.args.spg_regression_tolerance
        smoothing = objective.label_smoothing(self.label_smoothing)
        _, base_correct = objective.terms(prediction, head.targets, tolerance)
        module_terms = [objective.terms(logits, head.targets, tolerance, smoothing) for logits in result]
        return ChainTerms(base_correct, module_terms, objective.trajectories(head.targets), head.weight)

    # ---- statistics for logging ----

    @property
    def counts_survivor_labels(self) -> bool:
        """Whether each example has one class label, so the labels of the module-1 survivors can be counted (a
        choice's index is no class)."""
        return self.objective.name == "classification" and self.family.task == "sequence_classification"

    @property
    def num_labels(self) -> int:
        return self.family.classes or self.model.config.num_labels

    def reset_statistics(self) -> None:
        for head in self.heads:
            head.survival_sum, head.module_loss_sum = 0.0, 0.0
        self.survivor_label_counts: torch.Tensor | int = 0
        self.recorded_batches = 0

    def record(self, result: SPGLoss, chains: list[ChainTerms]) -> None:
        for head, statistics in zip(self.heads, result.chains, strict=True):
            head.survival_sum = head.survival_sum + statistics.survival
            head.module_loss_sum = head.module_loss_sum + statistics.module_losses
        if self.counts_survivor_labels:
            # index_add_ rather than bincount of targets[base_correct]: masking and bincount wait for the GPU every
            # training step, to size their outputs.
            base_correct = chains[0].base_correct
            counts = torch.zeros(self.num_labels, dtype=torch.long, device=base_correct.device)
            # Ignored examples (-100) are never correct: clamped to a label, they add nothing.
            counts.index_add_(0, self.main.targets.to(base_correct.device).clamp(min=0), base_correct.long())
            self.survivor_label_counts = self.survivor_label_counts + counts
        self.recorded_batches += 1
