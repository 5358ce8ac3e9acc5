"""The GPU check: what needs a CUDA GPU, in one command, in under 8 minutes on one H100 (scripts/gpu_check.sh).

Steps, in this order, each with a time limit inside the whole check's budget (--budget-s):
1. cuda_tests: `pytest -m cuda` (tests/test_cuda.py: the chain's device and dtype on CUDA, bf16 and fp16 autocast
   with Trainer's grad scaler, spg_enabled=False equal to Trainer on CUDA, SPG on CUDA equal to SPG on the CPU).
2. main_job: the main job on one GPU, `accelerate launch --config_file configs/accelerate/single_gpu.yaml
   run_glue_spg.py configs/glue/rte_minilm_cpu.yaml` (SPG fine-tuning of all-MiniLM-L6-v2 on GLUE RTE, bf16 from
   the accelerate config; data from --glue-dir).
3. overhead: `bench/overhead.py --device cuda --precision bf16` for each head family of --tasks: median step time
   and peak memory (torch.cuda.max_memory_allocated) of SPGTrainer over Trainer.

Writes gpu_check.json, gpu_check.md and gpu_check.log (each step's command and output) to --output-dir, rewritten
after every step, so that a check cut off keeps what it finished. Exit status: 0 when every step passed, 1 when one
failed or was not run (time budget), 2 when no CUDA device is visible: then nothing runs and no report is written.
--rehearse-on-cpu runs the same steps small on the CPU to try this script's plumbing; its report says so, and it
exits 3: a rehearsal is never a pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = (
    "text-classification",
    "question-answering",
    "token-classification",
    "decoder-classification",
    "causal-lm",
    "semantic-segmentation",
    "semantic-segmentation-auxiliary",
)
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "spg-hf", "deepspeed")
NO_CUDA = 2
FAILED = 1
REHEARSAL = 3
LOG_TAIL = 20_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "gpu_check"), help="where the report goes")
    parser.add_argument(
        "--glue-dir",
        default=os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "data" / "glue")),
        help="the folder holding RTE/train.tsv and RTE/dev.tsv (default: $GLUE_DIR, else ../shared/data/glue)",
    )
    parser.add_argument("--budget-s", type=float, default=450, help="the whole check's time limit (default 7.5 min)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="bench/overhead.py tasks")
    parser.add_argument("--skip", nargs="+", choices=("cuda_tests", "main_job", "overhead"), default=[])
    parser.add_argument(
        "--rehearse-on-cpu", action="store_true", help="run every step small on the CPU (exit 3: never a pass)"
    )
    return parser.parse_args(argv)


def cuda_device() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment_report(device: str | None) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "device": device or "CPU (rehearsal)",
        "torch_cuda": torch.version.cuda,
        "bf16_supported": bool(device) and torch.cuda.is_bf16_supported(),
        "python": platform.python_version(),
        "packages": versions,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


class Check:
    """Runs the steps as subprocesses within the budget and keeps the report up to date."""

    def __init__(self, args: argparse.Namespace, device: str | None) -> None:
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget_s
        self.report = {
            "check": "CPU rehearsal: not a GPU check" if args.rehearse_on_cpu else "GPU check",
            "environment": environment_report(device),
            "budget_s": args.budget_s,
            "steps": {},
        }
        self.log = open(self.output_dir / "gpu_check.log", "w")  # kept open for the whole check
        self.environment = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            GLUE_DIR=args.glue_dir,
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
        )

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, step: str, command: list[str], limit_s: float) -> tuple[subprocess.CompletedProcess | None, dict]:
        """Runs one command of a step with the smaller of its limit and what is left of the budget; returns the
        finished process (None if it was cut off or never started) and the step's entry so far."""
        limit_s = min(limit_s, self.left_s())
        entry = {"command": " ".join(command), "limit_s": round(limit_s)}
        self.log.write(f"\n===== {step}: {entry['command']}\n")
        self.log.flush()
        if limit_s < 10:
            entry.update(status="not run", reason="the check's time budget was spent")
            return None, entry
        start = time.monotonic()
        try:
            result = subprocess.run(
                command, cwd=ROOT, env=self.environment, capture_output=True, text=True, timeout=limit_s
            )
        except subprocess.TimeoutExpired as expired:
            entry.update(status="failed", reason=f"cut off after {limit_s:.0f} s", seconds=round(limit_s))
            self.write_log(expired.stdout, expired.stderr)
            return None, entry
        entry["seconds"] = round(time.monotonic() - start, 1)
        entry["returncode"] = result.returncode
        self.write_log(result.stdout, result.stderr)
        return result, entry

    def write_log(self, stdout: str | bytes | None, stderr: str | bytes | None) -> None:
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            self.log.write(f"--- {name} (last {LOG_TAIL} characters)\n{(text or '')[-LOG_TAIL:]}\n")
        self.log.flush()

    def record(self, step: str, entry: dict) -> None:
        self.report["steps"][step] = entry
        self.write_report()

    def write_report(self) -> None:
        steps = self.report["steps"].values()
        self.report["passed"] = bool(steps) and all(entry["status"] in ("passed", "skipped") for entry in steps)
        (self.output_dir / "gpu_check.json").write_text(json.dumps(self.report, indent=2) + "\n")
        (self.output_dir / "gpu_check.md").write_text(markdown(self.report))

    # ---- the steps ----

    def cuda_tests(self) -> None:
        junit = self.output_dir / "cuda_tests.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        result, entry = self.run("cuda_tests", command, limit_s=180)
        if junit.is_file():
            entry.update(junit_summary(junit))
            junit.unlink()  # its content is in the report
        if result is not None:
            ran = entry.get("passed", 0) + entry.get("failed", 0)
            if result.returncode == 0 and (ran > 0 or self.args.rehearse_on_cpu):
                entry["status"] = "passed"
            else:
                entry["status"] = "failed"
                entry["reason"] = f"pytest exit status {result.returncode}" + ("" if ran else ": no CUDA test ran")
        self.record("cuda_tests", entry)

    def main_job(self) -> None:
        rte = Path(self.args.glue_dir) / "RTE" / "train.tsv"
        if not rte.is_file():
            self.record("main_job", {"status": "failed", "reason": f"no GLUE RTE data at {rte}: set --glue-dir"})
            return
        with tempfile.TemporaryDirectory() as scratch:
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
            launch += [str(ROOT / "configs" / "accelerate" / "single_gpu.yaml")]
            script = ["run_glue_spg.py", "configs/glue/rte_minilm_cpu.yaml", "--output_dir", scratch]
            if self.args.rehearse_on_cpu:
                launch += ["--cpu", "--mixed_precision", "no"]
                script += ["--max_train_samples", "16", "--max_eval_samples", "16", "--use_cpu", "true"]
            result, entry = self.run("main_job", [*launch, *script], limit_s=240)
            results = Path(scratch) / "eval_results.json"
            if results.is_file():
                entry["eval"] = json.loads(results.read_text())
            train_results = Path(scratch) / "train_results.json"
            if train_results.is_file():
                entry["train"] = json.loads(train_results.read_text())
        if result is not None:
            entry["status"] = "passed" if result.returncode == 0 and "eval" in entry else "failed"
            if entry["status"] == "failed":
                entry["reason"] = f"exit status {result.returncode}" + ("" if "eval" in entry else ", no eval results")
        self.record("main_job", entry)

    def overhead(self) -> None:
        tasks = self.args.tasks[:1] if self.args.rehearse_on_cpu else self.args.tasks
        entry: dict = {"tasks": {}}
        for index, task in enumerate(tasks):
            command = [sys.executable, "bench/overhead.py", "--task", task, "--output", "json"]
            if self.args.rehearse_on_cpu:
                command += ["--device", "cpu", "--precision", "bf16", "--steps", "1", "--warmup", "1"]
                command += ["--batch-size", "2", "--seq-len", "16", "--image-size", "32", "--skip-memory"]
            else:
                command += ["--device", "cuda", "--precision", "bf16"]
            # What is left is shared among the tasks still to run.
            result, task_entry = self.run(f"overhead {task}", command, limit_s=self.left_s() / (len(tasks) - index))
            if result is not None:
                if result.returncode == 0:
                    task_entry.update(status="passed", **overhead_figures(json_report(result.stdout)))
                else:
                    task_entry.update(status="failed", reason=f"exit status {result.returncode}")
            entry["tasks"][task] = task_entry
            statuses = [t["status"] for t in entry["tasks"].values()]
            entry["status"] = "passed" if all(s == "passed" for s in statuses) else "failed"
            self.record("overhead", entry)


