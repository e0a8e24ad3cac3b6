"""VideoEnv (mp4 / gif / frame folders, action tracks, looping) and the observation wrappers."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest

from worldbagel.envs import FrameHistory, GridWorldEnv, ResizeObservation, SelectImage, resize_image
from worldbagel.envs.video_env import VideoEnv, load_frames
from worldbagel.errors import ConfigError, InvalidAction, WorldBagelError


def _frames(n=6, h=32, w=48):
    # Flat colours survive video compression well enough to tell frames apart.
    return np.stack([np.full((h, w, 3), 30 * i + 10, np.uint8) for i in range(n)])


def test_mp4_gif_and_folder_sources(tmp_path: Path):
    frames = _frames()
    iio.imwrite(tmp_path / "v.mp4", frames, fps=10, codec="libx264", macro_block_size=16)
    iio.imwrite(tmp_path / "v.gif", frames, duration=100, loop=0)
    folder = tmp_path / "traj"
    folder.mkdir()
    for i, f in enumerate(frames):  # 0.png ... 5.png; natural order, not 0, 1, 10, 2 ...
        iio.imwrite(folder / f"{i}.png", f)
    for source in ("v.mp4", "v.gif", "traj"):
        loaded = np.stack(load_frames(tmp_path / source))
        assert loaded.shape == frames.shape, source
        assert np.abs(loaded.astype(int) - frames).max() <= 3, source
    names = [p.name for p in sorted(folder.iterdir())]
    assert names[:3] == ["0.png", "1.png", "2.png"]


def test_plays_frames_and_truncates_at_the_end():
    frames = _frames(4)
    env = VideoEnv(frames=frames, render_mode="rgb_array")
    assert env.action_space.n == 1 and env.action_names == ("no-op",)
    obs, info = env.reset(seed=0)
    assert np.array_equal(obs, frames[0]) and info["frame_index"] == 0
    seen = []
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(0)
        seen.append((info["frame_index"], truncated))
        assert np.array_equal(obs, frames[info["frame_index"]]) and np.array_equal(env.render(), obs)
        assert reward == 0.0 and not terminated and info["action_text"] == "no-op"
    assert seen == [(1, False), (2, False), (3, True)]
    with pytest.raises(WorldBagelError, match="reset"):
        env.step(0)
    obs, info = env.reset(options={"start": 2})
    assert info["frame_index"] == 2 and env.step(0)[3]


def test_loop_wraps_and_max_steps_bounds_it():
    env = VideoEnv(frames=_frames(3), loop=True, max_steps=5)
    env.reset()
    steps = [env.step(0) for _ in range(5)]
    assert [s[4]["frame_index"] for s in steps] == [1, 2, 0, 1, 2]
    assert [s[3] for s in steps] == [False] * 4 + [True]


def test_recorded_action_tracks():
    texts = ["move forward 0.25 m", "turn left 30 degrees", "move forward 0.25 m"]
    env = VideoEnv(frames=_frames(4), actions=texts)
    assert env.action_names == ("move forward 0.25 m", "turn left 30 degrees")
    env.reset()
    _, _, _, _, info = env.step(0)
    assert info["recorded_action"] == 0 and info["action_text"] == texts[0] and info["action_matches"]
    _, _, _, _, info = env.step(0)
    assert info["action_text"] == texts[1] and not info["action_matches"]
    ints = VideoEnv(frames=_frames(4), actions=[2, 0, 1], action_names=["a", "b", "c"])
    ints.reset()
    assert ints.step(2)[4]["action_text"] == "c"
    with pytest.raises(InvalidAction):
        ints.step(3)
    with pytest.raises(ConfigError, match="actions"):
        VideoEnv(frames=_frames(4), actions=[0, 1])  # neither 3 nor 4 actions
    with pytest.raises(ConfigError, match="actions"):
        VideoEnv(frames=_frames(4), actions=[0, 1, 5], action_names=["a", "b"])


def test_resize_and_bad_sources(tmp_path: Path):
    env = VideoEnv(frames=_frames(3), obs_size=16)
    assert env.reset()[0].shape == (16, 16, 3) and env.observation_space.shape == (16, 16, 3)
    with pytest.raises(ConfigError, match="path"):
        VideoEnv()
    with pytest.raises(ConfigError, match="path"):
        VideoEnv(path=tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no frames"):
        VideoEnv(path=tmp_path / "empty")
    with pytest.raises(ConfigError, match="at least 2 frames"):
        VideoEnv(frames=_frames(1))
    with pytest.raises(ConfigError, match="one size"):
        VideoEnv(frames=[np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)])


# ---- wrappers ------------------------------------------------------------------------------------


def test_resize_image_methods_keep_dtype_and_channels():
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    for method in ("nearest", "area", "bilinear", "bicubic"):
        out = resize_image(img, (10, 15), method)
        assert out.shape == (10, 15, 3) and out.dtype == np.uint8
    up = resize_image(img, 60, "nearest")
    assert up.shape == (60, 60, 3) and np.array_equal(up[1::3, ::2], img), "nearest copies pixels exactly"
    depth = np.random.default_rng(1).random((20, 30, 1)).astype(np.float32)
    small = resize_image(depth, 10, "area")
    assert small.shape == (10, 10, 1) and small.dtype == np.float32
    assert abs(float(small.mean()) - float(depth.mean())) < 0.02
    with pytest.raises(ConfigError, match="method"):
        resize_image(img, 8, "lanczos")


def test_resize_observation_wrapper_on_gridworld():
    env = ResizeObservation(GridWorldEnv(), 32, method="area")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and env.observation_space.contains(obs)
    for a in (0, 1, 2, 3):
        obs, *_ = env.step(a)
        assert env.observation_space.contains(obs)
    # Area-averaging a 64x64 frame to 32x32 averages 2x2 blocks.
    full, _ = env.env.reset(seed=0)
    small, _ = env.reset(seed=0)
    expected = full.reshape(32, 2, 32, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - expected).max() <= 1.0


def test_frame_history_stacks_the_last_k_frames():
    env = FrameHistory(GridWorldEnv(), 3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3) and all(np.array_equal(obs[0], obs[i]) for i in (1, 2))
    raw = [obs[-1]]
    for a in (0, 1, 2):
        obs, *_ = env.step(a)
        raw.append(obs[-1])
    assert (
        np.array_equal(obs[0], raw[-3])
        and np.array_equal(obs[1], raw[-2])
        and np.array_equal(obs[2], raw[-1])
    )
    assert env.observation_space.contains(obs)


def test_select_image_from_dict_observations():
    class DictEnv(gym.Env):
        observation_space = gym.spaces.Dict(
            {
                "rgb": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
                "depth": gym.spaces.Box(0, 255, (8, 8, 1), np.uint8),
            }
        )
        action_space = gym.spaces.Discrete(1)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return {"rgb": np.ones((8, 8, 3), np.uint8), "depth": np.zeros((8, 8, 1), np.uint8)}, {}

    resized = ResizeObservation(DictEnv(), 4)
    obs, _ = resized.reset()
    assert obs["rgb"].shape == (4, 4, 3) and obs["depth"].shape == (4, 4, 1)
    rgb = SelectImage(DictEnv())
    assert rgb.reset()[0].shape == (8, 8, 3)
    with pytest.raises(ConfigError, match="key"):
        SelectImage(DictEnv(), key="semantic")
