"""Every class of transformers' task mappings other than causal LM, as a user picking any model from the hub would
try it: built from its config's defaults shrunk to a tiny size (tests/generic_tiny.py), trained one step (batch 2)
on the task's data. Where plain `Trainer` trains a class, SPG either trains it (survival logged, the construction
check's logits and loss checks passing) or refuses it when the trainer is built, with a ValueError that names the
class and what it lacks, for a reason written down in REFUSED. No class crashes in training. Classes that do not
build generically, or that plain `Trainer` does not train on the generic data, are listed with the reason.

The README's supported-models section carries the tally; `python tests/test_task_sweep.py` runs the sweep and
rewrites it there."""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch
import transformers
from generic_tiny import FIRST_TOKEN, IMAGE_SIZE, SPECIAL_TOKENS, VOCABULARY, generic_tiny_model, sweeping
from helpers import readme_section, training_args, write_readme_section
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from transformers.models.auto import modeling_auto
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
from transformers.trainer_callback import PrinterCallback

from spg_hf import SPGSeq2SeqTrainer, SPGSeq2SeqTrainingArguments, SPGTrainer, SPGTrainingArguments

LENGTH = 8
EXAMPLES = 2
WAVEFORM_SAMPLES = 8000
# The task mappings swept, by the name the tally gives them.
TASK_MAPPINGS = {
    "sequence classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "token classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    "question answering": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
    "multiple choice": modeling_auto.MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES,
    "masked LM": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "seq2seq LM": modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    "image classification": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    "audio classification": modeling_auto.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    "CTC": modeling_auto.MODEL_FOR_CTC_MAPPING_NAMES,
    "semantic segmentation": modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
}

