"""scripts/gpu_check.sh: without a CUDA device it refuses, writes nothing and exits 2 (never a pass); its report
reads right; and a rehearsal on the CPU runs its main-job and overhead steps through the same plumbing (it exits 3,
never a pass)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
from helpers import GLUE_DIR, REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(*arguments: str) -> subprocess.CompletedProcess:
    # No GPU is visible to the check, also on a machine that has one.
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES="", GLUE_DIR=str(GLUE_DIR), OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments], env=environment, capture_output=True, text=True, timeout=600
    )


def test_without_cuda_the_check_says_so_and_fails(tmp_path):
    result = run_check("--output-dir", str(tmp_path / "report"))
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "nothing was run" in result.stderr
    assert not (tmp_path / "report").exists(), "a check that ran nothing must leave no report"


def test_report_says_passed_only_when_every_step_passed(tmp_path):
    gpu_check = load_gpu_check()
    report = {
        "check": "GPU check",
        "environment": {
            "device": "NVIDIA H100 80GB HBM3", "torch_cuda": "13.0", "python": "3.12.3",
            "packages": {"torch": "2.11.0", "deepspeed": None}, "started": "now",
        },
        "budget_s": 450,
        "steps": {
            "cuda_tests": {"status": "passed", "seconds": 30, "passed": 11, "failed": 0, "skipped": 0, "failing": []},
            "main_job": {"status": "passed", "seconds": 60, "eval": {"eval_accuracy": 0.55, "eval_loss": 0.69}},
            "overhead": {"status": "failed", "tasks": {
                "causal-lm": {"status": "failed", "seconds": 20, "reason": "exit status 1"},
                "text-classification": {
                    "status": "passed", "seconds": 25, "step_time_ratio": 1.03, "paired_step_time_ratio": 1.02,
                    "memory_growth_ratio": 1.05, "memory_peak_ratio": 1.01,
                    "survival": {"spg/survival_1": 0.5, "spg/survival_2": 0.4, "spg/survival_3": 0.3},
                },
            }},
        },
    }  # fmt: skip
    text = gpu_check.markdown(report | {"passed": False})
    assert text.startswith("# GPU check: NOT PASSED")
    assert "| text-classification | passed | 1.030 | 1.020 | 1.050 | 1.010 | 0.50/0.40/0.30 |" in text
    assert "| causal-lm | failed |" in text and "eval_accuracy 0.5500" in text and "11 passed" in text
    assert gpu_check.markdown(report | {"passed": True}).startswith("# GPU check: PASSED")
    assert gpu_check.json_report('[WARNING] DeepSpeed says hello\n{\n  "a": {\n    "b": 1\n  }\n}\n') == {"a": {"b": 1}}


@pytest.mark.slow
@pytest.mark.skipif(not (GLUE_DIR / "RTE" / "train.tsv").is_file(), reason=f"no GLUE RTE data in {GLUE_DIR}")
def test_cpu_rehearsal_runs_the_main_job_and_overhead_steps(tmp_path):
    """The steps' commands, output parsing and report, small on the CPU (the CUDA tests would only skip here)."""
    result = run_check("--rehearse-on-cpu", "--skip", "cuda_tests", "--output-dir", str(tmp_path))
    assert result.returncode == 3, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["check"] == "CPU rehearsal: not a GPU check"
    assert report["steps"]["main_job"]["status"] == "passed", (tmp_path / "gpu_check.log").read_text()[-5000:]
    assert 0 <= report["steps"]["main_job"]["eval"]["eval_accuracy"] <= 1
    overhead = report["steps"]["overhead"]["tasks"]["text-classification"]
    assert overhead["status"] == "passed" and overhead["step_time_ratio"] > 0
    assert (tmp_path / "gpu_check.md").read_text().startswith("# CPU rehearsal")
