"""SPG loss, chain, registry, saving, resuming and argument checks (issue 2, tests 1-6, 9, 10)."""

from __future__ import annotations

import glob
import logging
import math
import os

import pytest
import safetensors.torch
import torch
from helpers import (
    assert_saved_without_the_chain,
    no_dropout,
    qa_dataset,
    text_dataset,
    tiny_bert,
    tiny_model,
    training_args,
)
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from spg_hf import SPGTrainer
from spg_hf.objectives import OBJECTIVES
from spg_hf.spg import ChainStatistics, ChainTerms, SPGLoss, spg_loss
from spg_hf.trainer import SPG_WEIGHTS_NAME, SPGChainRun, overrides

WEIGHTS = [0.4, 0.2, 0.1]


# test_core's run over SHORT_RUN: 4 steps of 8 at seed 7, and the paper's form: its chain trains, so chain weights
# move and every chain code path is exercised.
CORE_RUN = dict(per_device_train_batch_size=8, max_steps=4, seed=7, spg_activation="none")


class ChainAtEnd(TrainerCallback):
    """Copies the temporary chain's weights at the end of training, before the trainer throws them away."""

    def __init__(self) -> None:
        self.state_dict: dict[str, torch.Tensor] = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state_dict = {k: v.detach().clone() for k, v in model.spg_chain.state_dict().items()}


# ---- 1. the loss against a hand computation ----


def cross_entropy(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(x) for x in logits)) - logits[label]


def test_classification_loss_matches_hand_computation():
    labels = [0, 1, 0, 1]
    base = [[2.0, 0.0], [0.0, 3.0], [0.0, 1.0], [1.0, 0.0]]  # correct: 1 1 0 0
    modules = [
        [[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.5]],  # correct: 1 0 1 1 -> survivors after: example 0
        [[0.0, 1.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]],  # correct: 0 0 1 1 -> survivors after: none
        [[0.5, 0.0], [0.0, 0.5], [0.2, 0.1], [0.3, 0.3]],
    ]
    ce = [[cross_entropy(row, y) for row, y in zip(rows, labels, strict=True)] for rows in [base, *modules]]
    base_loss = sum(ce[0]) / 4
    expected = {
        "survivors": base_loss + 0.4 * (ce[1][0] + ce[1][1]) / 2 + 0.2 * ce[2][0] / 1 + 0.1 * 0.0,
        "batch": base_loss + 0.4 * (ce[1][0] + ce[1][1]) / 4 + 0.2 * ce[2][0] / 4 + 0.1 * 0.0,
    }
    target = torch.tensor(labels)
    base_terms = OBJECTIVES["classification"].terms(torch.tensor(base), target, 0.5)
    module_terms = [OBJECTIVES["classification"].terms(torch.tensor(m), target, 0.5) for m in modules]
    assert base_terms[1].tolist() == [True, True, False, False]
    for normalize, value in expected.items():
        result = spg_loss(base_terms[0].mean(), [ChainTerms(base_terms[1], module_terms)], WEIGHTS, normalize)
        assert result.loss.item() == pytest.approx(value, rel=1e-6)
        assert result.survival.tolist() == pytest.approx([0.5, 0.25, 0.0])
    survivors = spg_loss(base_terms[0].mean(), [ChainTerms(base_terms[1], module_terms)], WEIGHTS, "survivors")
    assert survivors.module_losses.tolist() == pytest.approx([(ce[1][0] + ce[1][1]) / 2, ce[2][0], 0.0], rel=1e-6)