# Classes SPG refuses on purpose (a ValueError when the trainer is built), and why.
REFUSED = {
    "T5Gemma2ForSequenceClassification": "pools its decoder's states at the last non-padding token of the decoder "
    "inputs it derives itself, which no family reads",
    "ProphetNetForConditionalGeneration": "its logits are the first of its n-gram streams and its loss is over all of "
    "them: the LM head on the captured state does not reproduce the logits",
    "ParakeetForCTC": "its CTC loss reads the frame lengths from the encoder's output mask, not from a feature "
    "extractor's output lengths as the CTC family does",
}
# Classes the sweep cannot try: the generic tiny config does not build them, or plain Trainer does not train them on
# the task's generic data (inputs they need beyond it, settings that must agree in ways no generic rule knows).
NEEDS_PACKAGE = "needs a package CI does not install"
NEEDS_INPUTS = "needs inputs beyond the task's generic data"
NO_LOSS = "returns no loss (an inference-only class), so plain Trainer does not train it"
SIZES = "sizes the generic tiny settings do not keep consistent"
LARGE = "larger than 5M parameters at the generic tiny settings"
SKIPPED = {
    "LayoutLMv2ForSequenceClassification": NEEDS_PACKAGE + " (detectron2)",
    "LayoutLMv2ForTokenClassification": NEEDS_PACKAGE + " (detectron2)",
    "LayoutLMv2ForQuestionAnswering": NEEDS_PACKAGE + " (detectron2)",
    "DinatForImageClassification": NEEDS_PACKAGE + " (natten)",
    "TimmWrapperForImageClassification": NEEDS_PACKAGE + " (timm)",
    "GraniteSpeech5ForCTC": NEEDS_PACKAGE + " (torchaudio, for its feature extractor)",
    "BrosForTokenClassification": NEEDS_INPUTS + " (bounding boxes)",
    "LxmertForQuestionAnswering": NEEDS_INPUTS + " (visual features)",
    "LongformerForQuestionAnswering": NEEDS_INPUTS + " (exactly three separator tokens per example)",
    "LongformerForMultipleChoice": NEEDS_INPUTS + " (exactly three separator tokens per example)",
    "XmodForSequenceClassification": NEEDS_INPUTS + " (a language id)",
    "XmodForTokenClassification": NEEDS_INPUTS + " (a language id)",
    "XmodForQuestionAnswering": NEEDS_INPUTS + " (a language id)",
    "XmodForMultipleChoice": NEEDS_INPUTS + " (a language id)",
    "XmodForMaskedLM": NEEDS_INPUTS + " (a language id)",
    "ImageGPTForImageClassification": NEEDS_INPUTS + " (pixels as token ids)",
    "ShieldGemma2ForImageClassification": NEEDS_INPUTS + " (a text prompt beside the image)",
    "VoxtralRealtimeForConditionalGeneration": NEEDS_INPUTS + " (audio features)",
    "Wav2Vec2BertForSequenceClassification": NEEDS_INPUTS + " (input_features; its feature extractor gives waveforms)",
    "Wav2Vec2BertForCTC": NEEDS_INPUTS + " (input_features; its feature extractor gives waveforms)",
    "LasrForCTC": NEEDS_INPUTS + " (the feature extractor's attention mask, which it leaves out at its defaults)",
    "OmniASRForCTC": NEEDS_INPUTS + " (the feature extractor's attention mask, which it leaves out at its defaults)",
    "DeiTForImageClassificationWithTeacher": NO_LOSS,
    "LevitForImageClassificationWithTeacher": NO_LOSS,
    "PPLCNetForImageClassification": SIZES,
    "PerceiverForMaskedLM": SIZES,
    "PerceiverForImageClassificationFourier": SIZES,
    "CohereCompassTextForSequenceClassification": SIZES,
    "AXK1ForSequenceClassification": SIZES,
    "AXK1ForTokenClassification": SIZES,
    "DeepseekV2ForSequenceClassification": SIZES,
    "LayoutLMv3ForSequenceClassification": SIZES,
    "LayoutLMv3ForTokenClassification": SIZES,
    "LayoutLMv3ForQuestionAnswering": SIZES,
    "LiltForSequenceClassification": SIZES,
    "LiltForTokenClassification": SIZES,
    "LiltForQuestionAnswering": SIZES,
    "Qwen3_5ForSequenceClassification": SIZES,
    "Qwen3_5ForTokenClassification": SIZES,
    "T5GemmaForSequenceClassification": SIZES,
    "T5GemmaForTokenClassification": SIZES,
    "T5GemmaForConditionalGeneration": SIZES,
    "ZambaForSequenceClassification": SIZES,
    "Zamba2ForSequenceClassification": SIZES,
    "CvtForImageClassification": SIZES,
    "EfficientNetForImageClassification": SIZES,
    "Siglip2ForImageClassification": SIZES,
    "TextNetForImageClassification": SIZES,
    "Sapiens2ForSemanticSegmentation": SIZES,
    "Tipsv2DptForSemanticSegmentation": SIZES,
    "Nemotron3_5TranscribeForConditionalGeneration": LARGE,
    "VibeVoiceAsrForConditionalGeneration": LARGE,
    "MobileViTV2ForSemanticSegmentation": LARGE,
}
# Of the classes plain Trainer trains, the share SPG must train (the rest refused, for a reason in REFUSED).
LEAST_TRAINED_SHARE = 0.97


def swept_classes() -> list[tuple[str, str, str]]:
    """(task, model type, class name) of every class in the swept mappings (a mapping entry may name several)."""
    classes = []
    for task, mapping in TASK_MAPPINGS.items():
        for model_type, names in sorted(mapping.items()):
            for class_name in names if isinstance(names, tuple) else (names,):
                classes.append((task, model_type, class_name))
    return classes


# ---- the task's data, for the model's inputs ----


