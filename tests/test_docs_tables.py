"""The README's generated tables match the code they come from (scripts/docs_tables.py): a changed setting, default or
help text fails here until the README is regenerated."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from helpers import REPO

SCRIPT = REPO / "scripts" / "docs_tables.py"


def docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLES = docs_tables()


@pytest.mark.parametrize("name", sorted(TABLES.TABLES))
def test_readme_table_is_what_the_generator_prints(name):
    in_readme = TABLES.in_readme(name, TABLES.README.read_text())
    assert in_readme == TABLES.render(name), (
        f"README.md's {name} table differs from the code; regenerate it with `{TABLES.REGENERATE}` (from the "
        "repository root) and commit the README."
    )


def test_settings_table_has_one_row_per_spg_setting():
    from spg_hf.spg_config import SPGArguments, SPGTrainingArguments

    settings = [f.name for f in SPGArguments.__dataclass_fields__.values()]
    rows = TABLES.render("settings").splitlines()[2:]
    assert [row.split("|")[1].strip().strip("`") for row in rows] == settings
    assert all(name in SPGTrainingArguments.__dataclass_fields__ for name in settings)


def test_write_regenerates_a_stale_table_and_check_reports_it(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    start, end = TABLES.markers("settings")
    readme.write_text(f"# title\n\n{start}\n| an old table |\n{end}\n\nafter\n")
    monkeypatch.setattr(TABLES, "README", readme)
    assert TABLES.main(["--check"]) == 1
    assert TABLES.main(["--write"]) == 0
    text = readme.read_text()
    assert text == f"# title\n\n{start}\n{TABLES.render('settings')}\n{end}\n\nafter\n"
    assert TABLES.main(["--check"]) == 0


def test_the_command_in_the_failure_message_runs():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