def test_regression_loss_matches_hand_computation():
    labels = [1.2, 3.0, 3.4]
    base = [1.0, 2.0, 3.0]  # |error| 0.2 1.0 0.4 -> correct 1 0 1 at tolerance 0.5
    # module 1 correct: 1 1 0 -> survivors: example 0; module 2 correct: 1 0 0 -> survivors: example 0
    modules = [[1.5, 3.0, 4.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    se = [[(p - y) ** 2 for p, y in zip(preds, labels, strict=True)] for preds in [base, *modules]]
    base_loss = sum(se[0]) / 3
    expected = {
        "survivors": base_loss + 0.4 * (se[1][0] + se[1][2]) / 2 + 0.2 * se[2][0] / 1 + 0.1 * se[3][0] / 1,
        "batch": base_loss + 0.4 * (se[1][0] + se[1][2]) / 3 + 0.2 * se[2][0] / 3 + 0.1 * se[3][0] / 3,
    }
    target = torch.tensor(labels)
    base_terms = OBJECTIVES["regression"].terms(torch.tensor(base).unsqueeze(-1), target, 0.5)
    module_terms = [OBJECTIVES["regression"].terms(torch.tensor(m).unsqueeze(-1), target, 0.5) for m in modules]
    assert base_terms[1].tolist() == [True, False, True]
    for normalize, value in expected.items():
        result = spg_loss(base_terms[0].mean(), [ChainTerms(base_terms[1], module_terms)], WEIGHTS, normalize)
        assert result.loss.item() == pytest.approx(value, rel=1e-6)


def test_question_answering_loss_matches_hand_computation():
    starts, ends = [1, 2], [2, 3]

    def span(start_rows, end_rows):
        return torch.tensor(start_rows), torch.tensor(end_rows)

    base = span([[0, 3, 0, 0], [0, 0, 2, 0]], [[0, 0, 1, 0], [0, 0, 0, 1]])  # both right for both examples
    modules = [
        span([[0, 1, 0, 0], [0, 0, 1, 0]], [[0, 0, 1, 0], [1, 0, 0, 0]]),  # example 1 end wrong
        span([[0, 0, 1, 0], [0, 0, 1, 0]], [[0, 0, 1, 0], [0, 0, 0, 1]]),  # example 0 start wrong
        span([[1, 0, 0, 0], [1, 0, 0, 0]], [[1, 0, 0, 0], [1, 0, 0, 0]]),
    ]

    def ce(logits, i):
        start_logits, end_logits = logits
        return (cross_entropy(start_logits[i].tolist(), starts[i]) + cross_entropy(end_logits[i].tolist(), ends[i])) / 2

    base_loss = (ce(base, 0) + ce(base, 1)) / 2
    expected = base_loss + 0.4 * (ce(modules[0], 0) + ce(modules[0], 1)) / 2 + 0.2 * ce(modules[1], 0) / 1
    targets = (torch.tensor(starts), torch.tensor(ends))
    base_terms = OBJECTIVES["question_answering"].terms(base, targets, 0.5)
    module_terms = [OBJECTIVES["question_answering"].terms(m, targets, 0.5) for m in modules]
    assert base_terms[1].tolist() == [True, True]
    assert module_terms[0][1].tolist() == [True, False]
    result = spg_loss(base_terms[0].mean(), [ChainTerms(base_terms[1], module_terms)], WEIGHTS, "survivors")
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)
    batch_expected = base_loss + 0.4 * (ce(modules[0], 0) + ce(modules[0], 1)) / 2 + 0.2 * ce(modules[1], 0) / 2
    result = spg_loss(base_terms[0].mean(), [ChainTerms(base_terms[1], module_terms)], WEIGHTS, "batch")
    assert result.loss.item() == pytest.approx(batch_expected, rel=1e-6)


def test_loss_normalization_factor():
    base_loss = torch.tensor(0.7)
    terms = [(torch.tensor([1.0, 2.0]), torch.tensor([True, True]))]
    plain = spg_loss(base_loss, [ChainTerms(torch.tensor([True, False]), terms)], [0.5], "batch").loss
    scaled = spg_loss(base_loss, [ChainTerms(torch.tensor([True, False]), terms)], [0.5], "batch", True).loss
    assert scaled.item() == pytest.approx(plain.item() * math.exp(0.7 - plain.item()), rel=1e-6)


def test_trainer_loss_equals_formula_on_model_logits(output_dir):
    """Through SPGTrainer.compute_loss: with no dropout the zero-initialised chain reproduces the base logits,
    so the loss is CE_0 + sum_t lambda_t * (survivors' mean CE_0) from the model's own logits."""
    model = tiny_bert(**no_dropout())
    batch = text_dataset(size=8)[:8]
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    trainer = SPGTrainer(
        model=model, args=training_args(output_dir, CORE_RUN, spg_dropout=0.0), train_dataset=text_dataset()
    )
    trainer._hp_search_setup(None)  # attaches the chain as train() does
    model.train()
    loss = trainer.compute_loss(model, inputs)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"]).logits
    ce = torch.nn.functional.cross_entropy(logits, inputs["labels"], reduction="none")
    correct = (logits.argmax(-1) == inputs["labels"]).float()
    survivors_mean = (ce * correct).sum() / (correct.sum() + 1e-8)
    expected = ce.mean() + sum(WEIGHTS) * survivors_mean
    assert correct.sum() > 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---- 2. the zero-initialised layers learn, except with the reference's ReLU ----


@pytest.mark.parametrize("activation,changes", [("none", True), ("relu", False)])
def test_chain_changes_after_one_step(output_dir, activation, changes):
    chain = ChainAtEnd()
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, CORE_RUN, max_steps=1, spg_activation=activation),
        train_dataset=text_dataset(),
        callbacks=[chain],
    )
    trainer.train()
    weights = [v for k, v in chain.state_dict.items() if k.endswith("weight")]
    assert len(weights) == 3
    assert all(bool(w.abs().sum() > 0) == changes for w in weights)


