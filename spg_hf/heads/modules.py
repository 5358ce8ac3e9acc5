"""What the head modules look like: the predicates and finders families match a model by (a linear `classifier`, the
module holding the output embeddings, a segmentation head's class convolution, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from spg_hf.heads.family import AUXILIARY_HEAD, AuxiliaryHead
from spg_hf.heads.named import module_head_family


def _unwrapped(module: Any) -> Any:
    """The layer a PEFT adapter wraps (a LoRA layer's `base_layer`, a `modules_to_save` wrapper's
    `original_module`), so that an adapted head matches its family as the plain one does; anything else as it is."""
    while isinstance(module, nn.Module):
        inner = getattr(module, "original_module", None) or getattr(module, "base_layer", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    return module


def child_module(model: nn.Module, name: str) -> nn.Module | None:
    module = getattr(model, name, None)
    return module if isinstance(module, nn.Module) else None


def has_linear(model: nn.Module, name: str) -> bool:
    return isinstance(_unwrapped(getattr(model, name, None)), nn.Linear)


def lm_head_module(model: nn.Module) -> nn.Module | None:
    """The task model's own child that holds the output embeddings (BERT's `cls`, RoBERTa's and Llama's `lm_head`):
    the head transform where the model has one, then the decoder; the output embeddings alone where that child holds
    no other weights (XLM's and Flaubert's `pred_layer`, whose forward returns a tuple with its own loss). Where the
    child is a model of its own (EncoderDecoderModel's decoder, a speech LM's language model), that model's head.
    None when the output embeddings are missing or inside the base model."""
    output_embeddings = model.get_output_embeddings()
    if output_embeddings is None:
        return None
    for child in model.children():
        if child is not model.base_model and any(module is output_embeddings for module in child.modules()):
            if isinstance(child, PreTrainedModel):
                return lm_head_module(child)
            own_weights = {id(parameter) for parameter in output_embeddings.parameters()}
            if all(id(parameter) in own_weights for parameter in child.parameters()):
                return output_embeddings
            return child
    return None


def token_scorer(model: nn.Module) -> nn.Module | None:
    """The linear layer a decoder classifier applies to every token before it pools the last non-padding one: its
    `score`, or a linear `classifier` that is the task model's only module besides its base model (CTRL's)."""
    if has_linear(model, "score"):
        return model.score
    head_modules = [child for child in model.children() if child is not model.base_model]
    if has_linear(model, "classifier") and head_modules == [model.classifier]:
        return model.classifier
    return None


def classification_final_layer(model: nn.Module) -> nn.Module | None:
    """The linear `final_layer` of a classification decoder that turns its query's output into the logits
    (Perceiver's decoders: the logits are its output at the one query)."""
    layers = [
        module
        for name, module in model.named_modules()
        if name.split(".")[-1] == "final_layer" and isinstance(_unwrapped(module), nn.Linear)
    ]
    return layers[-1] if len(layers) == 1 and _unwrapped(layers[-1]).out_features == model.config.num_labels else None


def pooled_classifier(model: nn.Module) -> nn.Module | None:
    """The module that turns the vector an image or audio model pools into its logits: its `classifier`, or a linear
    `fc` where `classifier` is a list of the pooling layers (HGNetV2's)."""
    classifier = child_module(model, "classifier")
    if classifier is not None and not isinstance(classifier, nn.ModuleList):
        return classifier
    return model.fc if has_linear(model, "fc") else None


def decoder_output_projection(model: nn.Module) -> nn.Module | None:
    """The linear projection to the vocabulary that ends the base model's decoder, where the task model has no LM
    head of its own (FSMT's `output_projection`)."""
    decoder = child_module(model.base_model, "decoder")
    return decoder.output_projection if decoder is not None and has_linear(decoder, "output_projection") else None


def base_pooler(model: nn.Module) -> nn.Module:
    """The base model's pooler: its input is the state the pooler reads, whichever of the base model's states that
    is (CANINE pools the downsampled sequence, not its final output)."""
    return model.base_model.pooler


def has_span_layer(model: nn.Module, name: str) -> bool:
    return has_linear(model, name) and _unwrapped(getattr(model, name)).out_features == 2


def reads_text(model: nn.Module) -> bool:
    return model.main_input_name == "input_ids"


def classifies_pooled(model: nn.Module) -> bool:
    return reads_text(model) and has_linear(model, "classifier") and child_module(model, "dropout") is not None


def uses_prediction_head(model: nn.Module, pooling: str | None) -> bool:
    """A prediction head (`head`, `drop`, `classifier`) pooled as the config's `classifier_pooling` says; None: a
    config without one (a decoder's, read at the last non-padding token)."""
    return (
        reads_text(model)
        and child_module(model, "head") is not None
        and child_module(model, "drop") is not None
        and has_linear(model, "classifier")
        and getattr(model.config, "classifier_pooling", None) == pooling
    )


def final_linear_outputs(model: nn.Module, name: str) -> int | None:
    """The output width of the last linear layer in the model's module `name` (the module itself, if linear);
    None without one."""
    module = child_module(model, name)
    linears = [] if module is None else [m for m in module.modules() if isinstance(_unwrapped(m), nn.Linear)]
    return _unwrapped(linears[-1]).out_features if linears else None


# Where segmentation models keep their main head (Segformer, UperNet, BEiT: decode_head; MobileViT:
# segmentation_head; DPT: head).
SEGMENTATION_HEADS = ("decode_head", "segmentation_head", "head")


def _class_convolution(head: nn.Module, classes: int) -> nn.Module | None:
    """A segmentation head's classifier: its last 2-D convolution with one output channel per class."""
    convolutions = [m for m in head.modules() if isinstance(m, nn.Conv2d) and m.out_channels == classes]
    return convolutions[-1] if convolutions else None


def segmentation_classifier(model: nn.Module) -> nn.Module | None:
    """The main segmentation head's classifier."""
    for name in SEGMENTATION_HEADS:
        head = child_module(model, name)
        if head is not None:
            return _class_convolution(head, model.config.num_labels)
    return None


def segmentation_auxiliary(model: nn.Module) -> AuxiliaryHead | None:
    """The class convolution of the model's `auxiliary_head` (built with `use_auxiliary_head`; its output is the
    auxiliary logits, which the loss upsamples to the labels as it does the main ones) and the config's
    `auxiliary_loss_weight`; None for a model without one."""
    head = child_module(model, "auxiliary_head")
    classifier = None if head is None else _class_convolution(head, model.config.num_labels)
    if classifier is None:
        return None
    path = next(name for name, module in model.named_modules() if module is classifier)
    family = module_head_family(
        AUXILIARY_HEAD, path, "semantic_segmentation", ("segmentation",), classifier.in_channels,
        classifier.out_channels,
        f"`{path}`, the auxiliary head's class convolution",
    )  # fmt: skip
    return AuxiliaryHead(family, model.config.auxiliary_loss_weight)


def segmentation_head(model: PreTrainedModel, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """The class convolution, then what follows it in its Sequential (DPT's own upsampling)."""
    classifier = segmentation_classifier(model)
    logits = classifier(state.movedim(-1, 1))
    for sequence in model.modules():
        if isinstance(sequence, nn.Sequential) and any(child is classifier for child in sequence):
            children = list(sequence)
            for module in children[next(i for i, child in enumerate(children) if child is classifier) + 1 :]:
                logits = module(logits)
    return logits