def json_report(stdout: str) -> dict:
    """The indented JSON document a script printed last, after whatever libraries printed before it (DeepSpeed,
    when installed, announces its accelerator on stdout as a Trainer is built)."""
    lines = stdout.splitlines()
    start = max(index for index, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def junit_summary(path: Path) -> dict:
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {name: int(suite.get(name, 0)) for name in ("tests", "failures", "errors", "skipped")}
    failing = [
        f"{case.get('classname')}.{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    failed = counts["failures"] + counts["errors"]
    return {
        "passed": counts["tests"] - failed - counts["skipped"],
        "failed": failed,
        "skipped": counts["skipped"],
        "failing": failing,
    }


def overhead_figures(report: dict) -> dict:
    """The figures of one bench/overhead.py --output json report that the check keeps."""
    timing = report["step_time_wall"]
    figures = {
        "machine": report["machine"],
        "median_step_s": timing["median_s"],
        "step_time_ratio": timing["ratio_spg_over_plain"],
        "paired_step_time_ratio": timing["paired_ratio_median"],
        "survival": {k: v for k, v in report["spg_statistics"].items() if k.startswith("spg/survival")},
    }
    if "memory" in report:
        figures["memory_growth_ratio"] = report["memory"]["growth_ratio_spg_over_plain"]
        figures["memory_peak_ratio"] = report["memory"]["peak_ratio_spg_over_plain"]
        figures["memory_bytes"] = report["memory"]["bytes"]
    return figures


def markdown(report: dict) -> str:
    environment = report["environment"]
    packages = ", ".join(f"{name} {version}" for name, version in environment["packages"].items() if version)
    if report["check"] == "GPU check":
        title = f"GPU check: {'PASSED' if report.get('passed') else 'NOT PASSED'}"
    else:
        title = report["check"]
    lines = [
        f"# {title}",
        "",
        f"{environment['device']}; CUDA {environment['torch_cuda']}; Python {environment['python']}; {packages}. "
        f"Started {environment['started']}, budget {report['budget_s']:.0f} s.",
        "",
        "| step | status | seconds | notes |",
        "|---|---|---|---|",
    ]
    steps = report["steps"]
    for name, entry in steps.items():
        notes = entry.get("reason", "")
        if name == "cuda_tests" and "passed" in entry:
            counts = f"{entry['passed']} passed, {entry['failed']} failed, {entry['skipped']} skipped"
            notes = "; ".join(part for part in (counts, notes, " ".join(entry.get("failing", []))) if part)
        if name == "main_job" and "eval" in entry:
            metrics = {k: v for k, v in entry["eval"].items() if k in ("eval_accuracy", "eval_loss")}
            notes = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + (f"; {notes}" if notes else "")
        seconds = entry.get("seconds", sum(t.get("seconds", 0) for t in entry.get("tasks", {}).values()))
        lines.append(f"| {name} | {entry['status']} | {seconds:.0f} | {notes} |")
    overhead = steps.get("overhead", {}).get("tasks", {})
    if overhead:
        lines += [
            "",
            "Step time and peak memory, SPGTrainer over Trainer (bench/overhead.py, bf16):",
            "",
            "| task | status | step time ratio | paired | memory growth ratio | peak ratio | survival 1/2/3 |",
            "|---|---|---|---|---|---|---|",
        ]
        for task, entry in overhead.items():
            if entry["status"] != "passed":
                lines.append(f"| {task} | {entry['status']} | | | | | {entry.get('reason', '')} |")
                continue
            survival = "/".join(f"{v:.2f}" for v in entry["survival"].values())
            growth = f"{entry['memory_growth_ratio']:.3f}" if "memory_growth_ratio" in entry else "-"
            peak = f"{entry['memory_peak_ratio']:.3f}" if "memory_peak_ratio" in entry else "-"
            lines.append(
                f"| {task} | passed | {entry['step_time_ratio']:.3f} | {entry['paired_step_time_ratio']:.3f} | "
                f"{growth} | {peak} | {survival} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = cuda_device()
    if device is None and not args.rehearse_on_cpu:
        print(
            "gpu_check: no CUDA device is visible to torch here (torch.cuda.is_available() is False), so nothing "
            "was run and no report was written: this check only counts on a machine with a CUDA GPU and a CUDA "
            "build of torch. (--rehearse-on-cpu tries the script's plumbing on the CPU; it never passes.)",
            file=sys.stderr,
        )
        return NO_CUDA
    check = Check(args, device)
    for step in ("cuda_tests", "main_job", "overhead"):
        if step in args.skip:
            check.record(step, {"status": "skipped", "reason": "--skip"})
        else:
            getattr(check, step)()
    check.log.close()
    print(markdown(check.report))
    print(f"gpu_check: report in {check.output_dir}/gpu_check.md and .json, output in gpu_check.log")
    if args.rehearse_on_cpu:
        return REHEARSAL
    return 0 if check.report["passed"] else FAILED


if __name__ == "__main__":
    sys.exit(main())
