"""pytest fixtures and settings only; what the tests share as code is in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest


@pytest.fixture
def output_dir(tmp_path):
    return str(tmp_path / "out")