# ---- 3. spg_enabled=False is Trainer ----


def test_disabled_spg_matches_trainer_step_for_step(tmp_path):
    six_steps = dict(per_device_train_batch_size=8, max_steps=6, seed=3)
    plain = Trainer(
        model=tiny_bert(seed=1),
        args=training_args(tmp_path / "a", six_steps, args_class=TrainingArguments),
        train_dataset=text_dataset(),
    )
    plain.train()
    spg = SPGTrainer(
        model=tiny_bert(seed=1),
        args=training_args(tmp_path / "b", CORE_RUN, six_steps, spg_enabled=False),
        train_dataset=text_dataset(),
    )
    spg.train()
    losses = [[log["loss"] for log in t.state.log_history if "loss" in log] for t in (plain, spg)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    for (name, a), (_, b) in zip(plain.model.named_parameters(), spg.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


# ---- 4. gradient accumulation gives the update of the larger batch ----


def test_gradient_accumulation_matches_large_batch(tmp_path):
    data = text_dataset(size=8)
    updates = []
    for batch_size, accumulation in [(8, 1), (4, 2), (2, 4)]:
        model = tiny_bert(seed=2, **no_dropout())
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        chain = ChainAtEnd()
        trainer = SPGTrainer(
            model=model,
            args=training_args(
                str(tmp_path / f"ga{accumulation}"),
                CORE_RUN,
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_steps=1,
                optim="sgd",  # Adam's first step hides the scale of the gradient
                learning_rate=0.5,
                spg_dropout=0.0,
                spg_normalize="batch",
            ),
            train_dataset=data,
            callbacks=[chain],
        )
        trainer.train()
        update = {k: v.detach() - start[k] for k, v in model.named_parameters()}
        update.update({f"chain.{k}": v for k, v in chain.state_dict.items()})
        updates.append(update)
    assert max(v.abs().max() for v in updates[0].values()) > 1e-3
    for other in updates[1:]:
        for name, value in updates[0].items():
            torch.testing.assert_close(other[name], value, atol=1e-5, rtol=0, msg=name)


# ---- 5. saved folders hold only the base model ----


def test_saved_model_loads_into_plain_class(output_dir):
    model = tiny_bert()
    trainer = SPGTrainer(model=model, args=training_args(output_dir, CORE_RUN), train_dataset=text_dataset())
    trainer.train()
    loaded = assert_saved_without_the_chain(trainer, output_dir, AutoModelForSequenceClassification)
    inputs = torch.tensor(text_dataset(size=4)["input_ids"])
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=inputs).logits, model(input_ids=inputs).logits)
    assert not hasattr(model, "spg_chain")


def test_evaluation_and_prediction_equal_plain_trainer(output_dir):
    model = tiny_bert()
    eval_data = text_dataset(size=16, seed=5)
    spg = SPGTrainer(
        model=model, args=training_args(output_dir, CORE_RUN), train_dataset=text_dataset(), eval_dataset=eval_data
    )
    spg.train()
    plain = Trainer(model=model, args=TrainingArguments(output_dir=output_dir, report_to="none", use_cpu=True))
    spg_prediction, plain_prediction = spg.predict(eval_data), plain.predict(eval_data)
    assert torch.equal(torch.tensor(spg_prediction.predictions), torch.tensor(plain_prediction.predictions))
    assert spg_prediction.metrics["test_loss"] == plain_prediction.metrics["test_loss"]


def test_checkpoints_carry_the_temporary_weights(output_dir):
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, CORE_RUN, save_strategy="steps", save_steps=2),
        train_dataset=text_dataset(),
    )
    trainer.train()
    chain = safetensors.torch.load_file(os.path.join(output_dir, "checkpoint-2", SPG_WEIGHTS_NAME))
    assert sorted(chain) == [f"replicas.{t}.{p}" for t in range(3) for p in ("bias", "weight")]
    model_file = safetensors.torch.load_file(os.path.join(output_dir, "checkpoint-2", "model.safetensors"))
    assert not [k for k in model_file if "spg" in k]


# ---- 6. resuming restores the chain and its optimizer state ----


