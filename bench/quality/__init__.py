"""Quality benchmark: plain fine-tuning vs SPG on GLUE tasks, paired by seed.

Read it one part at a time:

- `plan.py`: what a sweep is. Tasks and their metrics, the SPG variants, arms (a variant with its own epochs,
  learning rate and training-set size), named comparisons (which arm is paired with which), and the ordered list
  of runs, each with the exact run_glue_spg.py flags that define it.
- `run.py`: running the plan with spg_hf.compare's run loop (the one `spg-hf compare` uses). One subprocess per
  run, two or more at a time, one raw row per finished run in <out>/raw.jsonl (a restart resumes), rows of
  identical flags taken over from earlier results folders.
- `stats.py`: per task, mean and sample std per arm and the per-seed paired difference with a 95% Student-t
  interval and seeds won (spg_hf.compare's statistics), recipes read from the rows' flags.
- `report.py`: table.md, summary.json, plots and missing.md, written from the raw rows alone.
- `cli.py`: the command line (`python -m bench.quality --help`), sweep files in bench/quality_sweeps/.
"""
