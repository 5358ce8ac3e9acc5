"""`spg_hf.__version__` comes from the installed package's metadata, so it is pyproject.toml's version."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest
from helpers import REPO

import spg_hf

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = REPO / "pyproject.toml"


def test_version_is_pyprojects():
    # An editable install records the version when it is installed: after changing it in pyproject.toml, run
    # `pip install -e .` again.
    assert spg_hf.__version__ == tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def test_version_without_installed_metadata(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        assert importlib.reload(spg_hf).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(spg_hf)
    assert spg_hf.__version__ == importlib.metadata.version("spg-hf")
