"""SPG in TRL's supervised fine-tuning (`spg_hf.trl`): plain-text, prompt-completion and conversational datasets, one
packed; the saved folder loads with AutoModelForCausalLM; `spg_enabled=False` equals SFTTrainer step for step; TRL's
own metrics stay; no trajectory crosses a packed sequence's boundary."""

from __future__ import annotations

import pytest
import torch
import transformers
from datasets import Dataset
from helpers import (
    DECODER,
    TRAINS_AS_TRAINER,
    assert_saved_without_the_chain,
    assert_trained_alike,
    train_each,
    training_args,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from spg_hf.objectives import IGNORE_INDEX, next_token_targets
from spg_hf.trl import SPGSFTConfig, SPGSFTTrainer

SPECIALS = ["<pad>", "<s>", "</s>"]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyz :?.\n")
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template, built offline."""
    vocabulary = {token: index for index, token in enumerate(SPECIALS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def causal_lm() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    settings = dict(DECODER, vocab_size=len(SPECIALS + CHARACTERS), attention_dropout=0.0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))


def sentences(count: int = 16) -> list[tuple[str, str]]:
    """Repetitive prompts and completions, so a tiny model predicts some tokens right within 3 steps."""
    return [(f"what is {WORDS[i % 8]}?", f"{WORDS[i % 8]} is {WORDS[(i + 1) % 8]}.") for i in range(count)]


DATASETS = {
    "plain text": lambda: Dataset.from_dict({"text": [f"{p} {c}" for p, c in sentences()]}),
    "prompt-completion": lambda: Dataset.from_dict(
        {"prompt": [p for p, _ in sentences()], "completion": [" " + c for _, c in sentences()]}
    ),
    "conversational": lambda: Dataset.from_dict(
        {"messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in sentences()]}
    ),
}
# Over SHORT_RUN: a higher rate, sequences cut at 48 tokens, and float32 (SFTConfig's default is bf16 where it can).
RUN = dict(learning_rate=3e-3, max_length=48, bf16=False)


@pytest.mark.parametrize(("kind", "packing"), [(kind, False) for kind in DATASETS] + [("plain text", True)])
def test_sft_trains_with_spg_and_keeps_trls_metrics(tmp_path, kind, packing):
    args = training_args(tmp_path / "run", RUN, args_class=SPGSFTConfig, packing=packing)
    trainer = SPGSFTTrainer(
        model=causal_lm(), args=args, train_dataset=DATASETS[kind](), processing_class=char_tokenizer()
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    assert all("mean_token_accuracy" in log and "entropy" in log for log in logs)
    assert trainer._spg_settings_applied == {"spg_normalize": "batch"}
    assert_saved_without_the_chain(trainer, tmp_path / "saved", transformers.AutoModelForCausalLM)


@pytest.mark.parametrize("setting", sorted(TRAINS_AS_TRAINER))
@pytest.mark.parametrize("kind", ["prompt-completion", "conversational"])
def test_sft_with_spg_off_or_zero_weights_equals_sft_trainer(tmp_path, kind, setting):
    runs = [
        (SFTTrainer, training_args(tmp_path / "plain", RUN, args_class=SFTConfig)),
        (SPGSFTTrainer, training_args(tmp_path / "spg", RUN, TRAINS_AS_TRAINER[setting], args_class=SPGSFTConfig)),
    ]
    trainers = train_each(
        runs, lambda: dict(model=causal_lm(), train_dataset=DATASETS[kind](), processing_class=char_tokenizer())
    )
    assert_trained_alike(*trainers)


def test_sft_trains_the_chain_on_trajectories_that_the_model_gets_right(tmp_path):
    """Trained long enough to predict, SPG's module 1 sees survivors, and its terms move the loss off the plain one."""
    args = training_args(tmp_path / "run", RUN, args_class=SPGSFTConfig, max_steps=12)
    trainer = SPGSFTTrainer(
        model=causal_lm(), args=args, train_dataset=DATASETS["plain text"](), processing_class=char_tokenizer()
    )
    trainer.train()
    assert max(log["spg/survival_1"] for log in trainer.state.log_history if "loss" in log) > 0.05


def test_no_trajectory_crosses_a_packed_sequence_boundary():
    # Two sequences packed in one row (padding-free): positions 0-2 and 0-3. TRL's collator sets the label of each
    # sequence's first token to -100; these labels do not, and the boundary must still hold.
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    targets = next_token_targets({"position_ids": position_ids}, input_ids)
    assert targets.tolist() == [[6, 7, IGNORE_INDEX, 9, 10, 11, IGNORE_INDEX]]