def test_resume_matches_uninterrupted_run(tmp_path):
    def run(output_dir: str, resume: str | None = None):
        chain = ChainAtEnd()
        trainer = SPGTrainer(
            model=tiny_bert(seed=4),
            args=training_args(
                output_dir, CORE_RUN, max_steps=8, per_device_train_batch_size=4, save_strategy="steps", save_steps=4
            ),
            train_dataset=text_dataset(size=24),
            callbacks=[chain],
        )
        trainer.train(resume_from_checkpoint=resume)
        losses = {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}
        return trainer.model, chain.state_dict, losses

    full_model, full_chain, full_losses = run(str(tmp_path / "full"))
    resumed_model, resumed_chain, resumed_losses = run(
        str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "checkpoint-4")
    )
    # Steps 1-4 come back with the checkpoint's trainer state; steps 5-8 are trained after resuming.
    assert sorted(resumed_losses) == list(range(1, 9))
    assert resumed_losses == full_losses
    for (name, a), (_, b) in zip(full_model.named_parameters(), resumed_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(full_chain[k], resumed_chain[k]) for k in full_chain)


def test_resuming_a_plain_checkpoint_with_spg_is_refused(tmp_path):
    SPGTrainer(
        model=tiny_bert(),
        args=training_args(str(tmp_path / "plain"), CORE_RUN, spg_enabled=False, save_strategy="steps", save_steps=2),
        train_dataset=text_dataset(),
    ).train()
    trainer = SPGTrainer(
        model=tiny_bert(), args=training_args(str(tmp_path / "spg"), CORE_RUN), train_dataset=text_dataset()
    )
    with pytest.raises(ValueError, match=SPG_WEIGHTS_NAME):
        trainer.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-2"))


# ---- logging ----


def test_survival_and_module_losses_are_logged(output_dir):
    trainer = SPGTrainer(
        model=tiny_bert(), args=training_args(output_dir, CORE_RUN, logging_steps=2), train_dataset=text_dataset()
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    for log in logs:
        for t in (1, 2, 3):
            assert 0.0 <= log[f"spg/survival_{t}"] <= 1.0
            assert log[f"spg/loss_{t}"] >= 0.0
        assert log["spg/survival_1"] >= log["spg/survival_2"] >= log["spg/survival_3"]


def test_survivor_labels_share_is_counted_from_the_recorded_batches(output_dir):
    trainer = SPGTrainer(model=tiny_bert(num_labels=3), args=training_args(output_dir, CORE_RUN))
    run = trainer._spg_run = SPGChainRun(trainer.model, trainer.args, trainer._head_family())
    result = SPGLoss(torch.tensor(1.0), [ChainStatistics(survival=torch.zeros(3), module_losses=torch.zeros(3))])
    # Survivors of the two batches: labels 0, 1, 1 and 1, 2: label 1 holds 3 of 5.
    for labels, correct in (([0, 1, 1, 2], [True, True, True, False]), ([1, 2, 0], [True, True, False])):
        run.main.targets = torch.tensor(labels)
        run.record(result, [ChainTerms(torch.tensor(correct), [])])
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["spg/survivors_in_top_label"] == 0.6


def test_survivors_of_one_label_warn_once_from_three_quarters_of_training(output_dir, caplog):
    model = tiny_bert(id2label={0: "unacceptable", 1: "acceptable"}, label2id={"unacceptable": 0, "acceptable": 1})
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([10.0, 0.0]))  # predicts "unacceptable" for every example
    trainer = SPGTrainer(model=model, args=training_args(output_dir, CORE_RUN), train_dataset=text_dataset())
    with caplog.at_level(logging.WARNING, logger=overrides.__name__):
        trainer.train()
    shares = [log["spg/survivors_in_top_label"] for log in trainer.state.log_history if "loss" in log]
    assert shares == [1.0, 1.0, 1.0, 1.0]
    messages = [record.getMessage() for record in caplog.records if "predicts one class" in record.getMessage()]
    assert len(messages) == 1
    assert "at step 3 of 4" in messages[0] and "'unacceptable'" in messages[0]


