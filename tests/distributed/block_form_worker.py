"""One rank of the 2-process DDP test of the block form (tests/test_block_form.py launches it with torchrun).

Trains a tiny BERT classifier with spg_module='block' on gloo and writes this rank's final weights, the temporary
blocks included (read before train() detaches them), to `<output_dir>/rank<rank>.safetensors`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the helper module is

from helpers import text_dataset, tiny_bert, training_args

from distributed.ddp_train_worker import SaveFinalWeights
from spg_hf import SPGTrainer
from spg_hf.tasks.cli import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    output_dir = parser.parse_args().output_dir
    path = os.path.join(output_dir, f"rank{os.environ['RANK']}.safetensors")
    args = training_args(output_dir, max_steps=4, learning_rate=1e-2, spg_module="block")
    trainer = SPGTrainer(
        model=tiny_bert(), args=args, train_dataset=text_dataset(size=32), callbacks=[SaveFinalWeights(path)]
    )
    trainer.train()


if __name__ == "__main__":
    run_main(main)
