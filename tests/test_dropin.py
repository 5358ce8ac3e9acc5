"""SPGTrainer where Trainer goes (issue 16): plain TrainingArguments, args=None, and gradient accumulation that keeps
Trainer's normalisation by the item count (`num_items_in_batch`) wherever the model divides by it."""

from __future__ import annotations

import dataclasses
import functools
import logging

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset
from helpers import (
    DECODER,
    HIDDEN,
    MODERNBERT,
    TEXT,
    WORKERS,
    no_dropout,
    text_dataset,
    tiny_bert,
    tiny_model,
    torchrun,
    training_args,
)
from transformers import Seq2SeqTrainingArguments, Trainer, TrainingArguments

from spg_hf import SPGTrainer, SPGTrainingArguments, spg_config
from spg_hf.trainer import check_spg_support
from spg_hf.trainer._compat import loss_divides_by_item_count

# Dropout 0 everywhere, so runs that split the same examples differently compute the same function.
MODELS = {
    "BertForSequenceClassification": (transformers.BertConfig, dict(TEXT, **no_dropout())),
    "LlamaForSequenceClassification": (transformers.LlamaConfig, DECODER),
    "LlamaForCausalLM": (transformers.LlamaConfig, DECODER),
    "BertForMaskedLM": (transformers.BertConfig, dict(TEXT, **no_dropout())),
    "ModernBertForMaskedLM": (transformers.ModernBertConfig, MODERNBERT),
}
# Their forward takes **kwargs but drops num_items_in_batch (BERT computes its own loss; the decoder classifier calls
# loss_function without its kwargs); stock Trainer still counts their loss as scaled for accumulation and multiplies
# the gradient by the accumulation steps (upstream #47688).
INFLATED_BY_TRAINER = {"BertForSequenceClassification", "LlamaForSequenceClassification", "BertForMaskedLM"}
# A mamba-only Zamba2 classifier: its forward hands **kwargs to the sequence classification loss.
ZAMBA2 = dict(
    vocab_size=99,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    layers_block_type=["mamba", "mamba"],
    num_attention_heads=2,
    num_key_value_heads=2,
    mamba_d_state=8,
    mamba_headdim=8,
    n_mamba_heads=8,
    pad_token_id=0,
    use_cache=False,
)

DDP_WORKER = str(WORKERS / "ddp_item_count_worker.py")
MICRO_BATCH = 2
ACCUMULATION = 4
LENGTH = 10


def build_model(name: str) -> transformers.PreTrainedModel:
    config_class, settings = MODELS[name]
    torch.manual_seed(0)
    return getattr(transformers, name)(config_class(**settings))


def labelled_counts(size: int, balanced: bool) -> list[int]:
    """Labelled positions per example, uneven. balanced: every pair of neighbours (one micro-batch under sequential
    sampling) holds the same total, LENGTH."""
    counts = [1, 4, 7, 2, 9, 3, 6, 8]
    if balanced:
        counts = [count if i % 2 == 0 else LENGTH - counts[i - 1] for i, count in enumerate(counts)]
    return [counts[i % len(counts)] for i in range(size)]


def token_dataset(name: str, size: int = 16, balanced: bool = False) -> Dataset:
    """Random sequences with a different number of labelled positions per example (sequence classification: one
    label each)."""
    if name.endswith("ForSequenceClassification"):
        return text_dataset(size=size, length=LENGTH)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (size, LENGTH), generator=generator)
    labels = torch.full_like(ids, -100)
    for row, count in enumerate(labelled_counts(size, balanced)):
        if name == "LlamaForCausalLM":
            # The loss shifts labels left, so position 0 never counts: label the last `count` positions.
            labels[row, LENGTH - count :] = ids[row, LENGTH - count :]
        else:
            positions = torch.randperm(LENGTH, generator=generator)[:count]
            labels[row, positions] = ids[row, positions]
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


# Over SHORT_RUN: accumulation steps over micro-batches in order, and SGD without clipping: the update is the
# gradient, so a gradient off by a factor shows in the weights.
ACCUMULATION_RUN = dict(
    per_device_train_batch_size=MICRO_BATCH,
    gradient_accumulation_steps=ACCUMULATION,
    max_steps=2,
    optim="sgd",
    learning_rate=0.5,
    max_grad_norm=0.0,
    train_sampling_strategy="sequential",
    seed=0,
)


