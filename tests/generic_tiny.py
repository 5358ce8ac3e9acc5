"""Any transformers task class built small from its config's defaults, as the sweeps over transformers' own task
mappings build them (tests/test_causal_lm_sweep.py, tests/test_task_sweep.py): no settings chosen per model beyond
the few in CONFIG_NEEDS, so a model added to transformers is swept as it ships."""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig

VOCABULARY = 99
# Token ids below FIRST_TOKEN are special (pad 0, bos/cls 1, eos/sep 2, mask 3, unk 4): batches draw from the rest.
FIRST_TOKEN = 5
IMAGE_SIZE = 64
# Set on every config (the model's and each of its sub-configs) wherever it has the attribute as an int: enough for
# most architectures to build small.
TINY = dict(
    vocab_size=VOCABULARY,
    decoder_vocab_size=VOCABULARY,
    hidden_size=32,
    n_embd=32,
    d_model=32,
    dim=32,
    emb_dim=32,
    attention_hidden_size=32,
    embedding_size=32,
    true_hidden_size=32,
    intra_bottleneck_size=32,
    pooler_hidden_size=32,
    d_latents=32,
    num_latents=8,
    num_hidden_layers=2,
    num_layers=2,
    n_layer=2,
    n_layers=2,
    decoder_layers=2,
    encoder_layers=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_self_attends_per_block=2,
    num_attention_heads=2,
    n_head=2,
    n_heads=2,
    num_heads=2,
    num_key_value_heads=2,
    decoder_attention_heads=2,
    encoder_attention_heads=2,
    num_encoder_attention_heads=2,
    num_decoder_attention_heads=2,
    num_self_attention_heads=2,
    num_cross_attention_heads=2,
    head_dim=16,
    d_head=16,
    d_kv=16,
    v_head_dim=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    rotary_dim=8,
    kv_lora_rank=16,
    q_lora_rank=16,
    intermediate_size=64,
    hidden_dim=64,
    d_inner=64,
    d_ff=64,
    ffn_dim=64,
    decoder_ffn_dim=64,
    encoder_ffn_dim=64,
    fusion_hidden_size=16,
    max_position_embeddings=64,
    src_vocab_size=VOCABULARY,
    tgt_vocab_size=VOCABULARY,
    num_hash_buckets=64,
    dff=64,
    n_positions=64,
    image_size=IMAGE_SIZE,
    window_size=2,
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    entity_vocab_size=16,
    entity_emb_size=16,
    pronunciation_vocab_size=16,
    shape_vocab_size=16,
)
# Special tokens: set wherever the config has the attribute, whatever its value (None, or a list of ids beyond the
# tiny vocabulary); batches draw their tokens from FIRST_TOKEN on.
SPECIAL_TOKENS = dict(
    pad_token_id=0,
    decoder_start_token_id=0,
    bos_token_id=1,
    cls_token_id=1,
    eos_token_id=2,
    sep_token_id=2,
    mask_token_id=3,
    unk_token_id=4,
)
# Sizes a config may leave None for the class to derive from the default sizes, which the tiny ones no longer match.
DERIVED = ("head_dim", "vocab_size", "num_key_value_heads")
# Widths (channels of each stage), as ints or lists, are divided by this (those under 32 shrink to 4 at most, so 3
# input channels stay 3); lists of depths (blocks per stage) are set to 1s.
WIDTH_DIVISOR = 8
WIDTHS = (
    "hidden_sizes", "embed_dims", "embed_dim", "neck_hidden_sizes", "conv_dim", "tdnn_dim", "channels", "stem_channels",
    "stage_in_channels", "stage_mid_channels", "stage_out_channels", "in_channels", "out_channels",
)  # fmt: skip
DEPTHS = ("depths", "depth", "num_block_repeats", "stage_num_blocks", "stage_numb_of_layers", "block_repeats")
# Settings the generic ones above cannot reach, per model type: sizes that must agree with each other in ways no
# generic rule knows.
CONFIG_NEEDS: dict[str, dict[str, Any]] = {
    "funnel": dict(block_sizes=[1, 1], block_repeats=[1, 1]),
    "reformer": dict(
        axial_pos_shape=(2, 4), axial_pos_embds_dim=(16, 16), attention_head_size=16, max_position_embeddings=8
    ),
    "bit": dict(num_groups=2),
    # Their segmentation heads read four of the encoder's layers.
    "beit": dict(num_hidden_layers=4, out_indices=[1, 2, 3, 4], pool_scales=[1, 2], auxiliary_channels=8),
    "data2vec-vision": dict(num_hidden_layers=4, out_indices=[1, 2, 3, 4], pool_scales=[1, 2], auxiliary_channels=8),
    "dpt": dict(num_hidden_layers=4, backbone_out_indices=[0, 1, 2, 3]),
}
MOST_PARAMETERS = 5_000_000  # larger ones (mixtures of experts whose expert count the tiny settings miss) are skipped


