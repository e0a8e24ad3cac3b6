"""Async vector envs of MiniWorld: `make_vec` starts workers with `spawn`; a forked worker fails fast with the fix.

MiniWorld's OpenGL context does not survive fork, and AsyncVectorEnv builds one env in the parent first, so a
forked worker used to hang on its first frame. Skips (with the reason) where MiniWorld cannot render.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from worldbagel.envs import make_env, make_vec
from worldbagel.errors import DependencyNotInstalled

ONEROOM = "WorldBagel/MiniWorld-OneRoom-v0"

FORKED = """
import gymnasium as gym
import worldbagel.envs
gym.make_vec("WorldBagel/MiniWorld-OneRoom-v0", num_envs=1, vectorization_mode="async",
             vector_kwargs={"context": "fork"})
"""


@pytest.fixture
def oneroom_frames():
    """The first frames of OneRoom for seeds 1 and 2 (single envs); skips where MiniWorld cannot render."""
    try:
        env = make_env(ONEROOM)
    except DependencyNotInstalled as exc:
        pytest.skip(f"MiniWorld cannot render here: {exc}")
    try:
        return [env.reset(seed=s)[0] for s in (1, 2)]
    finally:
        env.close()


def test_make_vec_starts_miniworld_async_workers_with_spawn(oneroom_frames):
    envs = make_vec(ONEROOM, num_envs=2, vectorization_mode="async")
    try:
        assert envs.context == "spawn"
        obs, _ = envs.reset(seed=1)  # sub-env i is seeded with 1 + i
        assert all(np.array_equal(obs[i], oneroom_frames[i]) for i in range(2))
        obs, *_ = envs.step(np.array([2, 2]))
        assert obs.shape == (2, 64, 64, 3)
        assert envs.get_attr("spec")[0].max_episode_steps == 180
    finally:
        envs.close()
    other = make_vec("WorldBagel/GridWorld-v0", num_envs=1, vectorization_mode="async")
    try:
        assert other.context is None  # only the OpenGL envs change gymnasium's default
    finally:
        other.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_miniworld_worker_fails_with_the_fix_instead_of_hanging(oneroom_frames):
    # its own session, so that a hung run and its forked worker are killed together
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("gymnasium.make_vec(MiniWorld, 'async') with fork hung")
    assert proc.returncode != 0
    assert "does not survive fork" in stderr and "vector_kwargs={'context': 'spawn'}" in stderr
