"""Head families: every covered task class resolves to the family the README names, its shared head reproduces the
model's own logits, SPG trains it and saves a plain folder, SPG off is Trainer, and the chain runs only on the
positions the head reads."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from generic_tiny import generic_tiny_model
from helpers import (
    CHOICES,
    EOS_TOKEN,
    IMAGE_SIZE,
    README,
    TINY_CONFIGS,
    TRAINS_AS_TRAINER,
    assert_saved_without_the_chain,
    assert_trained_alike,
    audio_dataset,
    choice_dataset,
    ctc_dataset,
    eos_text_dataset,
    image_dataset,
    qa_dataset,
    segmentation_dataset,
    text_dataset,
    tiny_model,
    token_dataset,
    train_each,
    training_args,
)
from transformers import Trainer, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.heads import FAMILIES, READS_ALL, TOKEN_LEVEL_TASKS, head_family_for, resized_like, task_of
from spg_hf.objectives import OBJECTIVES
from spg_hf.spg import ChainTerms, TRPChain, spg_loss

AUTO_CLASSES = {
    "ForMultipleChoice": transformers.AutoModelForMultipleChoice,
    "ForQuestionAnswering": transformers.AutoModelForQuestionAnswering,
    "ForTokenClassification": transformers.AutoModelForTokenClassification,
    "ForMaskedLM": transformers.AutoModelForMaskedLM,
    "ForCausalLM": transformers.AutoModelForCausalLM,
    "LMHeadModel": transformers.AutoModelForCausalLM,
    "ForImageClassification": transformers.AutoModelForImageClassification,
    "ForSequenceClassification": transformers.AutoModelForSequenceClassification,
    "ForConditionalGeneration": transformers.AutoModelForSeq2SeqLM,
    "ForCTC": transformers.AutoModelForCTC,
    "ForSemanticSegmentation": transformers.AutoModelForSemanticSegmentation,
}
AUDIO_AUTO_CLASS = transformers.AutoModelForAudioClassification


def readme_families() -> dict[str, list[str]]:
    """Family name -> class names, from the README's supported-models table (rows `| `family` | ... | classes |`)."""
    section = README.read_text().split("### Supported models", 1)[1]
    lines = section[section.index("| family |") :].splitlines()
    table = [line for line in lines[: lines.index("")] if line.startswith("| `")]
    families = {}
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        families[cells[0].strip("`")] = re.findall(r"\w+(?:For\w+|LMHeadModel|MTModel)", cells[-1])
    return families


def build(class_name: str, **overrides) -> transformers.PreTrainedModel:
    num_labels = {} if "QuestionAnswering" in class_name else {"num_labels": 3}
    return tiny_model(class_name, **num_labels, **overrides)


def model_inputs(model: transformers.PreTrainedModel) -> dict:
    """A batch of 3 with padding: right padding in row 2 and, for text, left padding in row 1."""
    torch.manual_seed(0)
    if model.main_input_name == "pixel_values":
        return {"pixel_values": torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)}
    if model.main_input_name == "input_values":
        attention_mask = torch.ones(3, 1600, dtype=torch.long)
        attention_mask[1, 1000:] = 0
        return {"input_values": torch.randn(3, 1600), "attention_mask": attention_mask}
    input_ids = torch.randint(5, 99, (3, 10))
    if task_of(model) == "multiple_choice":
        return {"input_ids": torch.randint(5, 99, (3, CHOICES, 10))}
    if task_of(model) == "seq2seq_lm":
        return {"input_ids": input_ids, "decoder_input_ids": torch.randint(5, 99, (3, 6))}
    if model.config.is_encoder_decoder:
        return {"input_ids": torch.cat([input_ids[:, :-1], torch.full((3, 1), EOS_TOKEN)], dim=1)}
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[2, 7:] = 0
    attention_mask[1, :2] = 0
    pad = getattr(model.config.get_text_config(), "pad_token_id", None) or 0
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, pad), "attention_mask": attention_mask}


def train_dataset(model: transformers.PreTrainedModel):
    if task_of(model) == "ctc":
        return ctc_dataset()
    if task_of(model) == "semantic_segmentation":
        return segmentation_dataset()
    if task_of(model) == "question_answering":
        return qa_dataset()
    if task_of(model) in TOKEN_LEVEL_TASKS:
        return token_dataset(task=task_of(model))
    if task_of(model) == "multiple_choice":
        return choice_dataset()
    if model.config.is_encoder_decoder:
        return eos_text_dataset()
    return {"pixel_values": image_dataset, "input_values": audio_dataset}.get(model.main_input_name, text_dataset)()


def auto_class(model: transformers.PreTrainedModel):
    if model.main_input_name == "input_values" and task_of(model) != "ctc":
        return AUDIO_AUTO_CLASS
    if task_of(model) == "seq2seq_lm":  # MarianMTModel's name has no task suffix
        return transformers.AutoModelForSeq2SeqLM
    return next(auto for suffix, auto in AUTO_CLASSES.items() if type(model).__name__.endswith(suffix))


