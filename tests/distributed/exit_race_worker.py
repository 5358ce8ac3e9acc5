"""One rank of a 2-process gloo run that leaves `main()` while the process group's thread still holds Python objects
(tests/test_core_distributed.py launches it with torchrun).

Rank 1 joins the last all_reduce late, so on rank 0 the process group's thread completes it - and drops the Python
callback attached to its future - only after `main()` has returned. Run plainly, that thread then needs the GIL while
Python finalizes, and CPython before 3.14 ends it with pthread_exit, which aborted the process on every launch with
torch 2.13 ("terminate called without an active exception"; torch 2.14 aborts less often, see the test). `--run_main`
ends the script through `spg_hf.tasks.cli.run_main`, as the example scripts do.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from spg_hf.tasks.cli import run_main

LATE_SECONDS = 5.0  # long enough for rank 0 to be deep in interpreter shutdown, even on a busy machine


def main() -> None:
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        time.sleep(LATE_SECONDS)
    work = dist.all_reduce(torch.ones(1), async_op=True)
    work.get_future().then(lambda future: future.value())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run_main", action="store_true", help="End through spg_hf.tasks.cli.run_main.")
    if parser.parse_args().run_main:
        run_main(main)
    else:
        main()
