"""What the tests share, imported as a module (`from helpers import ...`; the workers under tests/distributed/ put
tests/ on their path first): tiny random models (hidden size 32) for every head family's task class, toy datasets,
the one factory of training arguments, the data folders, the 2-process launcher and the comparisons of two runs.
conftest.py holds the pytest fixtures only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import generic_tiny
import pytest
import safetensors.torch
import torch
import transformers
from datasets import Dataset
from generic_tiny import FIRST_TOKEN, VOCABULARY, generic_tiny_settings

from spg_hf import SPGTrainingArguments

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
README = REPO / "README.md"
# The worker scripts the multi-process tests launch (torchrun, or a plain subprocess).
WORKERS = TESTS / "distributed"


def data_folder(variable: str, under_shared_data: str) -> Path:
    """The data folder `$variable` names, else its default beside the checkout (../shared/data/...), as
    scripts/run_tests.sh and CI set them; resolved, so a test that changes folder still finds it."""
    return Path(os.environ.get(variable) or REPO.parent / "shared" / "data" / under_shared_data).resolve()


def readme_section(start: str, end: str) -> str:
    """The README's text between two markers: a section a sweep generates."""
    text = README.read_text()
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def write_readme_section(start: str, end: str, section: str) -> None:
    text = README.read_text()
    README.write_text(text[: text.index(start) + len(start)] + "\n" + section + "\n" + text[text.index(end) :])


GLUE_DIR = data_folder("GLUE_DIR", "glue")
SQUAD_DIR = data_folder("SQUAD_DIR", "squad")
FSDD_DIR = data_folder("FSDD_DIR", "audio/free-spoken-digit-dataset/recordings")

HIDDEN = 32
TEXT = dict(vocab_size=VOCABULARY, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
DISTILBERT = dict(vocab_size=VOCABULARY, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=64)
# generic_tiny's special tokens that the hand-written configs set. Decoders pad with token 0 so their classifiers pool
# at the last non-padding token.
SPECIAL_TOKENS = {name: generic_tiny.SPECIAL_TOKENS[name] for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
DECODER = dict(TEXT, **SPECIAL_TOKENS, num_key_value_heads=2)
GPT2 = dict(SPECIAL_TOKENS, vocab_size=VOCABULARY, n_embd=HIDDEN, n_layer=2, n_head=2)
MODERNBERT = dict(
    TEXT, **SPECIAL_TOKENS, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2, local_attention=8
)
AUDIO = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    classifier_proj_size=16,
    mask_time_prob=0.0,
)
BART = dict(
    vocab_size=VOCABULARY,
    d_model=HIDDEN,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
)
T5 = dict(vocab_size=VOCABULARY, d_model=HIDDEN, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2)
FUNNEL = dict(
    vocab_size=VOCABULARY, d_model=HIDDEN, n_head=2, d_head=16, d_inner=64, block_sizes=[1, 1], num_decoder_layers=1
)
EOS_TOKEN = SPECIAL_TOKENS["eos_token_id"]
CHOICES = 2
WAVEFORM_SAMPLES = 1600
IMAGE_SIZE = 32
VIT = dict(TEXT, image_size=IMAGE_SIZE, patch_size=8, vocab_size=None)
STAGES = dict(hidden_sizes=[8, 16], depths=[1, 1])

SEGFORMER = dict(
    num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
    patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32,
)  # fmt: skip
UPERNET = dict(
    backbone_config=transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 32, 32], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
    ),
    hidden_size=16, auxiliary_channels=8, pool_scales=[1, 2], use_auxiliary_head=True,
)  # fmt: skip
SEGMENTATION_VIT = dict(
    hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=IMAGE_SIZE,
    patch_size=8, out_indices=[1, 2, 3, 4], pool_scales=[1, 2], auxiliary_channels=8,
)  # fmt: skip
DPT_NECK = dict(neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3])
SEGMENTATION_IGNORE = 255
CTC_VOCABULARY = 12  # token 0 is the pad token, CTC's blank
CTC_MAX_LABELS = 6

