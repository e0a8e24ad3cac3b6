"""Registered episode limits: `spec.max_episode_steps` equals each env's own limit, and make_env / make_vec keep
gymnasium's TimeLimit in step with `max_steps`. (check_env over every id runs in test_envs_registry.py and, for
Imagined-v0, here.)"""

from __future__ import annotations

import inspect
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from worldbagel.actions import DiscreteActionCodec
from worldbagel.envs import WORLD_BAGEL_IDS, make_env, make_vec
from worldbagel.envs.habitat_env import HabitatNavEnv
from worldbagel.errors import DependencyNotInstalled
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.rollout import build_env
from worldbagel.world_model import WorldModel, WorldModelConfig

GRID = "WorldBagel/GridWorld-v0"
IMAGINED = "WorldBagel/Imagined-v0"
CORNER = {"layout_seed": 3, "agent": (0, 0), "goal": (7, 7), "heading": 0}
"""Top-left start: 'move up' (0) hits the outer wall, so the episode only ends at its step limit."""


@pytest.mark.parametrize("env_id", [*WORLD_BAGEL_IDS, IMAGINED])
def test_every_id_registers_the_envs_own_episode_limit(env_id):
    limit = gym.spec(env_id).max_episode_steps
    if env_id == "WorldBagel/Video-v0":
        assert limit is None  # a clip ends with its last frame (or at max_steps when given): no fixed limit
        return
    assert isinstance(limit, int) and limit > 0
    if "Habitat" in env_id:  # habitat-sim is conda-only, so the env is not built here: its default max_steps
        assert limit == inspect.signature(HabitatNavEnv).parameters["max_steps"].default
        return
    if env_id == IMAGINED:  # building it loads the shipped model (seconds): its default max_steps
        from worldbagel.imagined_env import ImaginedEnv

        assert limit == inspect.signature(ImaginedEnv).parameters["max_steps"].default
        return
    try:
        env = make_env(env_id)
    except DependencyNotInstalled as exc:
        pytest.skip(f"{env_id} cannot run here: {exc}")
    try:
        assert env.unwrapped.max_steps == limit == env.spec.max_episode_steps
    finally:
        env.close()


def _steps_to_truncation(env) -> int:
    env.reset(seed=0, options=CORNER)
    for t in range(1, 1000):
        _, _, terminated, truncated, _ = env.step(0)
        assert not terminated
        if truncated:
            return t
    raise AssertionError("never truncated")


def test_make_env_keeps_the_time_limit_in_step_with_max_steps():
    longer = make_env(GRID, max_steps=100)  # above the registered 64: the TimeLimit must follow
    assert longer.spec.max_episode_steps == 100 and _steps_to_truncation(longer) == 100
    shorter = make_env(GRID, max_episode_steps=10)  # gymnasium's name: the env's own limit follows
    assert shorter.unwrapped.max_steps == 10 and _steps_to_truncation(shorter) == 10
    assert _steps_to_truncation(make_env(GRID)) == 64
    # the CLI's env builder (`worldbagel rollout env.kwargs.max_steps=100`) too
    assert _steps_to_truncation(build_env(GRID, {"max_steps": 100})) == 100
    envs = make_vec(GRID, num_envs=2, max_steps=100)
    try:
        assert [e.spec.max_episode_steps for e in envs.envs] == [100, 100]
        assert envs.get_attr("max_steps") == (100, 100)
    finally:
        envs.close()


def test_imagined_id_passes_check_env(tiny_pipe):
    sampler = SamplerConfig(num_steps=3, cfg_text_scale=2.0, cfg_img_scale=1.0, cfg_renorm_type="global")
    codec = DiscreteActionCodec(["move up", "move right", "move down", "move left"])
    wm = WorldModel(tiny_pipe, codec, WorldModelConfig(sampler=sampler, use_vit=False, reencode="latents"))
    env = make_env(IMAGINED, world_model=wm, max_steps=3)
    try:
        assert env.spec.max_episode_steps == 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()
