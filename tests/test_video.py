"""Video IO round trips (mp4, gif, frame folders) and side-by-side composition."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worldbagel.errors import ConfigError
from worldbagel.media import frame_files, read_clip
from worldbagel.video import side_by_side, write_video


def _frames(t=8, h=32, w=48, seed=0):
    # Smooth, codec-friendly content: moving colour gradients (lossy codecs are compared with a tolerance).
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(t):
        r = (xx * 255 // max(1, w - 1) + i * 8) % 256
        g = (yy * 255 // max(1, h - 1)) % 256
        b = np.full_like(xx, 40 * (i % 5) + seed)
        out.append(np.stack([r, g, b], -1).astype(np.uint8))
    return np.stack(out)


def test_mp4_round_trip(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "a.mp4", frames, fps=12)
    back = read_clip(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    assert not list(tmp_path.glob(".a-*"))  # temp file was renamed away


def test_mp4_pads_odd_sizes_to_macro_blocks(tmp_path):
    frames = _frames(t=4, h=21, w=35)
    back = read_clip(write_video(tmp_path / "odd.mp4", frames, macro_block_size=16))
    assert back.shape == (4, 32, 48, 3)
    assert np.abs(back[:, :21, :35].astype(int) - frames.astype(int)).mean() < 8
    assert back[:, 24:, :].max() < 20  # black padding, not a stretched copy of the image


def test_gif_round_trip_keeps_size_and_length(tmp_path):
    frames = _frames(t=5, h=21, w=35)
    back = read_clip(write_video(tmp_path / "a.gif", frames, fps=5))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 12


def test_frame_folder_natural_order(tmp_path):
    frames = _frames(t=12)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i}.png")
    assert [p.name for p in frame_files(tmp_path)][:3] == ["0.png", "1.png", "2.png"]
    assert np.array_equal(read_clip(tmp_path), frames)


def test_bad_paths_and_inputs_name_the_argument(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        write_video(tmp_path / "a.avi", _frames())
    with pytest.raises(ConfigError, match="frames"):
        write_video(tmp_path / "a.mp4", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="path"):
        read_clip(tmp_path / "missing.mp4", "path")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no frames"):
        read_clip(tmp_path / "empty")


def test_side_by_side_panels_labels_and_stills():
    real = _frames(t=6, h=32, w=32)
    imagined = _frames(t=4, h=16, w=16, seed=3)
    goal = _frames(t=1, h=32, w=40)[0]
    out = side_by_side([real, imagined, goal], labels=["real", "imagined", "goal"], gap=2, label_height=12)
    assert out.shape == (6, 44, 32 + 2 + 32 + 2 + 40, 3)
    assert np.array_equal(out[:, 12:, :32], real)
    assert np.array_equal(out[5, 12:, 34:66], out[3, 12:, 34:66])  # shorter panel holds its last frame
    assert np.array_equal(out[0, 12:, 68:], goal) and np.array_equal(out[5, 12:, 68:], goal)
    strip = out[0, :12]
    assert (strip == 255).mean() > 0.5 and (strip < 128).any()  # white strip with dark text
    plain = side_by_side([real, real], gap=0)
    assert plain.shape == (6, 32, 64, 3)
    with pytest.raises(ConfigError, match="labels"):
        side_by_side([real], labels=["a", "b"])
