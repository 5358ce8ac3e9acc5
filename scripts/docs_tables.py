"""The README's generated tables, printed or written from the code that defines them.

    python scripts/docs_tables.py            # print every table
    python scripts/docs_tables.py --write    # rewrite them in README.md, between their markers
    python scripts/docs_tables.py --check    # exit 1 when README.md differs from what this prints

Each table sits in README.md between `<!-- <name>:start -->` and `<!-- <name>:end -->` (its markers), and
tests/test_docs_tables.py fails when the text there differs from what `render(name)` gives. Tables:

  settings  the SPG settings of `SPGArguments`: each dataclass field's name, default and `help` metadata, in the
            order they are declared (spg_hf/spg_config.py). Prose that is not in a field's help goes after the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REGENERATE = "python scripts/docs_tables.py --write"


def _code(value: object) -> str:
    """A default as the Python a user would write, in backticks."""
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _default(field: dataclasses.Field) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.metadata.get("default")


def _markdown(help_text: str) -> str:
    """A help text as a table cell: 'quoted' values become code and pipes are escaped."""
    text = re.sub(r"(?<![A-Za-z])'([^'\s][^']*)'(?![A-Za-z])", r"`\1`", help_text)
    return text.replace("|", "\\|")


def settings_table() -> str:
    """The SPG settings table: one row per `SPGArguments` field."""
    from spg_hf.spg_config import SPGArguments

    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(SPGArguments):
        rows.append(f"| `{field.name}` | {_code(_default(field))} | {_markdown(field.metadata['help'])} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"settings": settings_table}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(name: str) -> str:
    return TABLES[name]()


def in_readme(name: str, text: str) -> str:
    """The text between a table's markers in `text` (the README), without the newlines next to the markers."""
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README.md must hold {start} and {end} once each, around the {name} table.")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def written(name: str, text: str) -> str:
    """`text` (the README) with the table `name` regenerated between its markers."""
    start, end = markers(name)
    in_readme(name, text)  # the markers are there, once each
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    return f"{before}{start}\n{render(name)}\n{end}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"tables, of {', '.join(TABLES)} (default: all)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the tables in README.md")
    action.add_argument("--check", action="store_true", help="exit 1 when README.md differs")
    args = parser.parse_args(argv)
    names = args.names or list(TABLES)
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        parser.error(f"no table {', '.join(unknown)}; the tables are {', '.join(TABLES)}")
    text = README.read_text()
    if args.write:
        for name in names:
            text = written(name, text)
        README.write_text(text)
        return 0
    if args.check:
        stale = [name for name in names if in_readme(name, text) != render(name)]
        for name in stale:
            print(f"README.md: the {name} table differs from the code; run `{REGENERATE}`.", file=sys.stderr)
        return 1 if stale else 0
    print("\n\n".join(render(name) for name in names))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
