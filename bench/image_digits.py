"""Image classification evidence: a small ViT from a random config on scikit-learn's bundled digits, plain vs SPG.

The 1,797 8x8 grey-scale digits (sklearn.datasets.load_digits, no download) are split once (seed 0) into 1,437
training and 360 test images, stratified by class. For every seed a ViT (patch 2, 4 layers of width 64) is built
from the same random initialisation for both methods and trained with `SPGTrainer`, `spg_enabled` off ("plain") or
on with the library's defaults ("spg"); the test accuracy of each pair is compared by seed.

    python bench/image_digits.py --seeds 1 2 3 --out bench/results/image_digits

Each finished run appends a row to <out>/raw.jsonl (a rerun skips the rows already there); <out>/table.md holds the
per-method accuracy and the paired difference with its 95% t interval.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bench.paired import paired_table, run_paired
from spg_hf import SPGTrainer, SPGTrainingArguments

METHODS = ("plain", "spg")


def digits_splits() -> tuple[Dataset, Dataset]:
    digits = load_digits()
    # Pixel values run 0..16: scale to [-1, 1], one channel.
    pixels = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return (
        Dataset.from_dict({"pixel_values": train_x.tolist(), "labels": train_y.tolist()}),
        Dataset.from_dict({"pixel_values": test_x.tolist(), "labels": test_y.tolist()}),
    )


def small_vit(seed: int) -> transformers.ViTForImageClassification:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def train_once(method: str, seed: int, args: argparse.Namespace, train: Dataset, test: Dataset) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = SPGTrainingArguments(
            output_dir=output_dir,
            spg_enabled=method == "spg",
            num_train_epochs=args.epochs,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=128,
            learning_rate=args.lr,
            warmup_steps=0.1,
            weight_decay=0.05,
            seed=seed,
            logging_steps=20,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = SPGTrainer(
            model=small_vit(seed),
            args=training_args,
            train_dataset=train,
            eval_dataset=test,
            compute_metrics=accuracy,
        )
        start = time.perf_counter()
        trainer.train()
        wall_s = time.perf_counter() - start
        metrics = trainer.evaluate()
    survival = [log["spg/survival_1"] for log in trainer.state.log_history if "spg/survival_1" in log]
    return {
        "accuracy": metrics["eval_accuracy"],
        "train_wall_s": round(wall_s, 1),
        "last_survival_1": survival[-1] if survival else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/image_digits"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    train, test = digits_splits()
    rows = run_paired(
        args.out,
        METHODS,
        args.seeds,
        {"epochs": args.epochs, "lr": args.lr},
        lambda method, seed: train_once(method, seed, args, train, test),
    )
    table = paired_table(rows, "accuracy", "test accuracy, %", scale=100, extra_columns=["train_wall_s"])
    (args.out / "table.md").write_text(table)


if __name__ == "__main__":
    main()