@dataclasses.dataclass
class Run:
    start: dict[str, torch.Tensor]
    end: dict[str, torch.Tensor]
    logs: list[dict]

    def update(self) -> dict[str, torch.Tensor]:
        return {name: self.end[name] - self.start[name] for name in self.start}

    def logged(self, key: str) -> list[float]:
        return [log[key] for log in self.logs if key in log]


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """Trains (and remembers) one run: (trainer "stock" or "spg", model, micro-batch, accumulation, balanced)."""

    @functools.cache
    def train(trainer: str, name: str, micro_batch: int, accumulation: int, balanced: bool = False) -> Run:
        model = build_model(name)
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        output_dir = str(tmp_path_factory.mktemp(f"{trainer}_{name}"))
        sizes = dict(per_device_train_batch_size=micro_batch, gradient_accumulation_steps=accumulation)
        if trainer == "stock":
            trainer_class, args = (
                Trainer,
                training_args(output_dir, ACCUMULATION_RUN, sizes, args_class=TrainingArguments),
            )
        else:
            args = training_args(output_dir, ACCUMULATION_RUN, sizes, spg_enabled=False)
            trainer_class = SPGTrainer
        trainer_object = trainer_class(model=model, args=args, train_dataset=token_dataset(name, balanced=balanced))
        trainer_object.train()
        end = {k: v.detach().clone() for k, v in model.named_parameters()}
        return Run(start, end, trainer_object.state.log_history)

    return train


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, atol=1e-5, rtol=0, msg=name)


# ---- the rule: which models divide their loss by num_items_in_batch ----


@pytest.mark.parametrize("name", list(MODELS))
def test_item_count_rule(name):
    assert loss_divides_by_item_count(build_model(name)) == (name not in INFLATED_BY_TRAINER)


def test_item_count_rule_for_sequence_classification_loss():
    # The sequence classification loss divides by the count for single-label classification only; its regression
    # branch is a plain mean.
    single_label = transformers.Zamba2ForSequenceClassification(transformers.Zamba2Config(**ZAMBA2, num_labels=2))
    regression = transformers.Zamba2ForSequenceClassification(transformers.Zamba2Config(**ZAMBA2, num_labels=1))
    assert loss_divides_by_item_count(single_label)
    assert not loss_divides_by_item_count(regression)
    # A declared accepts_loss_kwargs is taken at its word, as Trainer takes it.
    regression.accepts_loss_kwargs = True
    assert loss_divides_by_item_count(regression)


# ---- the matrix: spg_enabled=False against stock Trainer, and accumulation against one large batch ----