def head_logits(model, family, inputs):
    """The model's own outputs and the family's head applied to the state it captures, in eval mode."""
    captured = []
    handle = family.register_capture(model, captured.append)
    model.eval()
    with torch.no_grad():
        outputs = model(**inputs)
        shared = family.head(model, family.select(model, captured[0], inputs), inputs)
    handle.remove()
    own = (outputs.start_logits, outputs.end_logits) if family.task == "question_answering" else outputs.logits
    if family.task == "semantic_segmentation":
        shared = resized_like(shared, own)
    return own, shared


def one_class_per_family() -> dict[str, tuple[str, dict]]:
    """Family name -> a tested class and its config overrides (mean pooling is a ModernBERT setting)."""
    candidates = [(name, {}) for name in sorted(TINY_CONFIGS)]
    candidates.append(("ModernBertForSequenceClassification", {"classifier_pooling": "mean"}))
    chosen: dict[str, tuple[str, dict]] = {}
    for name, overrides in candidates:
        chosen.setdefault(head_family_for(build(name, **overrides)).name, (name, overrides))
    # timm does not install beside the torch CI runs: its wrapper's family is checked by hand (README).
    assert set(chosen) == {family.name for family in FAMILIES} - {"timm_classifier"}
    return chosen


ONE_CLASS_PER_FAMILY = one_class_per_family()


# ---- which family, and the README says so ----


def test_readme_table_matches_the_resolved_families():
    documented = readme_families()
    assert set(documented) == {family.name for family in FAMILIES}
    listed = [name for names in documented.values() for name in names]
    assert sorted(listed) == sorted(TINY_CONFIGS)
    for family_name, class_names in documented.items():
        for class_name in class_names:
            assert head_family_for(build(class_name)).name == family_name, class_name


@pytest.mark.parametrize("class_name", sorted(TINY_CONFIGS))
def test_shared_head_reproduces_model_logits(class_name):
    model = build(class_name)
    own, shared = head_logits(model, head_family_for(model), model_inputs(model))
    torch.testing.assert_close(shared, own)


@pytest.mark.parametrize("class_name", ["Wav2Vec2ForSequenceClassification", "WavLMForSequenceClassification"])
def test_audio_head_with_weighted_layer_sum(class_name):
    model = build(class_name, use_weighted_layer_sum=True)
    own, shared = head_logits(model, head_family_for(model), model_inputs(model))
    torch.testing.assert_close(shared, own)


def test_mean_pooling_prediction_head_reads_every_token():
    model = build("ModernBertForSequenceClassification", classifier_pooling="mean")
    family = head_family_for(model)
    assert family.reads == READS_ALL
    own, shared = head_logits(model, family, model_inputs(model))
    torch.testing.assert_close(shared, own)


def test_question_masked_span_head_masks_the_question_as_the_model_does():
    model = build("BigBirdForQuestionAnswering")
    input_ids = torch.randint(5, 60, (2, 12))
    input_ids[:, 4] = model.sep_token_id  # the question ends at the first separator
    own, shared = head_logits(model, head_family_for(model), {"input_ids": input_ids})
    torch.testing.assert_close(shared, own)
    assert (shared[0][:, 1:5] < -1e5).all() and (shared[0][:, 5:] > -1e5).all()


@pytest.mark.parametrize("class_name", [n for n in sorted(TINY_CONFIGS) if head_family_for(build(n)).offers_pooled])
def test_pooled_form_feeds_the_classifier(class_name):
    model = build(class_name)
    own, shared = head_logits(model, head_family_for(model).pooled_form(), model_inputs(model))
    torch.testing.assert_close(shared, own)


@pytest.mark.parametrize(
    "model",
    [
        # Pools its decoder's states at the last non-padding token of decoder inputs it derives itself.
        generic_tiny_model("t5gemma2", "T5Gemma2ForSequenceClassification"),
        transformers.BertForPreTraining(transformers.BertConfig(**TINY_CONFIGS["BertForQuestionAnswering"][1])),
    ],
    ids=["head-of-no-family", "task-of-no-family"],
)
def test_unsupported_models_say_what_is_missing(output_dir, model):
    with pytest.raises(ValueError, match=f"SPG does not support {type(model).__name__}: .*(families|task class)"):
        SPGTrainer(model=model, args=training_args(output_dir))
    SPGTrainer(model=model, args=training_args(output_dir, spg_enabled=False))  # plain Trainer takes any model


class FusedHeadLlama(transformers.LlamaForCausalLM):
    """Computes its logits from `lm_head`'s weight without calling the module, as fused-loss heads do."""

    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden = self.model(input_ids=input_ids).last_hidden_state
        return {"logits": torch.nn.functional.linear(hidden, self.lm_head.weight)}


class ScaledLogitsBert(transformers.BertForSequenceClassification):
    """Scales the classifier's logits after the head: the shared head alone does not give its prediction."""

    def forward(self, input_ids=None, labels=None, **kwargs):
        outputs = super().forward(input_ids=input_ids, labels=labels, **kwargs)
        outputs.logits = outputs.logits * 2
        return outputs


