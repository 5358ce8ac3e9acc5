"""CTC speech recognition on spoken digits (issue 33, Evidence): a small randomly initialised Wav2Vec2ForCTC learns to
spell the spoken word ("zero" ... "nine", letter by letter) from the Free Spoken Digit Dataset, plain vs SPG, paired by
seed, scored by character error rate (CER) on held-out clips with greedy CTC decoding.

    OMP_NUM_THREADS=1 python -m bench.ctc_digits --seeds 1 2 3 4 5 6 --epochs 30 --lr 2e-3 \\
        --out bench/results/ctc_digits

Data: FSDD (../shared/data/audio/free-spoken-digit-dataset/recordings beside the checkout, or --data-dir / $FSDD_DIR),
loaded with spg_hf.tasks.audio's file listing, label and split code. --split index (default): the dataset's own split
(recordings 0-4 of every speaker and digit are the test set: 300 clips; 2,700 train); --split speaker: the unseen
speaker theo is the test set (500 clips; 2,500 train), as configs/audio/fsdd_wav2vec2_tiny_cpu.yaml; run it with --out
bench/results/ctc_digits/speaker_theo. Clips stay at 8 kHz (the conv encoder's stride is 160 samples, so 50 frames a
second, as the 16 kHz tiny config's 320) and are whole (no cropping: a crop would cut letters). Vocabulary: 0 =
blank/pad, then the 15 letters of the ten words. The model follows the tiny audio config (configs/audio/tiny_wav2vec2,
widened to 64 as configs/audio/fsdd_wav2vec2_tiny_cpu.yaml), with a layer-norm conv encoder (so attention masks are
exact on padded batches), no SpecAugment, ctc_loss_reduction="mean", ctc_zero_infinity=True. SPG: the library's defaults
except spg_normalize (see --spg-normalize).

Each finished run is one JSON row in <out>/raw.jsonl (a restart skips finished runs); runs go seed by seed, plain
then SPG. CER = total character edit distance / total reference characters over the test clips.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import TrainerCallback, Wav2Vec2Config, Wav2Vec2ForCTC

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.compare import paired_difference
from spg_hf.tasks.audio import EVAL, TRAIN, DataTrainingArguments, load_audio, load_local_datasets

# The shared data beside the checkout (resolved, as the rows record it).
DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[2] / "shared/data/audio/free-spoken-digit-dataset/recordings")
RATE = 8000
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = sorted(set("".join(WORDS)))
VOCAB = {letter: index for index, letter in enumerate(LETTERS, start=1)}  # 0 is blank / pad
BLANK = 0


def load_data(data_dir: str, split: str = "index") -> tuple[datasets.Dataset, datasets.Dataset]:
    """FSDD as (train, test) datasets of normalised 8 kHz waveforms, letter ids and lengths. split 'index': the
    dataset's own split (recordings 0-4 are test); 'speaker': the unseen speaker theo is test, as the audio config."""
    if split == "index":
        split_option = {"eval_file_pattern": r"_[0-4]\.wav$"}
    else:
        split_option = {"eval_speakers": ["theo"], "speaker_pattern": r"^\d+_([a-z]+)_"}
    data_args = DataTrainingArguments(data_dir=data_dir, label_pattern=r"^(\d+)_", **split_option)
    raw, _ = load_local_datasets(data_args, [TRAIN, EVAL])
    splits = []
    for part in (TRAIN, EVAL):
        waves, labels = [], []
        for path, digit in zip(raw[part]["audio"], raw[part]["label"], strict=True):
            wav = load_audio(path, RATE)
            waves.append(((wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)).astype(np.float32))
            labels.append([VOCAB[letter] for letter in WORDS[int(digit)]])
        splits.append(
            datasets.Dataset.from_dict(
                {"input_values": waves, "labels": labels, "length": [len(wav) for wav in waves]}
            ).with_format("numpy")
        )
    return splits[0], splits[1]


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Zero-pad waveforms (attention mask 0 over the tail) and labels (-100)."""
    longest = max(len(row["input_values"]) for row in rows)
    most_labels = max(len(row["labels"]) for row in rows)
    values = torch.zeros(len(rows), longest)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    labels = torch.full((len(rows), most_labels), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        n, m = len(row["input_values"]), len(row["labels"])
        values[i, :n] = torch.from_numpy(np.array(row["input_values"]))
        mask[i, :n] = 1
        labels[i, :m] = torch.as_tensor(row["labels"])
    return {"input_values": values, "attention_mask": mask, "labels": labels}


def small_wav2vec2_ctc(seed: int, hidden: int, layers: int) -> Wav2Vec2ForCTC:
    config = Wav2Vec2Config(
        vocab_size=len(VOCAB) + 1,
        pad_token_id=BLANK,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        conv_dim=(32, 32, 32, 32),
        conv_kernel=(10, 8, 4, 4),
        conv_stride=(5, 4, 4, 2),  # 160 samples: 50 frames a second at 8 kHz
        conv_bias=True,
        feat_extract_norm="layer",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        layerdrop=0.0,
        mask_time_prob=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(config)


def edit_distance(a: list[int], b: list[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def greedy_decode(frames: list[int]) -> list[int]:
    """Collapse repeats, drop blanks."""
    out, last = [], None
    for token in frames:
        if token != last and token != BLANK:
            out.append(token)
        last = token
    return out


@torch.no_grad()
def character_error_rate(model: Wav2Vec2ForCTC, data: datasets.Dataset, batch_size: int = 64) -> dict[str, float]:
    """CER (total edits / total reference letters) and word accuracy (decoded word exactly right)."""
    was_training = model.training
    model.eval()
    edits = letters = exact = 0
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
        lengths = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
        for frames, length, labels in zip(logits.argmax(-1), lengths, batch["labels"], strict=True):
            hypothesis = greedy_decode(frames[: int(length)].tolist())
            reference = labels[labels != -100].tolist()
            distance = edit_distance(hypothesis, reference)
            edits += distance
            letters += len(reference)
            exact += distance == 0
    model.train(was_training)
    return {"cer": edits / letters, "word_accuracy": exact / len(data)}


class CERProgress(TrainerCallback):
    """Every `every` epochs: test CER on stdout and in the log history (for the pilot's learning curve)."""

    def __init__(self, data: datasets.Dataset, every: int) -> None:
        self.data, self.every, self.start = data, every, time.perf_counter()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if self.every > 0 and epoch % self.every == 0:
            result = character_error_rate(model, self.data)
            state.log_history.append({"epoch": epoch, "progress_cer": result["cer"]})
            minutes = (time.perf_counter() - self.start) / 60
            print(
                f"  epoch {epoch}: CER {result['cer']:.3f} word acc {result['word_accuracy']:.3f} {minutes:.1f} min",
                flush=True,
            )


def train_once(method: str, seed: int, args: argparse.Namespace, train, test) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = SPGTrainingArguments(
            output_dir=output_dir,
            spg_enabled=method == "spg",
            spg_normalize=args.spg_normalize,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.lr,
            warmup_steps=0.1,
            weight_decay=0.01,
            seed=seed,
            logging_steps=20,
            save_strategy="no",
            eval_strategy="no",
            train_sampling_strategy="group_by_length",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_pin_memory=False,
            remove_unused_columns=False,  # keep "length" for the length-grouped sampler; collate ignores it
        )
        trainer = SPGTrainer(
            model=small_wav2vec2_ctc(seed, args.hidden, args.layers),
            args=training_args,
            train_dataset=train,
            eval_dataset=test,
            data_collator=collate,
            callbacks=[CERProgress(test, args.progress_every)],
        )
        start = time.perf_counter()
        trainer.train()
        wall_s = time.perf_counter() - start
        eval_loss = trainer.evaluate()["eval_loss"]
        result = character_error_rate(trainer.model, test)
    history = trainer.state.log_history
    survival = [log["spg/survival_1"] for log in history if "spg/survival_1" in log]
    train_loss = [log["loss"] for log in history if "loss" in log]
    return {
        "cer": result["cer"],
        "word_accuracy": result["word_accuracy"],
        "eval_loss": eval_loss,
        "last_train_loss": train_loss[-1] if train_loss else None,
        "last_survival_1": survival[-1] if survival else None,
        "progress_cer": [(log["epoch"], round(log["progress_cer"], 4)) for log in history if "progress_cer" in log],
        "train_wall_s": round(wall_s, 1),
    }


def summarize(rows: list[dict]) -> None:
    by = {(row["method"], row["seed"]): row for row in rows}
    seeds = sorted(seed for method, seed in by if method == "plain" and ("spg", seed) in by)
    for seed in seeds:
        plain, spg = by[("plain", seed)], by[("spg", seed)]
        print(
            f"seed {seed}: CER plain {plain['cer']:.4f} spg {spg['cer']:.4f} diff {spg['cer'] - plain['cer']:+.4f}; "
            f"eval loss {plain['eval_loss']:.4f} / {spg['eval_loss']:.4f}; survival_1 {spg['last_survival_1']}; "
            f"wall {plain['train_wall_s']:.0f} / {spg['train_wall_s']:.0f} s"
        )
    if len(seeds) > 1:
        for key in ("cer", "eval_loss"):
            d = paired_difference(
                [by[("spg", s)][key] for s in seeds], [by[("plain", s)][key] for s in seeds], higher_is_better=False
            )
            print(f"{key} spg - plain: mean {d['mean']:+.4f}, 95% t-interval [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=["plain", "spg"], choices=["plain", "spg"])
    parser.add_argument("--epochs", type=float, default=30)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--spg-normalize",
        default="batch",
        choices=["batch", "survivors"],
        help="'batch' (default here), as configs/audio/fsdd_wav2vec2_tiny_cpu.yaml for a random Wav2Vec2: from "
        "random weights few utterances survive, and dividing by those few collapsed the classifier there.",
    )
    parser.add_argument(
        "--split",
        default="index",
        choices=["index", "speaker"],
        help="'index': FSDD's own split, recordings 0-4 of every speaker are test (300 clips). 'speaker': the "
        "unseen speaker theo is test (500 clips), as configs/audio/fsdd_wav2vec2_tiny_cpu.yaml.",
    )
    parser.add_argument("--progress-every", type=int, default=5, help="Print test CER every N epochs (0: never).")
    parser.add_argument("--data-dir", default=os.environ.get("FSDD_DIR", DEFAULT_DATA_DIR))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ctc_digits"))
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "raw.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()] if raw.exists() else []
    if not args.summary_only:
        setting = {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "hidden": args.hidden,
            "layers": args.layers,
            "spg_normalize": args.spg_normalize,
            "split": args.split,
        }
        done = {(row["method"], row["seed"]) for row in rows if {"split": "index"} | row["setting"] == setting}
        train, test = load_data(args.data_dir, args.split)
        print(f"train {len(train)} clips, test {len(test)} clips, vocabulary {len(VOCAB) + 1}", flush=True)
        for seed in args.seeds:
            for method in args.methods:
                if (method, seed) in done:
                    continue
                print(f"{method} seed {seed} ...", flush=True)
                row = {"method": method, "seed": seed, "setting": setting}
                row |= train_once(method, seed, args, train, test)
                row["torch"], row["transformers"] = torch.__version__, transformers.__version__
                print(json.dumps(row), flush=True)
                with raw.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                rows.append(row)
    summarize([row for row in rows if not math.isnan(row["cer"])])


if __name__ == "__main__":
    main()