def test_survivor_labels_are_not_counted_for_regression(output_dir):
    trainer = SPGTrainer(
        model=tiny_bert(num_labels=1),
        args=training_args(output_dir, CORE_RUN),
        train_dataset=text_dataset(regression=True),
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all("spg/survival_1" in log and "spg/survivors_in_top_label" not in log for log in logs)


# ---- 9. other objectives and attach points (every head family: tests/test_heads.py) ----


@pytest.mark.parametrize(
    "class_name,num_labels,dataset",
    [
        ("BertForSequenceClassification", 1, text_dataset(regression=True)),
        ("DistilBertForQuestionAnswering", 2, qa_dataset()),
        ("RobertaForSequenceClassification", 2, text_dataset()),
    ],
)
def test_training_runs_for_regression_qa_and_other_models(output_dir, class_name, num_labels, dataset):
    model = tiny_model(class_name, num_labels=num_labels)
    trainer = SPGTrainer(model=model, args=training_args(output_dir, CORE_RUN), train_dataset=dataset)
    trainer.train()
    log = next(log for log in trainer.state.log_history if "loss" in log)
    assert math.isfinite(log["loss"]) and "spg/survival_3" in log


def test_pooled_training_uses_classifier_width(output_dir):
    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, CORE_RUN, spg_attach="pooled", max_steps=1),
        train_dataset=text_dataset(),
        callbacks=[chain := ChainAtEnd()],
    )
    trainer.train()
    assert chain.state_dict["replicas.0.weight"].shape == (32, 32)
    assert chain.state_dict["replicas.0.weight"].abs().sum() > 0


# ---- 10. bad settings are refused before training ----


@pytest.mark.parametrize(
    "overrides,argument",
    [
        (dict(spg_dropout=[0.1, 0.2]), "spg_dropout"),
        (dict(spg_dropout=1.0), "spg_dropout"),
        (dict(spg_dropout=-0.1), "spg_dropout"),
        (dict(spg_weights=[0.4, -0.2, 0.1]), "spg_weights"),
        (dict(spg_weights=[]), "spg_weights"),
        (dict(spg_regression_tolerance=0.0), "spg_regression_tolerance"),
        (dict(spg_regression_tolerance=-1.0), "spg_regression_tolerance"),
        (dict(spg_attach="pooler"), "spg_attach"),
        (dict(spg_activation="gelu"), "spg_activation"),
        (dict(spg_normalize="mean"), "spg_normalize"),
        (dict(cold_start_steps=-1), "cold_start_steps"),
        (dict(spg_auxiliary_head="aux_classifier"), "spg_auxiliary_head"),
        (dict(spg_head="classifier", spg_auxiliary_head="aux_classifier"), "spg_auxiliary_weight"),
        (
            dict(spg_head="classifier", spg_auxiliary_head="aux_classifier", spg_auxiliary_weight=-1),
            "spg_auxiliary_weight",
        ),
        (dict(spg_auxiliary_weight=0.5), "spg_auxiliary_weight"),
    ],
)
def test_bad_settings_name_the_argument(output_dir, overrides, argument):
    with pytest.raises(ValueError, match=argument):
        training_args(output_dir, CORE_RUN, **overrides)


def test_pooled_attach_on_a_model_without_pooler_is_refused(output_dir):
    with pytest.raises(ValueError, match="spg_attach"):
        SPGTrainer(
            model=tiny_model("RobertaForSequenceClassification"),
            args=training_args(output_dir, CORE_RUN, spg_attach="pooled"),
        )


def test_trial_values_are_checked_when_training_starts(output_dir):
    trainer = SPGTrainer(model=tiny_bert(), args=training_args(output_dir, CORE_RUN), train_dataset=text_dataset())
    trainer.args.spg_dropout = [0.1, 0.2]  # as a hyperparameter-search trial would write it
    with pytest.raises(ValueError, match="spg_dropout"):
        trainer.train()


def test_user_optimizer_is_refused(output_dir):
    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="optimizers"):
        SPGTrainer(model=model, args=training_args(output_dir, CORE_RUN), optimizers=(optimizer, None))


def test_cold_start_longer_than_training_is_refused(output_dir):
    trainer = SPGTrainer(
        model=tiny_bert(), args=training_args(output_dir, CORE_RUN, cold_start_steps=4), train_dataset=text_dataset()
    )
    with pytest.raises(ValueError, match="cold start"):
        trainer.train()


def test_spg_statistics_reach_tensorboard(output_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = SPGTrainer(
        model=tiny_bert(),
        args=training_args(output_dir, CORE_RUN, report_to="tensorboard"),
        train_dataset=text_dataset(),
    )
    trainer.train()
    (events,) = glob.glob(os.path.join(output_dir, "runs", "*", "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {f"train/spg/{name}_{t}" for name in ("survival", "loss") for t in (1, 2, 3)} <= set(scalars)
    assert len(accumulator.Scalars("train/spg/survival_1")) == 4