@pytest.mark.parametrize(
    "model_class, config_name, reason",
    [
        (FusedHeadLlama, "LlamaForCausalLM", "its forward never calls"),
        (ScaledLogitsBert, "BertForSequenceClassification", "does not reproduce the model's logits"),
    ],
)
def test_models_whose_forward_bypasses_the_family_head_are_refused_before_training(
    output_dir, model_class, config_name, reason
):
    config_class, settings = TINY_CONFIGS[config_name]
    model = model_class(config_class(**settings, num_labels=3))
    dataset = train_dataset(build(config_name))
    with pytest.raises(ValueError, match=f"SPG does not support {model_class.__name__} with head family .*{reason}"):
        SPGTrainer(model=model, args=training_args(output_dir), train_dataset=dataset)
    # Without a training set at construction, the check runs when training starts, before the first step.
    trainer = SPGTrainer(model=model, args=training_args(output_dir))
    trainer.train_dataset = dataset
    with pytest.raises(ValueError, match=reason):
        trainer.train()
    assert trainer.state.global_step == 0


# ---- the chain runs on the positions the head reads ----


@pytest.mark.parametrize(
    "class_name",
    ["BertForSequenceClassification", "RobertaForSequenceClassification", "LlamaForSequenceClassification"],
)
def test_chain_on_read_positions_equals_full_length_chain(class_name):
    model = build(class_name)
    family = head_family_for(model)
    inputs = model_inputs(model)
    labels = torch.tensor([0, 1, 2])
    chain = TRPChain(family.width(model), [0.0, 0.0, 0.0], "none")
    with torch.no_grad():
        # A chain that has learned (zero weights would make the check trivial), on values whose products and sums
        # are exact in float32: a matrix product over B rows and over B x L rows may round differently otherwise.
        for parameter in chain.parameters():
            parameter.copy_(torch.randint(-2, 3, parameter.shape) / 8)
    model.eval()
    with torch.no_grad():
        hidden = (model.base_model(**inputs)[0] * 16).round() / 16
        on_read = [family.head(model, state, inputs) for state in chain(family.select(model, hidden, inputs))]
        full = [family.head(model, family.select(model, state, inputs), inputs) for state in chain(hidden)]
    losses = []
    for logits in (on_read, full):
        terms = [OBJECTIVES["classification"].terms(t, labels, 0.5) for t in logits]
        losses.append(spg_loss(terms[0][0].mean(), [ChainTerms(terms[0][1], terms)], [0.4, 0.2, 0.1], "survivors").loss)
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(on_read, full, strict=True):
        assert torch.equal(a, b)


# ---- training: SPG trains and saves a plain folder; SPG off is Trainer ----


@pytest.mark.parametrize("class_name", sorted(TINY_CONFIGS))
def test_spg_trains_and_saves_a_plain_model(tmp_path, class_name):
    model = build(class_name)
    trainer = SPGTrainer(model=model, args=training_args(str(tmp_path / "run")), train_dataset=train_dataset(model))
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    # A model with an auxiliary head (UperNet, BEiT, DPT) trains a chain on it too.
    has_auxiliary = getattr(model, "auxiliary_head", None) is not None
    assert all(("spg/auxiliary_survival_1" in log) == has_auxiliary for log in logs)
    assert_saved_without_the_chain(trainer, tmp_path / "saved", auto_class(model))


def training_run(class_name: str, overrides: dict):
    """What a trainer of the class trains on: a fresh model and its task's data."""

    def build_run() -> dict:
        model = build(class_name, **overrides)
        return dict(model=model, train_dataset=train_dataset(model))

    return build_run


@pytest.fixture(scope="module")
def plain_trainer_run(tmp_path_factory):
    """Plain Trainer's run of a class, trained once per module: a class's "spg off" and "zero weights" cases compare
    against the same (deterministic) run."""
    runs = {}

    def run(class_name: str, overrides: dict) -> Trainer:
        key = (class_name, repr(sorted(overrides.items())))
        if key not in runs:
            args = training_args(tmp_path_factory.mktemp("plain"), args_class=TrainingArguments)
            (runs[key],) = train_each([(Trainer, args)], training_run(class_name, overrides))
        return runs[key]

    return run


@pytest.mark.parametrize(
    "class_name, overrides, setting",
    [(name, {}, "spg off") for name in sorted(TINY_CONFIGS)]
    + [(name, overrides, "zero weights") for name, overrides in ONE_CLASS_PER_FAMILY.values()],
)
def test_spg_off_or_zero_weights_equal_trainer(plain_trainer_run, tmp_path, class_name, overrides, setting):
    """SPG off on every class; SPG with zero weights (the chain runs and adds nothing) on one class per family, whose
    loss check passes at construction."""
    runs = [(SPGTrainer, training_args(tmp_path, TRAINS_AS_TRAINER[setting]))]
    (spg,) = train_each(runs, training_run(class_name, overrides))
    assert_trained_alike(plain_trainer_run(class_name, overrides), spg)
