"""MiniWorld adapter (skips with the reason where OpenGL cannot render) and its floorplan geometry."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from worldbagel.envs.floorplan import Floorplan
from worldbagel.envs.miniworld_env import MiniWorldNavEnv
from worldbagel.errors import ConfigError, DependencyNotInstalled, InvalidAction


def _box(x0, x1, z0, z1):
    return [((x0, z0), (x1, z0)), ((x1, z0), (x1, z1)), ((x1, z1), (x0, z1)), ((x0, z1), (x0, z0))]


def test_floorplan_geodesic_goes_around_a_wall():
    # A 10 x 4 m room split at x=5 by a wall with a 1.2 m door at the top (z in [2.8, 4]).
    segs = np.array(_box(0, 10, 0, 4) + [((5, 0), (5, 2.8))], float)
    fp = Floorplan(segs, (0, 10, 0, 4), clearance=0.3, resolution=0.1)
    assert not fp.free[fp.cell((5.0, 1.0))] and fp.free[fp.cell((5.0, 3.4))]
    assert not fp.free[fp.cell((0.1, 2.0))], "cells closer than the clearance to a wall are blocked"
    goal = np.array([8.0, 0.5])
    field = fp.distance_field(goal)
    start = np.array([2.0, 0.5])
    # Shortest way: round the wall end (5, 2.8) keeping the 0.3 m clearance, i.e. through about (5, 3.1).
    via_door = math.dist(start, (5.0, 3.1)) + math.dist((5.0, 3.1), goal)
    taut = fp.path_length(start, goal)
    assert taut > math.dist(start, goal) + 1.0, "the wall forces a detour"
    assert taut == pytest.approx(via_door, rel=0.03)
    assert fp.distance(field, start) >= taut - 1e-6, "grid distance never under-estimates the taut path"
    assert fp.distance(field, start) <= 1.09 * taut
    wp = fp.waypoint(field, start)
    assert fp.line_free(start, wp) and np.linalg.norm(wp - start) > 0.5


def test_floorplan_cut_off_goal_is_infinite():
    segs = np.array(_box(0, 10, 0, 4) + [((5, 0), (5, 4))], float)
    fp = Floorplan(segs, (0, 10, 0, 4), clearance=0.3, resolution=0.2)
    field = fp.distance_field((8.0, 2.0))
    assert math.isinf(fp.distance(field, (2.0, 2.0))) and fp.waypoint(field, (2.0, 2.0)) is None
    assert math.isinf(fp.path_length((2.0, 2.0), (8.0, 2.0)))


@pytest.fixture
def make():
    def _make(**kwargs):
        try:
            return MiniWorldNavEnv(**kwargs)
        except DependencyNotInstalled as exc:
            pytest.skip(f"MiniWorld cannot render here: {exc}")

    return _make


def test_actions_are_named_with_the_real_step_sizes(make):
    env = make(task="OneRoom", obs_size=48)
    assert env.action_names == (
        "turn left 15 degrees",
        "turn right 15 degrees",
        "move forward 0.15 m",
        "stop",
    )
    obs, info = env.reset(seed=0)
    assert obs.shape == (48, 48, 3) and obs.dtype == np.uint8
    _, _, _, _, turned = env.step(0)
    dyaw = (turned["agent_yaw"] - info["agent_yaw"] + math.pi) % (2 * math.pi) - math.pi
    assert dyaw == pytest.approx(math.radians(15)) and turned["action_text"] == "turn left 15 degrees"
    before = np.array(turned["agent_pos"])
    _, _, _, _, moved = env.step(2)
    step = np.array(moved["agent_pos"]) - before
    if np.linalg.norm(step) > 0:  # not blocked by a wall
        assert np.linalg.norm(step) == pytest.approx(0.15)
        # Moving forward goes along agent_yaw in the (x, -z) frame.
        assert math.atan2(step[1], step[0]) == pytest.approx(moved["agent_yaw"], abs=1e-6)
    with pytest.raises(InvalidAction, match="move forward"):
        env.step(4)
    assert make(task="Hallway", stop_action=False).action_space.n == 3
    env.close()


def test_stop_ends_the_episode_without_success_when_far(make):
    env = make(task="Hallway")
    env.reset(seed=3)
    _, _, terminated, truncated, info = env.step(3)
    assert terminated and not truncated and info["action_text"] == "stop"
    assert info["success"] is False and info["spl"] == 0.0 and info["shortest_path_length"] > 0


def test_oracle_reaches_the_box_with_spl(make):
    env = make(task="FourRooms")
    for seed in (0, 1):
        _, info = env.reset(seed=seed)
        start = np.array(info["agent_pos"])
        for _ in range(env.max_steps):
            _, reward, terminated, truncated, info = env.step(env.optimal_action())
            if terminated or truncated:
                break
        assert terminated and info["success"] and reward > 0
        l, p = info["shortest_path_length"], info["path_length"]
        assert info["spl"] == pytest.approx(l / max(l, p)) and 0.6 < info["spl"] <= 1.0
        # FourRooms walls: the geodesic is at least the straight line to the success region.
        straight = np.linalg.norm(np.array(info["goal_pos"]) - start) - env.success_radius
        assert l >= straight - 1e-6


def test_truncation_and_options(make):
    env = make(task="OneRoom", max_steps=3)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(3)]
    assert flags == [False, False, True]
    with pytest.raises(ConfigError, match="options"):
        env.reset(options={"start": 1})
    with pytest.raises(ConfigError, match="task"):
        MiniWorldNavEnv(task="Sidewalk")


def test_train_and_eval_splits_draw_disjoint_world_seeds_and_scenes(make):
    from worldbagel.envs.miniworld_env import EVAL_WORLD_SEEDS, TRAIN_WORLD_SEEDS

    assert set(TRAIN_WORLD_SEEDS).isdisjoint(EVAL_WORLD_SEEDS)
    scenes = {}
    for split in ("train", "eval"):
        env = make(task="OneRoom", obs_size=32, split=split)
        seeds, frames, boxes = [], [], []
        for seed in range(6):  # the same episode seeds in both splits
            obs, info = env.reset(seed=seed)
            seeds.append(info["world_seed"])
            frames.append(obs)
            boxes.append(info["goal_pos"])
        assert all(s in (TRAIN_WORLD_SEEDS if split == "train" else EVAL_WORLD_SEEDS) for s in seeds)
        # deterministic: the same episode seed gives the same scene
        again, info = env.reset(seed=3)
        assert info["world_seed"] == seeds[3] and np.array_equal(again, frames[3])
        scenes[split] = (seeds, frames, boxes)
        env.close()
    (train_seeds, train_frames, train_boxes), (eval_seeds, eval_frames, eval_boxes) = (
        scenes["train"],
        scenes["eval"],
    )
    assert set(train_seeds).isdisjoint(eval_seeds)
    assert not any(np.array_equal(a, b) for a in train_frames for b in eval_frames)
    assert set(train_boxes).isdisjoint(eval_boxes)


def test_world_seed_option_pins_the_scene_inside_its_split(make):
    env = make(task="Hallway", obs_size=32, split="eval")
    first, info = env.reset(options={"world_seed": 1_000_123})
    assert info["world_seed"] == 1_000_123
    again, _ = env.reset(seed=99, options={"world_seed": 1_000_123})
    assert np.array_equal(first, again)
    with pytest.raises(
        ConfigError, match="world_seed.*split='eval' uses world seeds in \\[1000000, 2000000\\)"
    ):
        env.reset(options={"world_seed": 5})
    env.close()
    with pytest.raises(ConfigError, match="split"):
        make(task="Hallway", split="test")


def test_missing_miniworld_raises_with_install_commands(monkeypatch):
    import worldbagel.envs.miniworld_env as mod

    real_import = importlib.import_module

    def fail(name, *args):
        if name == "miniworld":
            raise ImportError("libGL.so.1: cannot open shared object file")
        return real_import(name, *args)

    monkeypatch.setattr(mod.importlib, "import_module", fail)
    with pytest.raises(DependencyNotInstalled, match="apt-get install -y xvfb .*PYGLET_HEADLESS=1"):
        MiniWorldNavEnv(task="Hallway")


def test_gl_context_failure_at_construction_is_a_dependency_error(make, monkeypatch):
    make(task="Hallway").close()  # skips where MiniWorld cannot render at all
    import pyglet.gl
    from miniworld.envs import Hallway

    def broken_init(self, *args, **kwargs):
        raise pyglet.gl.ContextException("cannot create a GL context")

    monkeypatch.setattr(Hallway, "__init__", broken_init)
    with pytest.raises(DependencyNotInstalled, match="cannot render .*libegl1"):
        MiniWorldNavEnv(task="Hallway")