# Every task class the head-family tests cover: config class and tiny settings.
TINY_CONFIGS = {
    "BertForSequenceClassification": (transformers.BertConfig, TEXT),
    "RobertaForSequenceClassification": (transformers.RobertaConfig, TEXT),
    "XLMRobertaForSequenceClassification": (transformers.XLMRobertaConfig, TEXT),
    "CamembertForSequenceClassification": (transformers.CamembertConfig, TEXT),
    "AlbertForSequenceClassification": (transformers.AlbertConfig, dict(TEXT, embedding_size=16)),
    "ElectraForSequenceClassification": (transformers.ElectraConfig, dict(TEXT, embedding_size=HIDDEN)),
    "DebertaForSequenceClassification": (transformers.DebertaConfig, dict(TEXT, pooler_hidden_size=HIDDEN)),
    "DebertaV2ForSequenceClassification": (transformers.DebertaV2Config, dict(TEXT, pooler_hidden_size=HIDDEN)),
    "MPNetForSequenceClassification": (transformers.MPNetConfig, TEXT),
    "FunnelForSequenceClassification": (transformers.FunnelConfig, FUNNEL),
    "ConvBertForSequenceClassification": (transformers.ConvBertConfig, dict(TEXT, embedding_size=HIDDEN)),
    "ModernBertForSequenceClassification": (transformers.ModernBertConfig, MODERNBERT),
    "DistilBertForSequenceClassification": (transformers.DistilBertConfig, DISTILBERT),
    "LlamaForSequenceClassification": (transformers.LlamaConfig, DECODER),
    "Qwen2ForSequenceClassification": (transformers.Qwen2Config, DECODER),
    "MistralForSequenceClassification": (transformers.MistralConfig, DECODER),
    "GPT2ForSequenceClassification": (transformers.GPT2Config, GPT2),
    "BigBirdForSequenceClassification": (transformers.BigBirdConfig, dict(TEXT, attention_type="original_full")),
    # Encoder-decoder classifiers pool the decoder state at the last EOS token: their inputs end in EOS_TOKEN.
    "BartForSequenceClassification": (transformers.BartConfig, dict(BART, **SPECIAL_TOKENS)),
    "MBartForSequenceClassification": (transformers.MBartConfig, dict(BART, **SPECIAL_TOKENS)),
    "T5ForSequenceClassification": (transformers.T5Config, dict(T5, **SPECIAL_TOKENS, decoder_start_token_id=0)),
    "BertForMultipleChoice": (transformers.BertConfig, TEXT),
    "RobertaForMultipleChoice": (transformers.RobertaConfig, TEXT),
    "DistilBertForMultipleChoice": (transformers.DistilBertConfig, DISTILBERT),
    "ModernBertForMultipleChoice": (transformers.ModernBertConfig, MODERNBERT),
    "BertForQuestionAnswering": (transformers.BertConfig, TEXT),
    "RobertaForQuestionAnswering": (transformers.RobertaConfig, TEXT),
    "AlbertForQuestionAnswering": (transformers.AlbertConfig, dict(TEXT, embedding_size=16)),
    "ElectraForQuestionAnswering": (transformers.ElectraConfig, dict(TEXT, embedding_size=HIDDEN)),
    "DebertaV2ForQuestionAnswering": (transformers.DebertaV2Config, TEXT),
    "ModernBertForQuestionAnswering": (transformers.ModernBertConfig, MODERNBERT),
    "DistilBertForQuestionAnswering": (transformers.DistilBertConfig, DISTILBERT),
    "LlamaForQuestionAnswering": (transformers.LlamaConfig, DECODER),
    "BigBirdForQuestionAnswering": (transformers.BigBirdConfig, dict(TEXT, attention_type="original_full")),
    "Wav2Vec2ForCTC": (transformers.Wav2Vec2Config, dict(AUDIO, vocab_size=CTC_VOCABULARY)),
    "HubertForCTC": (transformers.HubertConfig, dict(AUDIO, vocab_size=CTC_VOCABULARY)),
    "SegformerForSemanticSegmentation": (transformers.SegformerConfig, SEGFORMER),
    "UperNetForSemanticSegmentation": (transformers.UperNetConfig, UPERNET),
    "BeitForSemanticSegmentation": (transformers.BeitConfig, dict(SEGMENTATION_VIT, use_auxiliary_head=True)),
    "DPTForSemanticSegmentation": (transformers.DPTConfig, dict(SEGMENTATION_VIT, **DPT_NECK)),
    "T5ForConditionalGeneration": (transformers.T5Config, dict(T5, decoder_start_token_id=0)),
    "BartForConditionalGeneration": (transformers.BartConfig, BART),
    "BertForTokenClassification": (transformers.BertConfig, TEXT),
    "RobertaForTokenClassification": (transformers.RobertaConfig, TEXT),
    "DistilBertForTokenClassification": (transformers.DistilBertConfig, DISTILBERT),
    "DebertaV2ForTokenClassification": (transformers.DebertaV2Config, TEXT),
    "LlamaForTokenClassification": (transformers.LlamaConfig, DECODER),
    "BertForMaskedLM": (transformers.BertConfig, TEXT),
    "RobertaForMaskedLM": (transformers.RobertaConfig, TEXT),
    "DistilBertForMaskedLM": (transformers.DistilBertConfig, DISTILBERT),
    "GPT2LMHeadModel": (transformers.GPT2Config, GPT2),
    "LlamaForCausalLM": (transformers.LlamaConfig, DECODER),
    "Qwen2ForCausalLM": (transformers.Qwen2Config, DECODER),
    # Their forward calls the decoder, not the base model: the head's input is captured at `lm_head`.
    "OPTForCausalLM": (
        transformers.OPTConfig,
        dict(TEXT, **SPECIAL_TOKENS, ffn_dim=64, word_embed_proj_dim=16),
    ),
    "BartForCausalLM": (transformers.BartConfig, dict(BART, **SPECIAL_TOKENS)),
    "Wav2Vec2ForSequenceClassification": (transformers.Wav2Vec2Config, AUDIO),
    "HubertForSequenceClassification": (transformers.HubertConfig, AUDIO),
    "WavLMForSequenceClassification": (transformers.WavLMConfig, AUDIO),
    "Data2VecAudioForSequenceClassification": (transformers.Data2VecAudioConfig, AUDIO),
    "Wav2Vec2ConformerForSequenceClassification": (transformers.Wav2Vec2ConformerConfig, AUDIO),
    "UniSpeechSatForSequenceClassification": (transformers.UniSpeechSatConfig, AUDIO),
    "ViTForImageClassification": (transformers.ViTConfig, VIT),
    "DeiTForImageClassification": (transformers.DeiTConfig, VIT),
    "ConvNextForImageClassification": (transformers.ConvNextConfig, dict(STAGES, num_stages=2)),
    "ResNetForImageClassification": (transformers.ResNetConfig, dict(STAGES, embedding_size=8)),
    "SwinForImageClassification": (
        transformers.SwinConfig,
        dict(image_size=IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
    ),
    # The families and rules the task sweep (tests/test_task_sweep.py) added, each on its generic tiny config.
    **{
        name: generic_tiny_settings(model_type)
        for name, model_type in {
            "XLNetForSequenceClassification": "xlnet",
            "XLNetForMultipleChoice": "xlnet",
            "FunnelForMultipleChoice": "funnel",
            "CanineForSequenceClassification": "canine",
            "CTRLForSequenceClassification": "ctrl",
            "ModernBertDecoderForSequenceClassification": "modernbert-decoder",
            "EuroBertForSequenceClassification": "eurobert",
            "PerceiverForSequenceClassification": "perceiver",
            "SwiftFormerForImageClassification": "swiftformer",
            "HGNetV2ForImageClassification": "hgnet_v2",
            "SplinterForQuestionAnswering": "splinter",
            "XLMWithLMHeadModel": "xlm",
            "MarianMTModel": "marian",
            "FSMTForConditionalGeneration": "fsmt",
        }.items()
    },
}


# A 3-step CPU run that logs every step and saves nothing.
SHORT_RUN = dict(
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    max_steps=3,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)


def training_args(
    output_dir: str | os.PathLike,
    *settings: dict,
    args_class: type[transformers.TrainingArguments] = SPGTrainingArguments,
    **overrides,
) -> transformers.TrainingArguments:
    """The one factory of training arguments: SHORT_RUN, then each dict of `settings` in turn (a test file's own
    run, e.g. more steps and the paper's chain), then `overrides`, each over the one before, as `args_class`
    (SPGTrainingArguments; TrainingArguments or a stack's own for the plain trainer a test compares against)."""
    merged = dict(SHORT_RUN)
    for layer in (*settings, overrides):
        merged |= layer
    return args_class(output_dir=str(output_dir), **merged)


def tiny_model(class_name: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    config_class, kwargs = TINY_CONFIGS[class_name]
    config = config_class(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, class_name)(config)


def tiny_bert(seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    return tiny_model("BertForSequenceClassification", seed=seed, **overrides)


def no_dropout() -> dict:
    return dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def text_dataset(size: int = 32, length: int = 12, seed: int = 0, regression: bool = False) -> Dataset:
    """Token sequences whose label is a learnable function of the second token."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_TOKEN, VOCABULARY, (size, length), generator=generator)
    labels = (ids[:, 1].float() / 20.0).tolist() if regression else (ids[:, 1] > 50).long().tolist()
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels})


def eos_text_dataset(size: int = 32, length: int = 12, seed: int = 0) -> Dataset:
    """text_dataset with every sequence ending in EOS, as encoder-decoder classifiers need."""
    return text_dataset(size, length, seed).map(lambda row: {"input_ids": row["input_ids"][:-1] + [EOS_TOKEN]})


def choice_dataset(size: int = 16, length: int = 12, seed: int = 0) -> Dataset:
    """CHOICES token sequences per example; the right one is the choice whose second token is largest."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_TOKEN, VOCABULARY, (size, CHOICES, length), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids[:, :, 1].argmax(-1).tolist()})


def qa_dataset(size: int = 16, length: int = 12, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_TOKEN, VOCABULARY, (size, length), generator=generator)
    starts = torch.randint(1, length // 2, (size,), generator=generator)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "start_positions": starts.tolist(), "end_positions": (starts + 2).tolist()}
    )


def token_dataset(size: int = 16, length: int = 12, seed: int = 0, task: str = "token_classification") -> Dataset:
    """Token sequences with per-position labels and some positions ignored (-100), different counts per example.
    token_classification: label = a function of the token; masked_lm / causal_lm: the tokens themselves."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_TOKEN, VOCABULARY, (size, length), generator=generator)
    labels = (ids > 50).long() if task == "token_classification" else ids.clone()
    ignored = torch.rand(size, length, generator=generator) < torch.linspace(0.2, 0.8, size)[:, None]
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.masked_fill(ignored, -100).tolist()})


def audio_dataset(size: int = 16, seed: int = 0) -> Dataset:
    """Random waveforms, half of them padded (attention mask 0 over the tail), with a loudness-derived label."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(size, 1, generator=generator) * 2
    waves = torch.randn(size, WAVEFORM_SAMPLES, generator=generator) * scale
    mask = torch.ones(size, WAVEFORM_SAMPLES, dtype=torch.long)
    mask[::2, WAVEFORM_SAMPLES // 2 :] = 0
    labels = (scale.view(-1) * 1.5).long().clamp(max=2)
    return Dataset.from_dict(
        {"input_values": (waves * mask).tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}
    )


def ctc_dataset(size: int = 16, seed: int = 0) -> Dataset:
    """Random waveforms, half of them padded (attention mask 0 over the tail), with 2 to CTC_MAX_LABELS target
    tokens each, padded with -100."""
    generator = torch.Generator().manual_seed(seed)
    waves = torch.randn(size, WAVEFORM_SAMPLES, generator=generator)
    mask = torch.ones(size, WAVEFORM_SAMPLES, dtype=torch.long)
    mask[::2, WAVEFORM_SAMPLES // 2 :] = 0
    tokens = torch.randint(1, CTC_VOCABULARY, (size, CTC_MAX_LABELS), generator=generator)
    lengths = torch.randint(2, CTC_MAX_LABELS + 1, (size, 1), generator=generator)
    labels = tokens.masked_fill(torch.arange(CTC_MAX_LABELS) >= lengths, -100)
    return Dataset.from_dict(
        {"input_values": (waves * mask).tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}
    )


def segmentation_dataset(size: int = 8, seed: int = 0) -> Dataset:
    """Images whose pixel labels follow the sign of two channels (learnable), a border of ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = (pixels[:, 0] > 0).long() + (pixels[:, 1] > 0).long()
    labels[:, :2] = SEGMENTATION_IGNORE
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()})


def greedy_lm_dataset(size: int = 32, length: int = 12, seed: int = 0) -> Dataset:
    """Sequences that tiny_model("LlamaForCausalLM", seed=seed) generates greedily from one random token each: its
    base prediction is right at every labelled position, so SPG's chain has survivors to train on (on random tokens
    a random LM has none)."""
    model = tiny_model("LlamaForCausalLM", seed=seed, use_cache=False).eval()
    first = torch.randint(FIRST_TOKEN, VOCABULARY, (size, 1), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ids = model.generate(
            first, attention_mask=torch.ones_like(first), do_sample=False, max_new_tokens=length - 1,
            min_new_tokens=length - 1, pad_token_id=0,
        )  # fmt: skip
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def image_dataset(size: int = 16, seed: int = 0) -> Dataset:
    """Random images whose label is the sign of the red channel's mean."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = (pixels[:, 0].mean(dim=(1, 2)) > 0).long()
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()})


def losses(trainer: transformers.Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# SPG settings under which an SPG trainer trains exactly as the stack's own trainer: SPG off, and SPG on with zero
# weights (the chain runs on a random stream of its own, leaves the model's buffers alone and adds nothing).
TRAINS_AS_TRAINER = {"spg off": {"spg_enabled": False}, "zero weights": {"spg_weights": [0.0, 0.0, 0.0]}}


def train_each(runs, build) -> list[transformers.Trainer]:
    """Trains each (trainer class, arguments) of `runs` in turn on what `build()` returns afresh, the trainer's
    keyword arguments (model, datasets, processing class), and returns the trainers: a test's own trainer against the
    stack's, in settings that must train alike."""
    trainers = []
    for trainer_class, args in runs:
        trainer = trainer_class(args=args, **build())
        trainer.train()
        trainers.append(trainer)
    return trainers


def assert_trained_alike(first: transformers.Trainer, second: transformers.Trainer, steps: int = 3) -> None:
    """The two trainers logged the same losses at every step and ended with equal weights and buffers (BatchNorm
    statistics included): an SPG trainer in a TRAINS_AS_TRAINER setting against the stack's own trainer."""
    assert len(losses(first)) == steps and losses(first) == losses(second)
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert first_state.keys() == second_state.keys()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name


def assert_saved_without_the_chain(trainer: transformers.Trainer, folder: str | os.PathLike, auto_class: type):
    """save_model() writes the model's own weights only, none of SPG's, and `auto_class` loads them with no key
    missing or unexpected; returns the loaded model."""
    trainer.save_model(str(folder))
    saved = safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
    assert not [name for name in saved if "spg" in name]
    loaded, info = auto_class.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return loaded


def logged_learning_rates(trainer: transformers.Trainer) -> list[float]:
    return [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def assert_resumed_inside_cold_start(resumed, uninterrupted, resumed_snapshots, full_snapshots) -> None:
    """A run of 8 steps with a 3-step cold start, resumed from checkpoint-2, equals the uninterrupted run: the same
    logged rates (0 for the cold steps) and losses, weights still the initial ones after step 3, equal at the end."""
    # The resumed history starts with the checkpoint's own entries for steps 1-2.
    assert sorted(resumed_snapshots.by_step) == [2, 3, 4, 5, 6, 7, 8]
    assert logged_learning_rates(resumed) == logged_learning_rates(uninterrupted)
    assert logged_learning_rates(resumed)[:3] == [0.0, 0.0, 0.0]
    assert losses(resumed) == pytest.approx(losses(uninterrupted), rel=1e-6)
    assert same_weights(resumed_snapshots.by_step[3], full_snapshots.by_step[0])
    assert same_weights(resumed_snapshots.by_step[8], full_snapshots.by_step[8])


def torchrun(worker: str, *arguments: str, timeout: int = 300, processes: int = 2) -> subprocess.CompletedProcess:
    """Launches `processes` processes of `worker` on one machine, as CI and users do."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", worker]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([*command, *arguments], env=environment, capture_output=True, text=True, timeout=timeout)
