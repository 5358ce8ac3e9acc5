"""What token-level SPG costs in LoRA SFT of a 0.5B-shaped decoder: FLOPs and peak memory of one training step.

A random Qwen2-shaped causal LM (by default the full Qwen2.5-0.5B shape: 24 layers, width 896, MLP 4864, 14 query
and 2 key/value heads, vocabulary 151,936, tied embeddings) is wrapped with a PEFT LoRA adapter (r=16 on
q/k/v/o_proj) and trained by TRL's SFTTrainer through `spg_hf.trl.SPGSFTTrainer`, with `spg_enabled` off ("plain")
or on (library defaults: 3 modules, relu form, dropout 0.2). One batch of 1 x --seq-len tokens, learning rate 0 so
that every step sees the same weights (the optimizer still steps: AdamW with lr 0 leaves them as they are).

A random model predicts no next token, so SPG's chain would never run. The labels are therefore built from the model
itself: one no-grad forward gives its argmax at every position, and the label of a share --fractions of the positions
(drawn at random) is that argmax, the rest a random other token (SFTTrainer takes a pre-tokenized dataset with a
`labels` column as is). The share reaching module 1 is then about that fraction; the chain's dropout decides
modules 2 and 3. The measured shares come from the trainer's own `spg/survival_t` logs of the counted step.

Each method runs in its own process (started with MALLOC_MMAP_THRESHOLD_=65536, so that freed tensors leave the
resident set): step 1 warms up; step 2 is measured for memory: the peak resident size (VmHWM, reset right before
the step) minus the resident size just before it; step 3 runs under torch.utils.flop_counter.FlopCounterMode
(forward and backward, i.e. exactly one `training_step`). The head's FLOPs for one forward over the labelled
positions are measured alone on an nn.Linear of the head's shape.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python -m bench.sft_lora_cost --fractions 0.1 0.5 1.0 \
        --out bench/results/sft_lora_cost/result.json
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python -m bench.sft_lora_cost --fractions 1.0 --token-chunk 128 \
        --out bench/results/sft_lora_cost/token_chunk_128.json

The second sets the positions per chain head call to 128 (spg_hf.spg.TOKEN_CHUNK_LOGITS = 128 x vocabulary) in each
process (only SPG calls it). Without --token-chunk the library sizes the calls by the vocabulary (110 positions here).
Results and the formula: docs/benchmarks.md, "LoRA SFT of a 0.5B-shaped decoder".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MEMORY_STEP, FLOP_STEP = 2, 3


def resident_size() -> int:
    with open("/proc/self/status") as file:
        return int(re.search(r"VmRSS:\s+(\d+) kB", file.read()).group(1)) * 1024


def peak_resident_size() -> int:
    with open("/proc/self/status") as file:
        return int(re.search(r"VmHWM:\s+(\d+) kB", file.read()).group(1)) * 1024


def reset_peak_resident_size() -> None:
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def build_labels(model, input_ids, fraction: float, seed: int):
    """Labels (unshifted, as SFT feeds them) whose next-token target is the model's own argmax at a random share
    `fraction` of the positions and a random other token elsewhere."""
    import torch

    with torch.no_grad():
        predicted = model(input_ids=input_ids).logits.argmax(-1)[0]  # prediction at i is for token i + 1
    generator = torch.Generator().manual_seed(seed + 1)
    length = input_ids.shape[1]
    right = torch.rand(length - 1, generator=generator) < fraction
    offsets = torch.randint(1, model.config.vocab_size, (length - 1,), generator=generator)
    wrong = (predicted[:-1] + offsets) % model.config.vocab_size
    labels = torch.full((length,), -100, dtype=torch.long)
    labels[1:] = torch.where(right, predicted[:-1], wrong)
    return labels, right.float().mean().item()


def placeholder_tokenizer():
    """SFTTrainer wants a processing class; the dataset is pre-tokenized, so only its pad token is ever read."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import spg_hf.spg
    from spg_hf.trl import SPGSFTConfig, SPGSFTTrainer

    if args.token_chunk:  # positions per head call in the chain (the logits budget is read at each call)
        spg_hf.spg.TOKEN_CHUNK_LOGITS = args.token_chunk * SHAPE["vocab_size"]

    config = Qwen2Config(num_hidden_layers=args.layers, **SHAPE)
    model = Qwen2ForCausalLM(config)
    input_ids = torch.randint(
        0, config.vocab_size, (1, args.seq_len), generator=torch.Generator().manual_seed(args.seed)
    )
    labels, labelled_right = build_labels(model, input_ids, args.fraction, args.seed)
    dataset = Dataset.from_dict({"input_ids": [input_ids[0].tolist()] * 4, "labels": [labels.tolist()] * 4})
    record: dict = {"method": args.method, "fraction": args.fraction, "labels_right": labelled_right}
    record["token_chunk"] = spg_hf.spg.positions_per_chunk(SHAPE["vocab_size"])

    class Measured(SPGSFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            step = self.state.global_step + 1
            if step == MEMORY_STEP:
                before = resident_size()
                reset_peak_resident_size()
                cpu = time.process_time()
                loss = super().training_step(model, inputs, num_items_in_batch)
                record["step_cpu_s"] = time.process_time() - cpu
                record["rss_before_step_mib"] = before / 2**20
                record["peak_rss_mib"] = peak_resident_size() / 2**20
                record["peak_growth_mib"] = (peak_resident_size() - before) / 2**20
                return loss
            if step == FLOP_STEP:
                counter = FlopCounterMode(display=False)
                with counter:
                    loss = super().training_step(model, inputs, num_items_in_batch)
                record["flops"] = counter.get_total_flops()
                record["flops_by_op"] = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
                return loss
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as output_dir:
        sft_args = SPGSFTConfig(
            output_dir=output_dir,
            spg_enabled=args.method == "spg",
            max_steps=FLOP_STEP,
            per_device_train_batch_size=1,
            learning_rate=0.0,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            bf16=False,
            gradient_checkpointing=args.gradient_checkpointing,
            max_length=args.seq_len,
            dataloader_num_workers=0,
            use_cpu=True,
        )
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=LORA_TARGETS)
        trainer = Measured(
            model=model,
            args=sft_args,
            train_dataset=dataset,
            peft_config=peft_config,
            processing_class=placeholder_tokenizer(),
        )
        record["lora_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
        logged = [entry for entry in trainer.state.log_history if entry.get("step") == FLOP_STEP and "loss" in entry]
    survival = logged[0] if logged else {}
    record["survival"] = [survival[key] for key in sorted(survival) if key.startswith("spg/survival_")]
    record["mean_token_accuracy"] = survival.get("mean_token_accuracy")
    return record


def head_flops(seq_len: int) -> dict:
    """FLOPs of the tied LM head alone over the labelled positions (seq_len - 1): one forward, and the backward of a
    frozen head (input gradient only, as under LoRA)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    head = torch.nn.Linear(SHAPE["hidden_size"], SHAPE["vocab_size"], bias=False).requires_grad_(False)
    states = torch.randn(seq_len - 1, SHAPE["hidden_size"], requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        logits = head(states)
    with FlopCounterMode(display=False) as backward:
        logits.sum().backward()
    return {"forward": forward.get_total_flops(), "frozen_backward": backward.get_total_flops()}


def formula(plain_flops: int, head_forward: int, survival: list[float], width: int, vocabulary: int) -> dict:
    """SPG / plain = 1 + 3 h (1 + D / V) sum_t s_t, h = head forward FLOPs / plain step FLOPs.

    Module t runs on the share s_t of labelled positions still alive: its linear D x D (forward, input and weight
    gradients: 3 matmuls) and the frozen head under checkpointing (forward, recomputed forward, input gradient: 3
    matmuls), i.e. 3 (H + H D / V) s_t per module, with H = 2 N D V."""
    h = head_forward / plain_flops
    return {"h": h, "ratio": 1 + 3 * h * (1 + width / vocabulary) * sum(survival)}


def run_child(args: argparse.Namespace, method: str, fraction: float) -> dict:
    command = [sys.executable, "-m", "bench.sft_lora_cost", "--child", method, "--fraction", str(fraction)]
    command += ["--layers", str(args.layers), "--seq-len", str(args.seq_len), "--seed", str(args.seed)]
    if not args.gradient_checkpointing:
        command.append("--no-gradient-checkpointing")
    if args.token_chunk:
        command += ["--token-chunk", str(args.token_chunk)]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.time()
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        raise SystemExit(f"{method} at {fraction} failed")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall_s"] = time.time() - started
    print(json.dumps({k: v for k, v in record.items() if k != "flops_by_op"}), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument(
        "--token-chunk", type=int, help="positions per chain head call (default: the library's, by vocabulary)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/sft_lora_cost/result.json"))
    parser.add_argument("--child", choices=["plain", "spg"], help=argparse.SUPPRESS)
    parser.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        print(json.dumps(child(args)), flush=True)
        return

    head = head_flops(args.seq_len)
    plain = run_child(args, "plain", max(args.fractions))
    rows = []
    for fraction in args.fractions:
        spg = run_child(args, "spg", fraction)
        predicted = formula(plain["flops"], head["forward"], spg["survival"], SHAPE["hidden_size"], SHAPE["vocab_size"])
        measured = spg["flops"] / plain["flops"]
        rows.append(
            {
                "fraction": fraction,
                "survival": spg["survival"],
                "plain_flops": plain["flops"],
                "spg_flops": spg["flops"],
                "measured_ratio": measured,
                "formula_ratio": predicted["ratio"],
                "h": predicted["h"],
                "formula_error": measured / predicted["ratio"] - 1,
                "plain_peak_growth_mib": plain["peak_growth_mib"],
                "spg_peak_growth_mib": spg["peak_growth_mib"],
                "peak_growth_ratio": spg["peak_growth_mib"] / plain["peak_growth_mib"],
                "plain_peak_rss_mib": plain["peak_rss_mib"],
                "spg_peak_rss_mib": spg["peak_rss_mib"],
                "peak_rss_ratio": spg["peak_rss_mib"] / plain["peak_rss_mib"],
                "spg": spg,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "spg"}), flush=True)
    report = {
        "command": " ".join(sys.argv),
        "shape": {**SHAPE, "num_hidden_layers": args.layers, "seq_len": args.seq_len, "batch_size": 1},
        "gradient_checkpointing": args.gradient_checkpointing,
        "token_chunk": plain["token_chunk"],
        "head_flops": head,
        "plain": plain,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