def _tokens(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(FIRST_TOKEN, VOCABULARY, shape, generator=generator)


def _image_size(model: transformers.PreTrainedModel) -> int:
    size = getattr(model.config, "image_size", IMAGE_SIZE)
    return size[0] if isinstance(size, (list, tuple)) else size


def _audio(model_type: str, model: transformers.PreTrainedModel, generator: torch.Generator) -> dict[str, Any]:
    """A waveform as the model's own feature extractor (its defaults) prepares it."""
    extractor = getattr(transformers, FEATURE_EXTRACTOR_MAPPING_NAMES[model_type])()
    waveform = torch.randn(WAVEFORM_SAMPLES, generator=generator).numpy()
    features = extractor(waveform, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    return {name: value[0] for name, value in features.items() if name in (model.main_input_name, "attention_mask")}


def example(task: str, model_type: str, model: transformers.PreTrainedModel, index: int) -> dict[str, Any]:
    """One training example of the task, in the model's input."""
    generator = torch.Generator().manual_seed(index)
    label = torch.tensor(index % 2)
    if task in ("image classification", "semantic segmentation"):
        size = _image_size(model)
        pixels = torch.randn(3, size, size, generator=generator)
        if task == "image classification":
            return {"pixel_values": pixels, "labels": label}
        labels = (pixels[0] > 0).long()
        labels[:2] = 255
        return {"pixel_values": pixels, "labels": labels}
    if task in ("audio classification", "CTC"):
        inputs = _audio(model_type, model, generator)
        if task == "CTC":
            return inputs | {"labels": torch.randint(1, model.config.vocab_size, (2,), generator=generator)}
        return inputs | {"labels": label}
    if task == "multiple choice":
        ids = _tokens(generator, 2, LENGTH)
        return {model.main_input_name: ids, "attention_mask": torch.ones_like(ids), "labels": label}
    ids = _tokens(generator, LENGTH)
    ids[-1] = SPECIAL_TOKENS["eos_token_id"]  # encoder-decoder classifiers pool the last EOS
    inputs = {model.main_input_name: ids, "attention_mask": torch.ones_like(ids)}
    if task == "sequence classification":
        return inputs | {"labels": label}
    if task == "question answering":
        return inputs | {"start_positions": torch.tensor(1 + index), "end_positions": torch.tensor(3 + index)}
    if task == "token classification":
        labels = (ids > 50).long()
        labels[0] = -100
        return inputs | {"labels": labels}
    if task == "masked LM":
        return inputs | {"labels": ids.masked_fill(torch.arange(LENGTH) % 2 == 0, -100)}
    if task == "causal LM":
        return inputs | {"labels": ids}
    # seq2seq LM; as long as the input, for the decoder-only speech LMs of the mapping, which read them as a causal LM
    return inputs | {"labels": _tokens(generator, LENGTH)}


# ---- one class: trained, refused or skipped ----


@dataclass(frozen=True)
class Outcome:
    status: str  # "trained", "refused", "skipped" or "crashed"
    reason: str = ""


def _trainer(task: str, model: transformers.PreTrainedModel, dataset: list, spg: bool, output_dir: str) -> Trainer:
    trainers = {
        (False, False): (Trainer, TrainingArguments),
        (False, True): (Seq2SeqTrainer, Seq2SeqTrainingArguments),
        (True, False): (SPGTrainer, SPGTrainingArguments),
        (True, True): (SPGSeq2SeqTrainer, SPGSeq2SeqTrainingArguments),
    }
    trainer_class, args_class = trainers[spg, task == "seq2seq LM"]
    # One step over the whole batch at Trainer's default rate.
    args = training_args(
        output_dir, args_class=args_class, per_device_train_batch_size=EXAMPLES, max_steps=1, learning_rate=5e-5
    )
    trainer = trainer_class(model=model, args=args, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # the logs are read from the state, not printed
    return trainer


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def sweep_class(task: str, model_type: str, class_name: str, **settings: Any) -> Outcome:
    """Builds the class (with `settings` on its generic tiny config) and trains it one step with SPG; where SPG does
    not train it, with plain Trainer, to tell a refusal or crash of SPG's from a class plain Trainer does not train
    either."""
    try:
        model = generic_tiny_model(model_type, class_name, **settings)
        dataset = [example(task, model_type, model, index) for index in range(EXAMPLES)]
    except Exception as error:
        return Outcome("skipped", "does not build: " + _first_line(error))
    with tempfile.TemporaryDirectory() as output_dir:
        try:
            trainer = _trainer(task, model, dataset, spg=True, output_dir=output_dir)
        except ValueError as error:
            spg_outcome = Outcome("refused", str(error))
        except Exception as error:  # the construction check crashed rather than refusing
            spg_outcome = Outcome("crashed", "when built: " + _first_line(error))
        else:
            try:
                trainer.train()
                survival = [log["spg/survival_1"] for log in trainer.state.log_history if "loss" in log]
                if len(survival) == 1 and 0.0 <= survival[0] <= 1.0:
                    return Outcome("trained")
                spg_outcome = Outcome("crashed", f"trained without logging survival: {trainer.state.log_history}")
            except Exception as error:
                spg_outcome = Outcome("crashed", "in training: " + _first_line(error))
        try:
            plain = _trainer(task, generic_tiny_model(model_type, class_name, **settings), dataset, False, output_dir)
            plain.train()
        except Exception as error:
            return Outcome("skipped", "plain Trainer does not train it: " + _first_line(error))
    return spg_outcome


# ---- the sweep, once per test session ----


@cache
def sweep() -> dict[tuple[str, str], Outcome]:
    """(task, class name) -> Outcome, for every swept class."""
    with sweeping():
        return {(task, name): sweep_class(task, model_type, name) for task, model_type, name in swept_classes()}


def classes_with(status: str) -> dict[str, str]:
    return {name: outcome.reason for (_, name), outcome in sweep().items() if outcome.status == status}


def test_no_class_crashes():
    assert not classes_with("crashed"), "crashed instead of training or being refused when the trainer was built"


def test_refusals_name_the_class_and_are_written_down():
    refused = classes_with("refused")
    for name, message in refused.items():
        assert message.startswith(f"SPG does not support {name}"), message
    assert set(refused) == set(REFUSED), "refused classes and REFUSED differ: a new refusal, or a stale entry"


def test_skipped_classes_are_written_down():
    assert set(classes_with("skipped")) == set(SKIPPED), {
        "skipped, not written down": {n: r for n, r in classes_with("skipped").items() if n not in SKIPPED},
        "written down, not skipped": sorted(set(SKIPPED) - set(classes_with("skipped"))),
    }


def test_spg_trains_the_classes_plain_trainer_trains():
    trained, refused = len(classes_with("trained")), len(classes_with("refused"))
    assert trained / (trained + refused) >= LEAST_TRAINED_SHARE, (trained, refused)


def test_readme_states_the_measured_tally():
    assert readme_tally() == tally(sweep()), "the README's tally differs: run `python tests/test_task_sweep.py`"


# Head-shaping options that released checkpoints set away from the config's default: (task, model type, class,
# settings). Each trains with SPG, its construction check reproducing the logits and the loss.
HEAD_SHAPING_OPTIONS = [
    ("causal LM", "granite", "GraniteForCausalLM", dict(logits_scaling=8.0)),
    # logits_scaling = hidden_size / dim_model_base = 8, applied to the head's input (Granite applies it to the output).
    ("causal LM", "minicpm3", "MiniCPM3ForCausalLM", dict(dim_model_base=4)),
    ("causal LM", "falcon_h1", "FalconH1ForCausalLM", dict(lm_head_multiplier=0.5)),
    ("causal LM", "cohere", "CohereForCausalLM", dict(logit_scale=0.25)),
    ("causal LM", "gemma2", "Gemma2ForCausalLM", dict(final_logit_softcapping=5.0)),
    ("causal LM", "llama", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    ("seq2seq LM", "t5", "T5ForConditionalGeneration", dict(tie_word_embeddings=False)),
    ("seq2seq LM", "t5", "T5ForConditionalGeneration", dict(tie_word_embeddings=True)),
    ("sequence classification", "bert", "BertForSequenceClassification", dict(classifier_dropout=0.5)),
    ("sequence classification", "distilbert", "DistilBertForSequenceClassification", dict(seq_classif_dropout=0.5)),
    ("sequence classification", "modernbert", "ModernBertForSequenceClassification", dict(classifier_pooling="mean")),
    ("sequence classification", "eurobert", "EuroBertForSequenceClassification", dict(classifier_pooling="bos")),
    ("sequence classification", "eurobert", "EuroBertForSequenceClassification", dict(classifier_pooling="mean")),
    ("sequence classification", "xlnet", "XLNetForSequenceClassification", dict(summary_type="first")),
    ("sequence classification", "xlnet", "XLNetForSequenceClassification", dict(summary_type="mean")),
    ("sequence classification", "xlm", "XLMForSequenceClassification", dict(summary_type="last")),
    ("multiple choice", "xlnet", "XLNetForMultipleChoice", dict(summary_type="first")),
    ("audio classification", "wav2vec2", "Wav2Vec2ForSequenceClassification", dict(use_weighted_layer_sum=True)),
]


@pytest.mark.parametrize(
    "task, model_type, class_name, settings",
    HEAD_SHAPING_OPTIONS,
    ids=[f"{name}-{settings}" for _, _, name, settings in HEAD_SHAPING_OPTIONS],
)
def test_head_shaping_options_at_non_default_values_train(task, model_type, class_name, settings):
    with sweeping():
        assert sweep_class(task, model_type, class_name, **settings) == Outcome("trained")


def test_one_label_warning_on_a_config_without_label_names(tmp_path):
    model = generic_tiny_model("pvt", "PvtForImageClassification")
    assert model.config.id2label is None
    with torch.no_grad():  # every image is predicted class 0 and labelled so: the survivors all have one label
        model.classifier.bias.copy_(torch.arange(model.config.num_labels) == 0).mul_(100.0)
    dataset = [{"pixel_values": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE), "labels": torch.tensor(0)}] * EXAMPLES
    trainer = _trainer("image classification", model, dataset, spg=True, output_dir=str(tmp_path))
    trainer.train()
    assert trainer.state.global_step == 1


# ---- the README's tally ----

TALLY_START, TALLY_END = "<!-- task-sweep:start -->", "<!-- task-sweep:end -->"


def tally(outcomes: dict[tuple[str, str], Outcome]) -> str:
    """The tally as the README states it: per task mapping the classes swept, trained, refused and skipped, then the
    refused classes with the reason and the skipped ones grouped by reason."""
    lines = [
        f"transformers {transformers.__version__}, one training step per class (batch {EXAMPLES}), "
        "`tests/test_task_sweep.py`:",
        "",
        "| task mapping | classes | SPG trains | refused | skipped |",
        "|---|---|---|---|---|",
    ]
    totals: Counter[str] = Counter()
    for task in TASK_MAPPINGS:
        counts = Counter(outcome.status for (swept_task, _), outcome in outcomes.items() if swept_task == task)
        totals.update(counts)
        lines.append(f"| {task} | {counts.total()} | {counts['trained']} | {counts['refused']} | {counts['skipped']} |")
    lines.append(f"| all | {totals.total()} | {totals['trained']} | {totals['refused']} | {totals['skipped']} |")
    plain_trains = totals["trained"] + totals["refused"]
    lines += [
        "",
        f"Of the {plain_trains} classes plain `Trainer` trains, SPG trains {totals['trained']} "
        f"({totals['trained'] / plain_trains:.1%}); it refuses the rest when the trainer is built:",
        "",
    ]
    names = {name for (_, name), outcome in outcomes.items()}
    lines += [f"- {name}: {REFUSED[name]}." for name in sorted(REFUSED) if name in names]
    lines += ["", "Skipped (not tried):", ""]
    by_reason: dict[str, list[str]] = {}
    for name in sorted(SKIPPED):
        by_reason.setdefault(SKIPPED[name], []).append(name)
    lines += [f"- {reason}: {', '.join(classes)}." for reason, classes in sorted(by_reason.items())]
    return "\n".join(lines)


def readme_tally() -> str:
    return readme_section(TALLY_START, TALLY_END)


def write_readme_tally() -> None:
    write_readme_section(TALLY_START, TALLY_END, tally(sweep()))


if __name__ == "__main__":
    began = time.perf_counter()
    write_readme_tally()
    print(f"README tally rewritten ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
