"""Keeps a markdown document's copy of a sweep's report current: each report section goes between the document's
`<!-- <prefix>:<name>:start -->` and `<!-- <prefix>:<name>:end -->` markers. What a document quotes is then
regenerated from the raw rows, never pasted by hand; the text outside the markers (status, verdict) stays the
author's."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple


class Document(NamedTuple):
    """A markdown file and the prefix of its markers for one sweep."""

    path: Path
    prefix: str


def marker(prefix: str, name: str, edge: str) -> str:
    return f"<!-- {prefix}:{name}:{edge} -->"


def absent_markers(text: str, prefix: str, names: Iterable[str]) -> list[str]:
    """The section names whose start and end markers do not each occur exactly once, start before end."""
    absent = []
    for name in names:
        start, end = marker(prefix, name, "start"), marker(prefix, name, "end")
        if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
            absent.append(name)
    return absent


def require_markers(text: str, prefix: str, names: Iterable[str]) -> None:
    """Raises ValueError naming every section without its single start/end marker pair."""
    absent = absent_markers(text, prefix, names)
    if absent:
        wanted = ", ".join(f"<!-- {prefix}:{name}:start/end -->" for name in absent)
        raise ValueError(f"no single marker pair for {wanted}")


def fill_sections(text: str, prefix: str, sections: Mapping[str, str]) -> str:
    """`text` with each section's body (stripped, on lines of its own) between its markers."""
    require_markers(text, prefix, sections)
    for name, body in sections.items():
        start, end = marker(prefix, name, "start"), marker(prefix, name, "end")
        head, rest = text.split(start)
        tail = rest.split(end)[1]
        text = f"{head}{start}\n{body.strip()}\n{end}{tail}"
    return text


def update_document(document: Document, sections: Mapping[str, str]) -> None:
    """Rewrites the document with the sections filled in, through a temporary file so that a crash mid-write
    cannot truncate it."""
    filled = fill_sections(document.path.read_text(), document.prefix, sections)
    partial = document.path.with_name(f".{document.path.name}.partial")
    partial.write_text(filled)
    os.replace(partial, document.path)
