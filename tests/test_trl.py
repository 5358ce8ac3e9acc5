"""SPG in TRL's supervised fine-tuning (`spg_hf.trl`): plain-text, prompt-completion and conversational datasets, one
packed; the saved folder loads with AutoModelForCausalLM; `spg_enabled=False` equals SFTTrainer step for step; TRL's
own metrics stay; no trajectory crosses a packed sequence's boundary."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import transformers
from conftest import DECODER, TRAINS_AS_TRAINER, assert_trained_alike
from datasets import Dataset
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
RUN = dict(
    per_device_train_batch_size=4,
    learning_rate=3e-3,
    max_steps=3,
    logging_steps=1,
    report_to="none",
    max_length=48,
    use_cpu=True,
    bf16=False,
)


@pytest.mark.parametrize(("kind", "packing"), [(kind, False) for kind in DATASETS] + [("plain text", True)])
def test_sft_trains_with_spg_and_keeps_trls_metrics(tmp_path, kind, packing):
    args = SPGSFTConfig(output_dir=str(tmp_path / "run"), packing=packing, **RUN)
    trainer = SPGSFTTrainer(
        model=causal_lm(), args=args, train_dataset=DATASETS[kind](), processing_class=char_tokenizer()
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(0.0 <= log["spg/survival_1"] <= 1.0 for log in logs)
    assert all("mean_token_accuracy" in log and "entropy" in log for log in logs)
    assert trainer._spg_settings_applied == {"spg_normalize": "batch"}
    trainer.save_model(str(tmp_path / "saved"))
    saved = safetensors.torch.load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert not [name for name in saved if "spg" in name]
    _, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize("setting", sorted(TRAINS_AS_TRAINER))
@pytest.mark.parametrize("kind", ["prompt-completion", "conversational"])
def test_sft_with_spg_off_or_zero_weights_equals_sft_trainer(tmp_path, kind, setting):
    runs = []
    for trainer_class, config_class, extra in (
        (SFTTrainer, SFTConfig, {}),
        (SPGSFTTrainer, SPGSFTConfig, TRAINS_AS_TRAINER[setting]),
    ):
        args = config_class(output_dir=str(tmp_path / trainer_class.__name__), **RUN, **extra)
        trainer = trainer_class(
            model=causal_lm(), args=args, train_dataset=DATASETS[kind](), processing_class=char_tokenizer()
        )
        trainer.train()
        runs.append(trainer)
    assert_trained_alike(*runs)


def test_sft_trains_the_chain_on_trajectories_that_the_model_gets_right(tmp_path):
    """Trained long enough to predict, SPG's module 1 sees survivors, and its terms move the loss off the plain one."""
    args = SPGSFTConfig(output_dir=str(tmp_path / "run"), **dict(RUN, max_steps=12))
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