@pytest.mark.parametrize("name", list(MODELS))
def test_disabled_spg_under_accumulation_matches_trainer(train_run, name):
    stock = train_run("stock", name, MICRO_BATCH, ACCUMULATION)
    spg = train_run("spg", name, MICRO_BATCH, ACCUMULATION)
    assert max(v.abs().max() for v in spg.update().values()) > 1e-3
    if name in INFLATED_BY_TRAINER:
        # Stock Trainer adds up the micro-batch means without dividing: its first gradient is ACCUMULATION times
        # SPGTrainer's (the second is taken at different weights).
        stock_norm, spg_norm = stock.logged("grad_norm")[0], spg.logged("grad_norm")[0]
        assert stock_norm == pytest.approx(ACCUMULATION * spg_norm, rel=1e-4)
    else:
        assert_same_weights(stock.end, spg.end)
        assert stock.logged("loss") == pytest.approx(spg.logged("loss"), abs=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_disabled_spg_accumulation_matches_large_batch(train_run, name):
    # A model that drops the count is averaged per micro-batch, as Trainer averages a model without **kwargs: that
    # equals the large batch when every micro-batch holds the same number of labelled items.
    balanced = name == "BertForMaskedLM"
    accumulated = train_run("spg", name, MICRO_BATCH, ACCUMULATION, balanced)
    large = train_run("spg", name, MICRO_BATCH * ACCUMULATION, 1, balanced)
    assert max(v.abs().max() for v in large.update().values()) > 1e-3
    assert_same_weights(large.end, accumulated.end)


# ---- SPG on: the loss is scaled over the accumulated batch when Trainer counts its items ----


def summed_cross_entropy(outputs, labels, num_items_in_batch=None):
    """A compute_loss_func in Trainer's contract: the sum over the micro-batch divided by the accumulated count."""
    loss = F.cross_entropy(outputs["logits"], labels, reduction="sum")
    return loss / num_items_in_batch if num_items_in_batch is not None else loss / labels.numel()


SPG_EXACT_UNDER_ACCUMULATION = dict(spg_dropout=0.0, spg_normalize="batch", spg_activation="none")


def train_weights(
    output_dir: str,
    model: transformers.PreTrainedModel,
    dataset: Dataset,
    micro_batch: int,
    accumulation: int,
    trainer_kwargs: dict,
    **settings,
) -> dict[str, torch.Tensor]:
    """The model's weights after 2 SGD steps of SPGTrainer."""
    sizes = dict(per_device_train_batch_size=micro_batch, gradient_accumulation_steps=accumulation)
    args = training_args(output_dir, ACCUMULATION_RUN, sizes, settings)
    SPGTrainer(model=model, args=args, train_dataset=dataset, **trainer_kwargs).train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def counting_loss_func_case() -> tuple:
    """SPG on a model that drops the count, with a compute_loss_func that divides by it."""
    model = tiny_bert(seed=3, **no_dropout())
    return model, text_dataset(size=16), dict(compute_loss_func=summed_cross_entropy), SPG_EXACT_UNDER_ACCUMULATION


def dividing_classifier_case() -> tuple:
    """SPG on a classifier whose loss divides by the count."""
    torch.manual_seed(4)
    model = transformers.Zamba2ForSequenceClassification(transformers.Zamba2Config(**ZAMBA2, num_labels=2))
    return model, text_dataset(size=16), {}, SPG_EXACT_UNDER_ACCUMULATION


def causal_lm_case() -> tuple:
    """SPG off on a causal LM with a different number of labelled tokens per example."""
    return build_model("LlamaForCausalLM"), token_dataset("LlamaForCausalLM"), {}, dict(spg_enabled=False)


def spg_causal_lm_case() -> tuple:
    """Token-level SPG on a causal LM, with labels its own next-token predictions on a varying number of positions
    per example: every labelled position survives module 1 at the start, so the module terms are not empty."""
    model = build_model("LlamaForCausalLM")
    dataset = token_dataset("LlamaForCausalLM")
    ids = torch.tensor(dataset["input_ids"])
    with torch.no_grad():
        predicted = model(input_ids=ids).logits.argmax(-1)
    labels = torch.tensor(dataset["labels"])
    labels[:, 1:] = torch.where(labels[:, 1:] == -100, -100, predicted[:, :-1])
    dataset = dataset.remove_columns("labels").add_column("labels", labels.tolist())
    return model, dataset, {}, SPG_EXACT_UNDER_ACCUMULATION


# Cases whose accumulated update must equal one large batch's; the first two also across processes
# (tests/distributed/ddp_item_count_worker.py).
ACCUMULATION_CASES = {
    "counting_loss_func": counting_loss_func_case,
    "causal_lm": causal_lm_case,
    "dividing_classifier": dividing_classifier_case,
    "spg_causal_lm": spg_causal_lm_case,
}
DDP_CASES = ["counting_loss_func", "causal_lm"]


def large_batch_weights(output_dir: str, case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(start, end) weights of one process training the case on batches of MICRO_BATCH * ACCUMULATION."""
    model, dataset, trainer_kwargs, settings = ACCUMULATION_CASES[case]()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    end = train_weights(output_dir, model, dataset, MICRO_BATCH * ACCUMULATION, 1, trainer_kwargs, **settings)
    return start, end


def assert_accumulation_matches_large_batch(output_dir: str, case: str) -> None:
    model, dataset, trainer_kwargs, settings = ACCUMULATION_CASES[case]()
    accumulated = train_weights(
        f"{output_dir}/ga", model, dataset, MICRO_BATCH, ACCUMULATION, trainer_kwargs, **settings
    )
    start, large = large_batch_weights(f"{output_dir}/large", case)
    assert max((large[k] - v).abs().max() for k, v in start.items()) > 1e-3
    assert_same_weights(large, accumulated)


def test_spg_with_counting_loss_func_accumulation_matches_large_batch(tmp_path):
    # Trainer counts items for compute_loss_func and passes it the count; the module terms follow.
    assert_accumulation_matches_large_batch(str(tmp_path), "counting_loss_func")


def test_spg_on_counting_model_accumulation_matches_large_batch(tmp_path):
    # The base term keeps Trainer's normalisation, the module terms are weighted by each micro-batch's share.
    try:
        check_spg_support(dividing_classifier_case()[0], SPGTrainingArguments("unused", use_cpu=True))
    except ValueError as error:
        pytest.skip(f"no SPG head for Zamba2 classifiers in this tree: {error}")
    assert_accumulation_matches_large_batch(str(tmp_path), "dividing_classifier")


def test_token_level_spg_accumulation_matches_large_batch(tmp_path):
    # Module terms over labelled positions ("batch": divided by the micro-batch's positions) weighted by the
    # micro-batch's share of Trainer's token count give the large batch's update.
    assert_accumulation_matches_large_batch(str(tmp_path), "spg_causal_lm")


@pytest.mark.slow
def test_ddp_accumulation_matches_one_process_large_batch(tmp_path):
    # Trainer sums the item count over processes (average_tokens_across_devices) and multiplies the loss back by
    # the process count; two processes accumulating 2 micro-batches each must take one process's large-batch step.
    result = torchrun(DDP_WORKER, "--output_dir", str(tmp_path), "--cases", *DDP_CASES, timeout=600)
    assert result.returncode == 0, f"DDP workers failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    for case in DDP_CASES:
        start, large = large_batch_weights(str(tmp_path / f"{case}_large"), case)
        assert max((large[k] - v).abs().max() for k, v in start.items()) > 1e-3
        for rank in range(2):
            ranked = safetensors.torch.load_file(str(tmp_path / f"{case}_rank{rank}.safetensors"))
            assert_same_weights(large, ranked)


def test_loss_settings_spg_cannot_honour_are_refused(tmp_path):
    args = SPGTrainingArguments(str(tmp_path), use_cpu=True, report_to="none", spg_loss_normalization=True)
    with pytest.raises(ValueError, match="spg_loss_normalization"):
        SPGTrainer(model=tiny_bert(), args=args, compute_loss_func=summed_cross_entropy)
    # QA has no labels to pass a compute_loss_func, and Trainer would take its loss as scaled for accumulation.
    args = SPGTrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="compute_loss_func"):
        SPGTrainer(model=tiny_model("BertForQuestionAnswering"), args=args, compute_loss_func=summed_cross_entropy)


# ---- arguments: a plain TrainingArguments, and none ----


# Over SHORT_RUN: values that __post_init__ rewrites (a debug string made a list, report_to "none" made [], eval_steps
# taken from logging_steps, strategy strings made enums, a boolean made "all") next to plain values.
USER_SETTINGS = dict(eval_strategy="steps", debug="underflow_overflow", include_num_input_tokens_seen=True, seed=5)


def test_plain_training_arguments_are_converted_and_train_alike(tmp_path, caplog):
    output_dir = str(tmp_path / "out")
    plain = training_args(output_dir, USER_SETTINGS, args_class=TrainingArguments)
    # The same settings given to SPGTrainingArguments directly: __post_init__ runs once there, twice in a conversion.
    # (Built before any trainer: building arguments resets accelerate's state under existing trainers.)
    direct = training_args(output_dir, USER_SETTINGS)
    with caplog.at_level(logging.INFO, logger=spg_config.__name__):
        converted_trainer = SPGTrainer(
            model=tiny_bert(seed=2), args=plain, train_dataset=text_dataset(), eval_dataset=text_dataset(size=8)
        )
    converted = converted_trainer.args
    assert type(converted) is SPGTrainingArguments
    for field in dataclasses.fields(SPGTrainingArguments):
        assert getattr(converted, field.name) == getattr(direct, field.name), field.name
        if field.name in {f.name for f in dataclasses.fields(TrainingArguments)}:
            assert getattr(converted, field.name) == getattr(plain, field.name), field.name
    [message] = [record.getMessage() for record in caplog.records if "SPG defaults" in record.getMessage()]
    assert "spg_enabled=True" in message and "cold_start_steps=0" in message

    # Each trainer trains right after it is built, from the RNG state its seed set.
    converted_trainer.train()
    direct_trainer = SPGTrainer(
        model=tiny_bert(seed=2), args=direct, train_dataset=text_dataset(), eval_dataset=text_dataset(size=8)
    )
    direct_trainer.train()
    assert converted_trainer.state.global_step == 3
    for key in ("loss", "eval_loss", "spg/survival_1"):
        logged = [[log[key] for log in t.state.log_history if key in log] for t in (converted_trainer, direct_trainer)]
        assert len(logged[0]) == 3 and logged[0] == logged[1], key
    for (name, a), (_, b) in zip(
        converted_trainer.model.named_parameters(), direct_trainer.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_training_arguments_subclass_with_other_fields_is_refused(tmp_path):
    args = Seq2SeqTrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="predict_with_generate"):
        SPGTrainer(model=tiny_bert(), args=args)


def test_no_arguments_builds_trainer_defaults_and_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative
    reference = Trainer(model=tiny_bert()).args
    trainer = SPGTrainer(model=tiny_bert(), train_dataset=text_dataset(size=8))
    assert type(trainer.args) is SPGTrainingArguments
    for field in dataclasses.fields(TrainingArguments):
        assert getattr(trainer.args, field.name) == getattr(reference, field.name), field.name
    assert trainer.args.spg_enabled
    trainer.train()
    assert trainer.state.global_step == 3  # 3 epochs of one batch of 8
