"""`spg_head`: SPG on models that are not HF task classes (own modules, torchvision-style networks), on HF models
whose head it overrides, and the errors for a head it cannot use."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from helpers import (
    TRAINS_AS_TRAINER,
    assert_trained_alike,
    image_dataset,
    losses,
    segmentation_dataset,
    text_dataset,
    tiny_model,
    token_dataset,
    train_each,
    training_args,
)
from own_models import VISION_NETWORKS, ImageClassifier, Segmenter, TextClassifier, TinyFCN, TokenTagger
from transformers import Trainer, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.trainer import SPG_WEIGHTS_NAME

MULTI_LABELS = 3


def multi_label_dataset():
    """Float 0/1 labels per class, each a function of one token."""
    dataset = text_dataset()
    return dataset.map(lambda row: {"labels": [float(row["input_ids"][k] > 50) for k in range(MULTI_LABELS)]})


# name -> (model factory, spg_head, dataset factory)
OWN_MODELS = {
    "text_classifier": (lambda: TextClassifier(2), "head", text_dataset),
    "tuple_output": (lambda: TextClassifier(2, tuple_output=True), "head", text_dataset),
    "regression": (lambda: TextClassifier(1), "head", lambda: text_dataset(regression=True)),
    "multi_label": (lambda: TextClassifier(MULTI_LABELS), "head", multi_label_dataset),
    "token_tagger": (TokenTagger, "tagger", token_dataset),
    **{
        name: (lambda network=network: ImageClassifier(network(num_classes=2)), head, image_dataset)
        for name, (network, head) in VISION_NETWORKS.items()
    },
    "fcn_segmentation": (lambda: Segmenter(TinyFCN(3)), "net.classifier", segmentation_dataset),
}
OBJECTIVES = {
    "regression": "regression",
    "multi_label": "multi_label",
    "token_tagger": "token_classification",
    "fcn_segmentation": "segmentation",
}


def build(name: str, seed: int = 0):
    factory, head, dataset = OWN_MODELS[name]
    torch.manual_seed(seed)
    return factory(), head, dataset()


# Over SHORT_RUN: the paper's form, its chain trained.
SETTINGS = dict(spg_activation="none")


@pytest.mark.parametrize("name", sorted(OWN_MODELS))
def test_spg_trains_an_own_model_and_saves_it_without_the_chain(tmp_path, name):
    model, head, dataset = build(name)
    trainer = SPGTrainer(
        model=model, args=training_args(str(tmp_path / "run"), SETTINGS, spg_head=head), train_dataset=dataset
    )
    assert trainer._head_family().objective == OBJECTIVES.get(name, "classification")
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    assert not hasattr(model, "spg_chain")
    trainer.save_model(str(tmp_path / "saved"))
    saved = safetensors.torch.load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert saved.keys() == model.state_dict().keys()


@pytest.mark.parametrize("setting", sorted(TRAINS_AS_TRAINER))
@pytest.mark.parametrize("name", sorted(OWN_MODELS))
def test_spg_off_or_zero_weights_equal_trainer_on_an_own_model(tmp_path, name, setting):
    spg = TRAINS_AS_TRAINER[setting]
    runs = [
        (Trainer, training_args(tmp_path / "plain", args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", SETTINGS, spg, spg_head=OWN_MODELS[name][1])),
    ]

    def build_run() -> dict:
        model, _, dataset = build(name)
        return dict(model=model, train_dataset=dataset)

    assert_trained_alike(*train_each(runs, build_run))


def test_own_model_checkpoint_resumes_with_its_chain(tmp_path):
    def run(output_dir, resume=None, max_steps=4):
        model, head, dataset = build("resnet")
        args = training_args(
            str(output_dir), SETTINGS, spg_head=head, max_steps=max_steps, save_strategy="steps", save_steps=2
        )
        trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / SPG_WEIGHTS_NAME).is_file()
    weights = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    assert not [key for key in weights if key.startswith("spg_chain")]
    resumed = run(tmp_path / "full", resume=str(checkpoint))
    assert losses(resumed)[-2:] == pytest.approx(losses(full)[-2:], rel=1e-5)


def test_evaluation_is_untouched_by_spg(tmp_path):
    scores = []
    for enabled in (False, True):
        model, head, dataset = build("mobilenet_v3")
        args = training_args(str(tmp_path / str(enabled)), SETTINGS, spg_enabled=enabled, spg_head=head, max_steps=1)
        trainer = SPGTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=image_dataset(seed=1))
        scores.append(trainer.evaluate()["eval_loss"])
    assert scores[0] == scores[1]


def test_spg_head_overrides_the_family_of_an_hf_model(tmp_path):
    model = tiny_model("BertForSequenceClassification", num_labels=3)
    trainer = SPGTrainer(
        model=model, args=training_args(str(tmp_path), SETTINGS, spg_head="classifier"), train_dataset=text_dataset()
    )
    family = trainer._head_family()
    assert family.name == "spg_head" and family.capture == "classifier"
    trainer.train()
    assert "spg/survival_1" in trainer.state.log_history[0]


def test_hf_multi_label_classification_trains(tmp_path):
    model = tiny_model("BertForSequenceClassification", num_labels=MULTI_LABELS)
    trainer = SPGTrainer(model=model, args=training_args(str(tmp_path), SETTINGS), train_dataset=multi_label_dataset())
    assert trainer._spg_run is None and model.config.problem_type == "multi_label_classification"
    trainer.train()
    assert all(0.0 <= log["spg/survival_1"] <= 1.0 for log in trainer.state.log_history if "loss" in log)


# ---- bad input: a named error before training ----


@pytest.mark.parametrize(
    "head, message",
    [
        ("net.head", r"spg_head='net.head' names no module of ImageClassifier \(its top-level modules: net\)"),
        ("net.layer1.0", r"cannot be read as a prediction of the labels \(\(1,\) torch.int64\)"),
    ],
)
def test_a_head_that_cannot_be_used_is_refused_at_construction(tmp_path, head, message):
    model, _, dataset = build("resnet")
    with pytest.raises(ValueError, match=message):
        SPGTrainer(model=model, args=training_args(str(tmp_path), SETTINGS, spg_head=head), train_dataset=dataset)


def test_a_head_the_forward_never_calls_is_refused_at_construction(tmp_path):
    model, _, dataset = build("text_classifier")
    model.unused = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"spg_head='unused': TextClassifier's forward never calls that module"):
        SPGTrainer(model=model, args=training_args(str(tmp_path), SETTINGS, spg_head="unused"), train_dataset=dataset)


def test_an_own_model_without_spg_head_is_told_to_name_it(tmp_path):
    model, _, dataset = build("resnet")
    with pytest.raises(ValueError, match="SPG does not support ImageClassifier: .* spg_head="):
        SPGTrainer(model=model, args=training_args(str(tmp_path), SETTINGS), train_dataset=dataset)


def test_a_named_head_is_read_when_training_starts_without_a_dataset_at_construction(tmp_path):
    model, _, dataset = build("text_classifier")
    trainer = SPGTrainer(model=model, args=training_args(str(tmp_path), SETTINGS, spg_head="missing"))
    trainer.train_dataset = dataset
    with pytest.raises(ValueError, match="spg_head='missing' names no module"):
        trainer.train()
    assert trainer.state.global_step == 0
