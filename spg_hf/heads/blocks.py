"""Where the block form (`spg_module='block'`) sits in a model: the last block its temporary blocks copy and follow, and
what the model applies between that block's output and the head's captured input (a final norm, a pooling), found
and checked on one training example (`find_block_site`); and the copies, zeroed to start as the identity
(`block_copies`)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.trainer_utils import unwrap_peft_model

from spg_hf.heads.family import HeadFamily, first_input
from spg_hf.spg import BlockModule, block_output

# The last linear map of a residual branch (attention output, MLP output) across HF architectures, by attribute
# name: zeroed, with its bias, each branch adds nothing and a pre-norm layer is the identity.
OUTPUT_PROJECTIONS = (
    *("o_proj", "out_proj", "c_proj", "down_proj", "fc2", "o", "wo", "Wo", "out_lin", "lin2", "output_dense"),
)
# BERT-style layers name both output projections `dense` inside an `output` module (attention.output, output).
OUTPUT_PROJECTION_PARENT = "output"
# A tail step that reads the first position of a sequence (a [CLS] token, ViT's class token), as a forward indexes it.
FIRST_POSITION = "[:, 0]"
# Arguments that carry a cache: a copy's keys and values must not be appended to the last layer's.
CACHE_ARGUMENTS = ("past_key_value", "past_key_values", "layer_past")


@dataclass(frozen=True)
class BlockSite:
    """The last block of a task model and the way from its output to the head's input."""

    block: str  # its dotted path in the task model
    # What the model applies, in order, from the block's output to the head's input: modules by path, and
    # FIRST_POSITION where it reads the first position.
    tail: tuple[str, ...]
    flatten_from: int | None  # a flatten after them (torch.flatten in a forward: a ResNet's pooled map)
    gated: bool  # zeroing leaves the copies short of the identity (post-norm layers): a zero gate mixes them in
    zeroed: tuple[str, ...]  # the block's submodules zeroed in each copy

    def head_input(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """What the model hands its head when its last block outputs `hidden`."""
        for step in self.tail:
            hidden = hidden[:, 0] if step == FIRST_POSITION else model.get_submodule(step)(hidden)
        return hidden if self.flatten_from is None else hidden.flatten(self.flatten_from)


def block_call_arguments(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """The arguments of a block call besides its hidden state, for a copy: the same mask and position embeddings,
    without the cache (a copy's keys would join the last layer's)."""
    rest_args = args[1:]
    rest_kwargs = dict(kwargs) if args else dict(list(kwargs.items())[1:])
    for name in CACHE_ARGUMENTS:
        if name in rest_kwargs:
            rest_kwargs[name] = None
    if "use_cache" in rest_kwargs:
        rest_kwargs["use_cache"] = False
    return rest_args, rest_kwargs


def zeroed_copy(block: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """A copy of `block`, trained (the block may be frozen: an adapter's base model), with the output projections of
    its residual branches (`OUTPUT_PROJECTIONS`) zeroed; where it has none, its last convolution and the
    normalisation layers after it (a residual block's conv2 and bn2: the paper zeroes kernels and biases). Returns
    the copy and the zeroed submodules' names."""
    block = copy.deepcopy(block)
    modules = dict(block.named_modules())
    zeroed = [
        name
        for name in modules
        if name.rpartition(".")[2] in OUTPUT_PROJECTIONS
        or (name.endswith(".dense") and name.rpartition(".")[0].rpartition(".")[2] == OUTPUT_PROJECTION_PARENT)
    ]
    if not zeroed:
        names = list(modules)
        convolutions = [name for name in names if isinstance(modules[name], nn.modules.conv._ConvNd)]
        if convolutions:
            last = names.index(convolutions[-1])
            zeroed = [convolutions[-1]] + [
                name for name in names[last + 1 :] if isinstance(modules[name], nn.modules.batchnorm._NormBase)
            ]
    with torch.no_grad():
        for name in zeroed:
            for parameter in modules[name].parameters():
                parameter.zero_()
    block.requires_grad_(True)
    return block, tuple(zeroed)


def block_copies(model: nn.Module, site: BlockSite, count: int) -> list[nn.Module]:
    """`count` zeroed copies (`zeroed_copy`) of the site's block."""
    return [zeroed_copy(model.get_submodule(site.block))[0] for _ in range(count)]


def _blocks_in_lists(model: nn.Module) -> list[str]:
    """Modules that are items of an nn.ModuleList or nn.Sequential and have submodules and parameters of their own:
    the layers and residual blocks of a network, not its leaves (a dropout or linear layer in a head's Sequential)."""
    names = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            for child_name, child in parent.named_children():
                if any(True for _ in child.children()) and any(True for _ in child.parameters()):
                    names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return names


def _close(computed: torch.Tensor, expected: torch.Tensor) -> bool:
    if computed.shape != expected.shape:
        return False
    tolerance = 1e-4 if expected.dtype in (torch.float32, torch.float64) else 2e-2
    return bool((computed.float() - expected.float()).abs().max() <= tolerance * (expected.float().abs().max() + 1))


@dataclass
class _Call:
    name: str
    args: tuple
    kwargs: dict[str, Any]
    output: torch.Tensor
    order: int  # when its forward began


def find_block_site(
    trained: nn.Module,
    family: HeadFamily,
    batch: dict[str, Any],
    forward: Callable[[dict[str, Any]], Any] | None,
    block: str | None,
    blocks_per_module: int,
) -> BlockSite:
    """Runs `trained` once in eval mode on `batch` and finds the block form's site: the block named by `block`
    (spg_block), or the last list-item block the forward calls, outermost where blocks nest (a residual block, not
    the convolution layer in it), which must return the shape it is given. The modules the forward applies to the
    block's output before the head's input is captured are the tail; it must reproduce that input, and copies of the
    block zeroed for the form must return their input (else they are gated). A ValueError names what fails."""
    model = unwrap_peft_model(trained)
    refusal = f"spg_module='block' on {type(model).__name__} (head family {family.name}): "
    if family.auxiliary_head(model) is not None:
        raise ValueError(
            refusal + "the model has an auxiliary head, which reads a feature inside the network rather than after "
            "its last block. Use spg_module='linear'."
        )
    if block is not None:
        try:
            model.get_submodule(block)
        except AttributeError as error:
            raise ValueError(f"spg_block={block!r}: {type(model).__name__} has no such submodule.") from error
        candidates = [block]
    else:
        candidates = _blocks_in_lists(model)
    capture_module = family.capture_module(model) if family.capture is not None else None
    head_modules = set(capture_module.modules()) if capture_module is not None else set()
    events: list[tuple[str, Any]] = []  # ("block", _Call), ("leaf", (name, input, output)), ("capture", state)
    calls: dict[str, _Call] = {}

    starts: dict[str, int] = {}
    clock = itertools.count()

    def start_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            starts[name] = next(clock)

        return hook

    def block_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            # A block called again (ALBERT's shared layers) is read at its last call: the one the head follows.
            calls[name] = _Call(name, args, kwargs, block_output(output), starts[name])
            events.append(("block", calls[name]))

        return hook

    def leaf_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            events.append(("leaf", (name, first_input(args, kwargs) if args or kwargs else None, output)))

        return hook

    handles = []
    for name in candidates:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(start_hook(name)))
        handles.append(module.register_forward_hook(block_hook(name), with_kwargs=True))
    for name, module in model.named_modules():
        if not any(True for _ in module.children()) and module not in head_modules:
            handles.append(module.register_forward_hook(leaf_hook(name), with_kwargs=True))
    handles.append(family.register_capture(model, lambda state, output=None: events.append(("capture", state))))
    was_training = trained.training
    trained.eval()
    try:
        with torch.no_grad():
            forward(batch) if forward is not None else trained(**batch)
            return _site_from_events(model, refusal, events, calls, block, blocks_per_module)
    finally:
        for handle in handles:
            handle.remove()
        trained.train(was_training)


def _site_from_events(
    model: nn.Module,
    refusal: str,
    events: list[tuple[str, Any]],
    calls: dict[str, _Call],
    named: str | None,
    blocks_per_module: int,
) -> BlockSite:
    capture_at = next((index for index, (kind, _) in enumerate(events) if kind == "capture"), None)
    if capture_at is None:
        raise ValueError(refusal + "its forward never reached the module where the head's input is captured.")
    captured = events[capture_at][1]

    def preserves_shape(call: _Call) -> bool:
        hidden = call.args[0] if call.args else first_input((), call.kwargs)
        return isinstance(hidden, torch.Tensor) and hidden.shape == call.output.shape

    before_head = [event for kind, event in events[:capture_at] if kind == "block" and calls[event.name] is event]
    if not before_head:
        wanted = f"spg_block={named!r} is" if named else "no block (an item of a list of layers) is"
        raise ValueError(
            refusal + f"{wanted} called before the head's input is captured. Name the last block with spg_block, "
            "or use spg_module='linear'."
        )
    last = max(before_head, key=lambda call: call.order)
    # Nested list items (a ResNet stage's blocks, each a Sequential of conv layers): the outermost block that
    # returns the shape it is given is the one copies can follow.
    nested = [call for call in before_head if call is last or last.name.startswith(call.name + ".")]
    following = [call for call in nested if preserves_shape(call)]
    if not following:
        raise ValueError(
            refusal + f"the last block `{last.name}` returns another shape than it is given, so copies of it cannot "
            "follow it. Name a block that keeps its input's shape with spg_block, or use spg_module='linear'."
        )
    chosen = min(following, key=lambda call: call.order)
    chosen_at = next(index for index, (kind, event) in enumerate(events) if kind == "block" and event is chosen)

    tail, running = [], chosen.output
    for kind, event in events[chosen_at + 1 : capture_at]:
        if kind != "leaf":
            continue
        name, leaf_input, leaf_output = event
        if not isinstance(leaf_input, torch.Tensor) or not isinstance(leaf_output, torch.Tensor):
            continue
        if leaf_input is running or _close(leaf_input, running):
            tail.append(name)
            running = leaf_output
        elif running.dim() == 3 and _close(leaf_input, running[:, 0]):  # a pooler on the first token
            tail += [FIRST_POSITION, name]
            running = leaf_output
    if running.dim() == 3 and not _close(running, captured) and _close(running[:, 0], captured):
        tail.append(FIRST_POSITION)
        running = running[:, 0]
    flatten_from = None
    if not _close(running, captured) and running.dim() > captured.dim():
        flatten_from = captured.dim() - 1
        running = running.flatten(flatten_from)
    if not _close(running, captured):
        raise ValueError(
            refusal + f"the head's input is not what modules alone make of the output of the last block "
            f"`{chosen.name}` (modules found on the way: {list(tail) or 'none'}; the forward also indexes, pools or "
            "permutes it, or the head reads a pooled state), so it cannot be recomputed from a temporary block's "
            "output. Name another block with spg_block, or use spg_module='linear'."
        )
    trial = [zeroed_copy(model.get_submodule(chosen.name)) for _ in range(blocks_per_module)]
    zeroed = trial[0][1]
    args, kwargs = block_call_arguments(chosen.args, chosen.kwargs)
    module = BlockModule([copied for copied, _ in trial], 0.0, gated=False).eval()
    identity = _close(module(chosen.output, args, kwargs), chosen.output)
    return BlockSite(chosen.name, tuple(tail), flatten_from, not identity, zeroed)
