"""The rows of a results folder: one JSON line per finished run in <out>/raw.jsonl, appended as runs end, so a restart
resumes where it stopped."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

RAW_FILE = "raw.jsonl"


def load_rows(path: Path) -> list[dict]:
    """The raw rows; a line cut short by a crash mid-write is skipped (that run simply runs again)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not valid JSON; ignoring it.", file=sys.stderr)
    return rows


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Appends one line per row. A line cut short by a crash is ended first, so it cannot swallow the next row."""
    if not rows:
        return
    cut_short = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as raw:
        raw.write("\n" if cut_short else "")
        raw.writelines(json.dumps(row) + "\n" for row in rows)
