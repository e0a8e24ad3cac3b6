"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PYGLET_HEADLESS", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The official-layout tiny BAGEL checkpoint (random weights) copied from shared/fixtures."""
    return FIXTURES / "bagel-tiny"
