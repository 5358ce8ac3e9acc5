#!/usr/bin/env python
"""Launch the 2-process DDP test worker (tests/distributed/ddp_train_worker.py, gloo on CPU) many times and count the
launches that exit non-zero (issue 14: some used to abort at interpreter exit after a good run).

    python bench/ddp_exits.py --launches 50 --output bench/results/ddp_exits.json

Every launch is `torchrun --standalone --nproc_per_node 2 tests/distributed/ddp_train_worker.py` in a fresh output
folder. A launch fails if torchrun exits non-zero; the JSON report keeps the exit status, wall time and, for failures,
the end of the output. `--worker exit_race` launches tests/distributed/exit_race_worker.py instead, the abort's cause
made certain, ended through spg_hf.tasks.cli.run_main or, with `--plain_exit`, without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = {name: REPO / "tests" / "distributed" / f"{name}_worker.py" for name in ("ddp_train", "exit_race")}
ABORT_MESSAGE = "terminate called"


def worker_command(cli: argparse.Namespace, output_dir: str) -> list[str]:
    if cli.worker == "ddp_train":
        return [str(WORKERS["ddp_train"]), "--output_dir", output_dir, "--models", *cli.models]
    return [str(WORKERS["exit_race"]), *([] if cli.plain_exit else ["--run_main"])]


def launch(cli: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="ddp_exits_") as output_dir:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += worker_command(cli, output_dir)
        environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        start = time.perf_counter()
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=cli.timeout)
    outcome = {"returncode": result.returncode, "wall_s": round(time.perf_counter() - start, 1)}
    if result.returncode != 0:
        output = result.stdout + result.stderr
        outcome["aborted_at_exit"] = ABORT_MESSAGE in output
        outcome["output_tail"] = output[-4000:]
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=50)
    parser.add_argument("--worker", choices=sorted(WORKERS), default="ddp_train")
    parser.add_argument("--models", nargs="+", choices=["bert", "wav2vec2"], default=["bert", "wav2vec2"])
    parser.add_argument("--plain_exit", action="store_true", help="exit_race: end without spg_hf.tasks.cli.run_main.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds one launch may take.")
    parser.add_argument("--output", type=Path, help="JSON report, rewritten after every launch.")
    cli = parser.parse_args()

    settings = {"worker": cli.worker, "models": cli.models, "plain_exit": cli.plain_exit}
    report = {"launches": 0, "failures": 0, **settings, "runs": []}
    for index in range(1, cli.launches + 1):
        outcome = launch(cli)
        report["launches"] += 1
        report["failures"] += outcome["returncode"] != 0
        report["runs"].append(outcome)
        print(
            f"launch {index}/{cli.launches}: exit {outcome['returncode']} in {outcome['wall_s']} s "
            f"({report['failures']} failed so far)",
            flush=True,
        )
        if cli.output:
            cli.output.parent.mkdir(parents=True, exist_ok=True)
            cli.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['failures']} of {report['launches']} launches exited non-zero")
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
