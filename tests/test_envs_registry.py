"""Every registered WorldBagel/* id: env_checker with warnings as errors, same-seed determinism, vector envs.

MiniWorld ids skip (with the reason) where OpenGL cannot render; Habitat ids run on tests/fake_habitat.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import fake_habitat
import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from worldbagel.envs import WORLD_BAGEL_IDS, make_env
from worldbagel.errors import ConfigError, DependencyNotInstalled


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = (rng.random((8, 32, 32, 3)) * 255).astype(np.uint8)
    path = tmp_path / "clip.gif"
    iio.imwrite(path, frames, duration=100, loop=0)
    return path


@pytest.fixture
def make(monkeypatch, clip):
    """Build any WorldBagel id: Habitat on the fake, Video on a generated clip, MiniWorld when it renders."""
    fake_habitat.install(monkeypatch)

    def _make(env_id: str, **kwargs):
        if "Video" in env_id:
            kwargs.setdefault("path", str(clip))
        if env_id == "WorldBagel/MiniWorld-Maze-v0":  # same code path, 4x4 rooms instead of 8x8 (~1 s/reset)
            kwargs.update(num_rows=4, num_cols=4)
        try:
            return make_env(env_id, **kwargs)
        except DependencyNotInstalled as exc:
            pytest.skip(f"{env_id} cannot run here: {exc}")

    return _make


def test_every_family_is_registered():
    assert len(WORLD_BAGEL_IDS) == len(set(WORLD_BAGEL_IDS))
    for env_id in WORLD_BAGEL_IDS:
        assert env_id.startswith("WorldBagel/") and env_id in gym.registry
    for needed in ("GridWorld-v0", "GridWorldEgo-v0", "MiniWorld-Hallway-v0", "MiniWorld-OneRoom-v0",
                   "MiniWorld-FourRooms-v0", "MiniWorld-Maze-v0", "Habitat-PointNav-v0", "Habitat-ImageNav-v0",
                   "Video-v0"):  # fmt: skip
        assert f"WorldBagel/{needed}" in WORLD_BAGEL_IDS


@pytest.mark.parametrize("env_id", WORLD_BAGEL_IDS)
def test_check_env_without_warnings(make, env_id):
    env = make(env_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env.unwrapped, skip_render_check=False)
        names = env.unwrapped.action_names
        assert len(names) == env.action_space.n and all(isinstance(n, str) and n for n in names)
    finally:
        env.close()


def _rollout(env, seed: int, actions: list[int]):
    frames, infos, rewards = [], [], []
    obs, info = env.reset(seed=seed)
    frames.append(obs)
    infos.append(info)
    for i, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(a)
        frames.append(obs)
        infos.append(info)
        rewards.append(reward)
        if terminated or truncated:
            obs, info = env.reset(seed=seed + i + 1)
            frames.append(obs)
            infos.append(info)
    return frames, infos, rewards


@pytest.mark.parametrize("env_id", WORLD_BAGEL_IDS)
def test_same_seed_same_rollout(make, env_id):
    first, second = make(env_id), make(env_id)
    try:
        actions = np.random.default_rng(3).integers(first.action_space.n, size=25).tolist()
        a = _rollout(first, 17, actions)
        b = _rollout(second, 17, actions)
        assert len(a[0]) == len(b[0])
        for fa, fb in zip(a[0], b[0]):
            assert data_equivalence(fa, fb)
        for ia, ib in zip(a[1], b[1]):
            assert data_equivalence(ia, ib), (ia, ib)
        assert a[2] == b[2]
        # A different seed gives a different episode (the video has no randomness to vary).
        if "Video" not in env_id:
            c = _rollout(first, 18, actions)
            assert not all(data_equivalence(x, y) for x, y in zip(a[1], c[1]))
    finally:
        first.close()
        second.close()


def test_make_vec_gridworld():
    envs = gym.make_vec("WorldBagel/GridWorld-v0", num_envs=4)
    try:
        obs, info = envs.reset(seed=0)
        assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
        assert info["agent"].shape == (4,) and tuple(info["agent"][0]) == info["agent"][0]
        single = gym.make("WorldBagel/GridWorld-v0")
        for i in range(4):  # sub-env i is seeded with seed + i
            o, inf = single.reset(seed=i)
            assert np.array_equal(obs[i], o) and info["goal"][i] == inf["goal"]
        for _ in range(70):  # past max_steps: autoreset keeps going
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert obs.shape == (4, 64, 64, 3) and reward.shape == (4,)
        assert envs.call("optimal_action") and len(envs.get_attr("action_names")) == 4
    finally:
        envs.close()


def test_make_vec_miniworld_and_video(make, clip):
    try:
        make("WorldBagel/MiniWorld-OneRoom-v0").close()
    except pytest.skip.Exception:
        pass
    else:
        envs = gym.make_vec("WorldBagel/MiniWorld-OneRoom-v0", num_envs=2)
        obs, _ = envs.reset(seed=1)
        assert obs.shape == (2, 64, 64, 3) and not np.array_equal(obs[0], obs[1])
        envs.step(np.array([2, 0]))
        envs.close()
    videos = gym.make_vec("WorldBagel/Video-v0", num_envs=2, path=str(clip))
    obs, info = videos.reset(seed=0)
    assert obs.shape == (2, 32, 32, 3) and list(info["frame_index"]) == [0, 0]
    videos.close()


def test_make_env_rejects_unknown_ids():
    with pytest.raises(ConfigError, match="WorldBagel/GridWorld-v0"):
        make_env("GridWorld-v0")


def test_importing_envs_is_cheap():
    code = (
        "import json, sys, worldbagel.envs as e, gymnasium as gym;"
        "heavy = [m for m in ('torch', 'miniworld', 'pyglet', 'habitat', 'habitat_sim', 'imageio') if m in sys.modules];"
        "print(json.dumps([heavy, len(e.WORLD_BAGEL_IDS), 'WorldBagel/GridWorld-v0' in gym.registry]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, n_ids, registered = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [] and n_ids >= 9 and registered
