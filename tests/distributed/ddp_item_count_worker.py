"""One rank of the 2-process accumulation test (tests/test_dropin.py launches it with torchrun).

Trains the given cases of test_dropin.ACCUMULATION_CASES on gloo with micro-batches of MICRO_BATCH and
ACCUMULATION / 2 accumulation steps, so each optimizer step covers the same examples as one process's large
batch, and writes this rank's final weights to `<output_dir>/<case>_rank<rank>.safetensors`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the helper module is

import safetensors.torch
from test_dropin import ACCUMULATION, ACCUMULATION_CASES, DDP_CASES, MICRO_BATCH, train_weights

from spg_hf.tasks.cli import run_main

PROCESSES = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cases", nargs="+", choices=list(ACCUMULATION_CASES), default=DDP_CASES)
    cli = parser.parse_args()
    rank = int(os.environ["RANK"])
    for case in cli.cases:
        model, dataset, trainer_kwargs, settings = ACCUMULATION_CASES[case]()
        weights = train_weights(
            os.path.join(cli.output_dir, case),
            model,
            dataset,
            MICRO_BATCH,
            ACCUMULATION // PROCESSES,
            trainer_kwargs,
            **settings,
        )
        safetensors.torch.save_file(weights, os.path.join(cli.output_dir, f"{case}_rank{rank}.safetensors"))


if __name__ == "__main__":
    run_main(main)
