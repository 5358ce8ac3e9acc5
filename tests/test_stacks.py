"""SPG in the stacks people fine-tune with: PEFT adapters (LoRA) and Seq2SeqTrainer. Each trains 3 SPG steps logging
`spg/survival_1`, saves a folder with no chain keys that loads back with the stack's own loader and predicts as the
trained model did, and with `spg_enabled=False` equals the stack's own trainer step for step. (TRL: test_trl.py.)"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import transformers
from datasets import Dataset
from helpers import (
    T5,
    TINY_CONFIGS,
    TRAINS_AS_TRAINER,
    assert_saved_without_the_chain,
    assert_trained_alike,
    losses,
    no_dropout,
    text_dataset,
    tiny_model,
    token_dataset,
    train_each,
    training_args,
)
from peft import IA3Config, LoHaConfig, LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from spg_hf import SPGSeq2SeqTrainer, SPGSeq2SeqTrainingArguments, SPGTrainer

# ---- PEFT ----

LORA_TASKS = {
    # task class, LoRA task type, target modules, dataset
    "sequence classification": ("BertForSequenceClassification", "SEQ_CLS", ["query", "value"], text_dataset),
    "token classification": ("BertForTokenClassification", "TOKEN_CLS", ["query", "value"], token_dataset),
    "causal LM": (
        "LlamaForCausalLM",
        "CAUSAL_LM",
        ["q_proj", "v_proj"],
        lambda: token_dataset(task="causal_lm"),
    ),
}


def lora_model(task: str) -> PeftModel:
    class_name, task_type, targets, _ = LORA_TASKS[task]
    base = tiny_model(class_name, **no_dropout())
    return get_peft_model(base, LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=targets))


def base_model(task: str) -> transformers.PreTrainedModel:
    return tiny_model(LORA_TASKS[task][0], **no_dropout())


def predictions(model: torch.nn.Module, dataset: Dataset) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(dataset["input_ids"][:4])).logits


@pytest.mark.parametrize("task", sorted(LORA_TASKS))
def test_lora_trains_with_spg_and_saves_an_adapter_folder(tmp_path, task):
    dataset = LORA_TASKS[task][3]()
    model = lora_model(task)
    args = training_args(str(tmp_path / "run"))
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    # The chain trained beside the adapter; the frozen base weights did not move.
    assert any(name.startswith("base_model") and "lora_" in name for name, _ in model.named_parameters())
    trainer.save_model(str(tmp_path / "saved"))
    saved = safetensors.torch.load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    assert saved and not [name for name in saved if "spg" in name]
    reloaded = PeftModel.from_pretrained(base_model(task), str(tmp_path / "saved"))
    torch.testing.assert_close(predictions(reloaded, dataset), predictions(model, dataset))


PEFT_MODELS = {
    **{f"LoRA {task}": (lambda task=task: lora_model(task), LORA_TASKS[task][3]) for task in LORA_TASKS},
    "prompt tuning causal LM": (
        lambda: get_peft_model(
            tiny_model("LlamaForCausalLM", **no_dropout()),
            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        ),
        lambda: token_dataset(task="causal_lm"),
    ),
    "prompt tuning last-token classifier": (
        lambda: get_peft_model(
            tiny_model("LlamaForSequenceClassification", num_labels=2),
            PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
        ),
        text_dataset,
    ),
}


@pytest.mark.parametrize("setting", sorted(TRAINS_AS_TRAINER))
@pytest.mark.parametrize("adapter", sorted(PEFT_MODELS))
def test_peft_with_spg_off_or_zero_weights_equals_trainer(tmp_path, adapter, setting):
    model_factory, dataset_factory = PEFT_MODELS[adapter]
    dataset = dataset_factory()

    def build_run() -> dict:
        torch.manual_seed(0)
        return dict(model=model_factory(), train_dataset=dataset)

    runs = [
        (Trainer, training_args(tmp_path / "plain", args_class=TrainingArguments)),
        (SPGTrainer, training_args(tmp_path / "spg", TRAINS_AS_TRAINER[setting])),
    ]
    assert_trained_alike(*train_each(runs, build_run))


def test_lora_resume_restores_the_chain(tmp_path):
    dataset = token_dataset(task="causal_lm")
    checkpointing = dict(max_steps=4, save_steps=2, save_strategy="steps")
    full = SPGTrainer(
        model=lora_model("causal LM"), args=training_args(tmp_path / "a", checkpointing), train_dataset=dataset
    )
    full.train()
    resumed = SPGTrainer(
        model=lora_model("causal LM"), args=training_args(tmp_path / "a", checkpointing), train_dataset=dataset
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert losses(resumed)[-2:] == pytest.approx(losses(full)[-2:], rel=1e-5)


# ---- Seq2SeqTrainer ----

BART = dict(
    vocab_size=99, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=1, bos_token_id=0,
    eos_token_id=2, decoder_start_token_id=2, max_position_embeddings=64,
)  # fmt: skip
SEQ2SEQ = {
    "T5ForConditionalGeneration": (transformers.T5Config, dict(T5, decoder_start_token_id=0, eos_token_id=1)),
    "BartForConditionalGeneration": (transformers.BartConfig, BART),
    "MarianMTModel": TINY_CONFIGS["MarianMTModel"],  # a seq2seq LM whose name says no task
}


def seq2seq_model(class_name: str) -> transformers.PreTrainedModel:
    config_class, settings = SEQ2SEQ[class_name]
    torch.manual_seed(0)
    return getattr(transformers, class_name)(config_class(**{**settings, "dropout_rate": 0.0, "dropout": 0.0}))


def seq2seq_dataset(size: int = 16) -> Dataset:
    """Targets that copy the first source tokens: learnable, so predictions get right and trajectories live."""
    generator = torch.Generator().manual_seed(0)
    sources = torch.randint(5, 99, (size, 10), generator=generator)
    targets = sources[:, :5].clone()
    targets[:, -1] = -100  # an ignored position, as padded labels are
    return Dataset.from_dict({"input_ids": sources.tolist(), "labels": targets.tolist()})


def exact_match(prediction: transformers.EvalPrediction) -> dict[str, float]:
    return {"generated_tokens": float(prediction.predictions.shape[1])}


@pytest.mark.parametrize("class_name", sorted(SEQ2SEQ))
def test_seq2seq_trains_with_spg_and_evaluates_with_generate(tmp_path, class_name):
    model = seq2seq_model(class_name)
    args = training_args(
        str(tmp_path / "run"),
        args_class=SPGSeq2SeqTrainingArguments,
        predict_with_generate=True,
        generation_max_length=6,
    )
    dataset = seq2seq_dataset()
    trainer = SPGSeq2SeqTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, compute_metrics=exact_match
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    assert trainer._spg_settings_applied == {"spg_normalize": "batch"}  # the token-level default
    metrics = trainer.evaluate()
    assert metrics["eval_generated_tokens"] > 0 and "eval_loss" in metrics  # generate() ran
    assert_saved_without_the_chain(trainer, tmp_path / "saved", transformers.AutoModelForSeq2SeqLM)


@pytest.mark.parametrize("setting", sorted(TRAINS_AS_TRAINER))
@pytest.mark.parametrize("class_name", sorted(SEQ2SEQ))
def test_seq2seq_with_spg_off_or_zero_weights_equals_seq2seq_trainer(tmp_path, class_name, setting):
    runs = [
        (Seq2SeqTrainer, training_args(tmp_path / "plain", args_class=Seq2SeqTrainingArguments)),
        (
            SPGSeq2SeqTrainer,
            training_args(tmp_path / "spg", TRAINS_AS_TRAINER[setting], args_class=SPGSeq2SeqTrainingArguments),
        ),
    ]
    trainers = train_each(runs, lambda: dict(model=seq2seq_model(class_name), train_dataset=seq2seq_dataset()))
    assert_trained_alike(*trainers)


def test_spg_trainer_names_the_trainer_for_seq2seq_arguments(tmp_path):
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True)
    with pytest.raises(TypeError, match="SPGSeq2SeqTrainer for Seq2SeqTrainingArguments"):
        SPGTrainer(model=seq2seq_model("T5ForConditionalGeneration"), args=args, train_dataset=seq2seq_dataset())
    converted = SPGSeq2SeqTrainer(model=seq2seq_model("T5ForConditionalGeneration"), args=args)
    assert isinstance(converted.args, SPGSeq2SeqTrainingArguments) and converted.args.predict_with_generate


# ---- defaults and messages shared by every stack ----


def test_spg_normalize_defaults_by_task_unless_set(tmp_path):
    cases = [
        ("BertForSequenceClassification", text_dataset(), None, "survivors"),
        ("BertForTokenClassification", token_dataset(), None, "batch"),
        ("LlamaForCausalLM", token_dataset(task="causal_lm"), None, "batch"),
        ("LlamaForCausalLM", token_dataset(task="causal_lm"), "survivors", "survivors"),
    ]
    for class_name, dataset, setting, applied in cases:
        args = training_args(str(tmp_path / class_name), spg_normalize=setting)
        trainer = SPGTrainer(model=tiny_model(class_name), args=args, train_dataset=dataset)
        trainer.train()
        assert trainer._spg_settings_applied == {"spg_normalize": applied}, class_name
        trainer.create_model_card()
        assert f"- spg_normalize: {applied}" in (tmp_path / class_name / "README.md").read_text()


OTHER_ADAPTERS = {
    "IA3": ("BertForSequenceClassification", text_dataset, lambda: IA3Config(task_type="SEQ_CLS")),
    "LoHa": ("BertForSequenceClassification", text_dataset, lambda: LoHaConfig(task_type="SEQ_CLS", r=4)),
    # Virtual tokens prepended to the sequence: positions without labels, so no trajectories.
    "prompt tuning": (
        "LlamaForCausalLM",
        lambda: token_dataset(task="causal_lm"),
        lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    ),
}


@pytest.mark.parametrize("adapter", sorted(OTHER_ADAPTERS))
def test_other_peft_adapters_train_with_spg(tmp_path, adapter):
    class_name, dataset, config = OTHER_ADAPTERS[adapter]
    model = get_peft_model(tiny_model(class_name, **no_dropout()), config())
    args = training_args(str(tmp_path / "run"))
    trainer = SPGTrainer(model=model, args=args, train_dataset=dataset())
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
