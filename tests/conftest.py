"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PYGLET_HEADLESS", "1")

# The suite's models are tiny: one intra-op thread is faster than two (no spin-waiting), and it lets
# pytest-xdist run one worker per core without oversubscription.
import torch  # noqa: E402

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The official-layout tiny BAGEL checkpoint (random weights) copied from shared/fixtures."""
    return FIXTURES / "bagel-tiny"


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    """A BagelPipeline on the tiny fixture with small image transforms (64 px VAE side, 56 px ViT side)."""
    from worldbagel.inference.pipeline import BagelPipeline
    from worldbagel.model.transforms import ImageTransform

    return BagelPipeline.from_pretrained(
        tiny_dir, vae_transform=ImageTransform(64, 32, 16), vit_transform=ImageTransform(56, 28, 14)
    )


@pytest.fixture
def frame():
    """A deterministic 64x64 RGB frame."""
    import numpy as np

    return (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
