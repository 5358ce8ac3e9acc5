"""The README's generated tables match the code they come from (scripts/docs_tables.py): a changed setting, default or
help text, a head family's rule or task, or a tiny-config class added or resolving to another family fails here until
the README is regenerated."""

from __future__ import annotations

import importlib.util
import re
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


@pytest.mark.parametrize("name", sorted(TABLES.TABLES))
def test_write_regenerates_a_stale_table_and_check_reports_it(tmp_path, monkeypatch, name):
    readme = tmp_path / "README.md"
    start, end = TABLES.markers(name)
    readme.write_text(f"# title\n\n{start}\n| an old table |\n{end}\n\nafter\n")
    monkeypatch.setattr(TABLES, "README", readme)
    assert TABLES.main(["--check", name]) == 1
    assert TABLES.main(["--write", name]) == 0
    text = readme.read_text()
    assert text == f"# title\n\n{start}\n{TABLES.render(name)}\n{end}\n\nafter\n"
    assert TABLES.main(["--check", name]) == 0


def test_families_table_has_one_row_per_family_in_the_order_tasks_are_listed():
    from spg_hf.heads import FAMILIES

    rows = [row.split(" | ") for row in TABLES.render("families").splitlines()[2:]]
    names = [cells[0].strip("| `") for cells in rows]
    assert sorted(names) == sorted(family.name for family in FAMILIES)
    tasks = {family.name: family.task for family in FAMILIES}
    order = [list(TABLES.TASK_LABELS).index(tasks[name]) for name in names]
    assert order == sorted(order)
    assert set(TABLES.MODALITY_LABELS) <= {name for name, task in tasks.items() if task == "sequence_classification"}


def test_otherwise_tested_notes_hold():
    """A family tested some other way names tests that exist in tests/test_heads.py, with the class and settings
    they run; its note names no `...For...` class, which the README parser of test_heads would count as tested."""
    source = (REPO / "tests" / "test_heads.py").read_text()
    for family_name, otherwise in TABLES.OTHERWISE_TESTED.items():
        assert not re.findall(r"\w+(?:For\w+|LMHeadModel|MTModel)", otherwise.note), family_name
        for test in otherwise.tests:
            assert f"def {test}(" in source, (family_name, test)
        for name in filter(None, [otherwise.class_name, *(otherwise.overrides or {})]):
            assert name in source, (family_name, name)


def test_importing_the_script_builds_nothing():
    """The settings table needs no model: the families table imports the tests' tiny models only when it renders."""
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('docs_tables', {str(SCRIPT)!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "print(sorted({'torch', 'transformers', 'helpers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_command_in_the_failure_message_runs():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