def _set(config: PreTrainedConfig, name: str, value: Any) -> None:
    """Sets what the config lets be set: some attributes are properties without a setter, or refuse (XLNet's
    sequence length, Funnel's layer count)."""
    try:
        setattr(config, name, value)
    except (AttributeError, NotImplementedError):
        pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _narrower(width: int) -> int:
    return max(width // WIDTH_DIVISOR, min(width, 4))


def _shrink(config: PreTrainedConfig) -> None:
    # Multi-head latent attention whose rotary part is head_dim wide (DeepSeek's) keeps it so.
    rotary_head = (
        _is_int(vars(config).get("qk_rope_head_dim")) and vars(config).get("head_dim") == config.qk_rope_head_dim
    )
    for name, value in vars(config).copy().items():
        if isinstance(value, PreTrainedConfig):
            _shrink(value)
        elif name in SPECIAL_TOKENS:
            _set(config, name, SPECIAL_TOKENS[name])
        elif name in TINY and _is_int(value):
            _set(config, name, TINY[name])
        elif name in WIDTHS and _is_int(value):
            _set(config, name, _narrower(value))
        elif isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            if name in WIDTHS:
                _set(config, name, type(value)(_narrower(v) for v in value))
            elif name in DEPTHS:
                _set(config, name, type(value)(1 for _ in value))
        elif value is None and name in DERIVED:
            _set(config, name, TINY[name])
    if rotary_head:
        _set(config, "head_dim", config.qk_rope_head_dim)
    if getattr(config, "is_encoder_decoder", False):  # the decoder starts from the pad token where none is set
        _set(config, "decoder_start_token_id", SPECIAL_TOKENS["decoder_start_token_id"])


def generic_tiny_config(model_type: str) -> PreTrainedConfig:
    """The model type's default config with every size TINY names (in sub-configs too) made small."""
    config = AutoConfig.for_model(model_type)
    _shrink(config)
    for name, value in CONFIG_NEEDS.get(model_type, {}).items():
        _set(config, name, value)
    return config


def generic_tiny_settings(model_type: str) -> tuple[type[PreTrainedConfig], dict[str, Any]]:
    """The generic tiny config as tests/helpers.TINY_CONFIGS holds configs: its class and the values to build it
    from, less those its class derives from the others when it is built (labels, per-layer lists)."""
    config = generic_tiny_config(model_type)
    derived = ("id2label", "label2id", "layer_types")
    return type(config), {name: value for name, value in config.to_dict().items() if name not in derived}


def parameter_count(model_class: type, config: PreTrainedConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_class(config).parameters())


def generic_tiny_model(model_type: str, class_name: str, **settings: Any) -> transformers.PreTrainedModel:
    """The class built (seed 0) from the generic tiny config of its model type, with `settings` on top. Raises what
    the build raises, and a ValueError for one larger than MOST_PARAMETERS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = generic_tiny_config(model_type)
        for name, value in settings.items():
            setattr(config, name, value)
        model_class = getattr(transformers, class_name)
        parameters = parameter_count(model_class, config)
        if parameters > MOST_PARAMETERS:
            raise ValueError(f"{parameters:,} parameters at the generic tiny settings")
        torch.manual_seed(0)
        return model_class(config)


@contextlib.contextmanager
def sweeping() -> Iterator[None]:
    """What a sweep of hundreds of tiny models runs under: one thread (tiny models run fastest so), the objects alive
    before it left out of garbage collection (Trainer collects garbage at the end of every train(): milliseconds
    then, instead of a quarter second), and no warnings or log lines below errors (several per class)."""
    threads = torch.get_num_threads()
    verbosity = transformers.logging.get_verbosity()
    torch.set_num_threads(1)
    gc.freeze()
    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        logging.disable(logging.NOTSET)
        gc.unfreeze()
        torch.set_num_threads(threads)
