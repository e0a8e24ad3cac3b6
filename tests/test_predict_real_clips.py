"""`worldbagel predict` on clips longer than the window: encode only the kept frames, show them before the
marked prediction, and warn when the clip is off the model's declared domain (worldbagel.json)."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from worldbagel.cli import main
from worldbagel.commands.predict import CONTEXT_BORDER, PREDICTED_BORDER
from worldbagel.errors import CheckpointError
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.media import read_clip
from worldbagel.model.domain import DOMAIN_FILE, clip_mismatches, read_domain

SHIPPED = Path(str(resources.files("worldbagel"))) / "assets" / "gridworld"


def _model(folder):
    return ["model=tiny", f"model.path={folder}", "sampler=fast", "sampler.num_steps=2"]


def _frame_folder(folder: Path, frames) -> Path:
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    return folder


def _blocks(i: int) -> np.ndarray:
    """A 64x64 frame of four flat colours, different for every i (exact in a GIF palette)."""
    f = np.zeros((64, 64, 3), np.uint8)
    f[:32, :32] = (20 * i, 40, 200)
    f[:32, 32:] = (200, 20 * i, 40)
    f[32:, :32] = (40, 200, 20 * i)
    f[32:, 32:] = (10, 10, 10 + 20 * i)
    return f


def _gridworld_frames(n: int = 4) -> np.ndarray:
    import worldbagel.envs  # noqa: F401 - registers WorldBagel/*

    env = gym.make("WorldBagel/GridWorld-v0")
    obs, _ = env.reset(seed=3)
    frames = [obs]
    for a in [1, 2, 1, 2, 3][: n - 1]:
        obs, *_ = env.step(a)
        frames.append(obs)
    env.close()
    return np.stack(frames)


@pytest.fixture
def gridworld_tiny(tiny_dir, tmp_path):
    """The tiny fixture's files plus the shipped gridworld model's domain declaration."""
    folder = tmp_path / "tiny-gridworld"
    folder.mkdir()
    for f in tiny_dir.iterdir():
        (folder / f.name).symlink_to(f.resolve())
    (folder / DOMAIN_FILE).write_text((SHIPPED / DOMAIN_FILE).read_text())
    return folder


def test_only_the_window_is_encoded_and_shown_before_the_marked_prediction(tiny_dir, tmp_path, monkeypatch):
    clip = np.stack([_blocks(i) for i in range(10)])
    video = _frame_folder(tmp_path / "clip", clip)
    encoded = []
    real_encode = BagelPipeline.encode_vae

    def counting(self, image, *args, **kwargs):
        encoded.append(np.asarray(image).copy())
        return real_encode(self, image, *args, **kwargs)

    monkeypatch.setattr(BagelPipeline, "encode_vae", counting)
    out = tmp_path / "pred"
    args = [*_model(tiny_dir), f"video={video}", "frames=2", "max_history_frames=3", "mp4=false"]
    assert main(["predict", *args, f"out={out}"]) == 0

    clip_frames_encoded = [i for i in range(10) for e in encoded if np.array_equal(e, clip[i])]
    assert clip_frames_encoded == [7, 8, 9]  # the window's frames, each once

    shown = read_clip(out / "continuation.gif")
    assert shown.shape == (3 + 2, 68, 68, 3)  # 3 clip frames then 2 predicted, each in a 2-pixel border
    for i, f in enumerate(shown):
        border = np.concatenate([f[:2].reshape(-1, 3), f[-2:].reshape(-1, 3), f[:, :2].reshape(-1, 3)])
        expected = CONTEXT_BORDER if i < 3 else PREDICTED_BORDER
        assert np.abs(border.astype(int) - expected).max() <= 8, i
    assert np.array_equal(shown[:3, 2:-2, 2:-2], clip[7:])  # the clip's last frames, as they were
    predicted = np.stack([np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("*.png"))])
    assert predicted.shape == (2, 64, 64, 3)  # the raw prediction stays unmarked
    assert np.abs(shown[3:, 2:-2, 2:-2].astype(int) - predicted).mean() < 12  # GIF palette only


def test_off_domain_clip_warns_and_names_the_real_footage_model(gridworld_tiny, tmp_path, caplog):
    yy, xx = np.mgrid[0:64, 0:64]
    street = np.stack([yy * 3 + 20, xx * 2 + 60, (yy + xx) + 30], -1).clip(0, 255).astype(np.uint8)
    video = _frame_folder(tmp_path / "street", np.stack([street, street[::-1]]))
    with caplog.at_level(logging.WARNING, logger="worldbagel.model.domain"):
        assert (
            main(["predict", *_model(gridworld_tiny), f"video={video}", "frames=1", f"out={tmp_path / 'o'}"])
            == 0
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gridworld" in warnings[0] and "model=bagel-7b" in warnings[0] and "colours" in warnings[0]


def test_gridworld_clip_on_the_gridworld_model_is_not_warned(gridworld_tiny, tmp_path, caplog):
    video = _frame_folder(tmp_path / "grid", _gridworld_frames())
    with caplog.at_level(logging.WARNING, logger="worldbagel.model.domain"):
        assert (
            main(["predict", *_model(gridworld_tiny), f"video={video}", "frames=1", f"out={tmp_path / 'o'}"])
            == 0
        )
    assert not [r for r in caplog.records if r.name == "worldbagel.model.domain"]


def test_the_shipped_model_declares_its_domain_and_its_env_fits_it():
    domain = read_domain(SHIPPED)
    assert domain.domain == "gridworld" and domain.resolution == (64, 64)
    frames = _gridworld_frames(6)
    assert clip_mismatches(domain, frames) == []
    wide = np.stack([np.asarray(Image.fromarray(f).resize((96, 64), Image.NEAREST)) for f in frames])
    (phrase,) = clip_mismatches(domain, wide)
    assert "64x96" in phrase and "aspect is 1.50 (width / height), not 1.00" in phrase
    noise = (np.random.RandomState(0).rand(2, 64, 64, 3) * 255).astype(np.uint8)
    (phrase,) = clip_mismatches(domain, noise)
    assert "does not look like gridworld" in phrase


def test_a_folder_without_a_declaration_is_not_checked(tiny_dir):
    assert read_domain(tiny_dir) is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"resolution": [64, 64]}), '"domain" name'),
        (json.dumps({"domain": "grid", "resolution": [64]}), "height, width"),
        (json.dumps({"domain": "grid", "palette": [[1, 2]]}), "r, g, b"),
    ],
)
def test_a_bad_declaration_names_the_file(tmp_path, text, match):
    (tmp_path / DOMAIN_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=match) as err:
        read_domain(tmp_path)
    assert str(tmp_path / DOMAIN_FILE) in str(err.value)
