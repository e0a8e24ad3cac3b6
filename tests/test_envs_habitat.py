"""Habitat adapter: logic against tests/fake_habitat.py; the real thing when habitat-lab + data exist."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from pathlib import Path

import fake_habitat
import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from worldbagel import cli, cli_compose
from worldbagel.envs.habitat_env import SOFT_SPL_OVERRIDE, HabitatNavEnv, _yaw_of, hydra_quoted
from worldbagel.errors import ConfigError, DependencyNotInstalled, InvalidAction, WorldBagelError
from worldbagel.rollout import build_env


@pytest.fixture
def fake(monkeypatch):
    return fake_habitat.install(monkeypatch)


def test_missing_habitat_names_the_conda_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "habitat", None)  # makes `import habitat` raise ImportError
    with pytest.raises(DependencyNotInstalled) as err:
        HabitatNavEnv()
    text = str(err.value)
    assert "conda install habitat-sim withbullet headless -c conda-forge -c aihabitat-nightly" in text
    assert 'pip install "habitat-lab==0.3.320260507"' in text and "datasets_download" in text


def test_config_carries_paths_sizes_and_step_sizes(fake):
    env = HabitatNavEnv(
        data_path="data/pn/{split}.json.gz",
        scenes_dir="data/scenes",
        split="val",
        obs_size=48,
        turn_angle=45,
        forward_step=0.5,
        success_distance=0.3,
        max_steps=7,
        overrides=["habitat.simulator.forward_step_size=0.4"],
    )
    cfg = env.config.habitat
    assert cfg.dataset.data_path == "data/pn/{split}.json.gz"
    assert cfg.dataset.scenes_dir == "data/scenes" and cfg.dataset.split == "val"
    assert cfg.simulator.turn_angle == 45 and cfg.environment.max_episode_steps == 7
    assert cfg.simulator.forward_step_size == 0.4, "user overrides come last and win"
    assert cfg.task.measurements.success.success_distance == 0.3
    assert cfg.simulator.agents.main_agent.sim_sensors.rgb_sensor.width == 48
    assert "soft_spl" in cfg.task.measurements and SOFT_SPL_OVERRIDE in env.overrides
    assert env.action_names == ("stop", "move forward 0.5 m", "turn left 45 degrees", "turn right 45 degrees")
    # A config that already measures soft-SPL is not given the measure twice.
    env2 = HabitatNavEnv(config_path="custom/pointnav_with_soft_spl.yaml")
    assert SOFT_SPL_OVERRIDE not in env2.overrides


def test_actions_map_to_habitat_names_and_move_the_agent(fake):
    env = HabitatNavEnv(turn_angle=30)
    _, info = env.reset(seed=0)
    hab = env.habitat_env
    _, _, _, _, info1 = env.step(1)
    assert hab.actions_taken == ["move_forward"] and info1["action_text"] == "move forward 0.25 m"
    moved = math.dist(info["agent_pos"], info1["agent_pos"])
    assert moved == pytest.approx(0.25)
    # Forward moves along agent_yaw (counter-clockwise, (x, -z) frame).
    dx, dy = np.subtract(info1["agent_pos"], info["agent_pos"])
    assert math.atan2(dy, dx) == pytest.approx(info["agent_yaw"], abs=1e-9)
    _, _, _, _, info2 = env.step(2)
    assert (info2["agent_yaw"] - info1["agent_yaw"]) % (2 * math.pi) == pytest.approx(math.radians(30))
    env.step(3)
    assert hab.actions_taken == ["move_forward", "turn_left", "turn_right"]
    with pytest.raises(InvalidAction, match="turn left 30 degrees"):
        env.step(7)


def test_observations_become_uint8_hwc_at_obs_size(fake):
    env = HabitatNavEnv(obs_size=32)
    obs, info = env.reset(seed=1)
    assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8  # from a 256x256 RGBA sensor
    assert (obs[:2, :2] == 255).all() and not (obs[-2:, -2:] == 255).all(), (
        "the resized frame keeps its layout"
    )
    assert info["pointgoal"][0] == pytest.approx(info["distance_to_goal"], rel=1e-5)
    deep = HabitatNavEnv(obs_size=32, depth=True)
    obs, _ = deep.reset(seed=1)
    assert (
        set(obs) == {"rgb", "depth"} and obs["depth"].shape == (32, 32, 1) and obs["depth"].dtype == np.uint8
    )
    expected = round(min(1.0, deep.habitat_env.get_metrics()["distance_to_goal"] / 10) * 255)
    assert abs(int(obs["depth"][0, 0, 0]) - expected) <= 1
    assert deep.observation_space.contains(obs)
    image_nav = HabitatNavEnv(task="imagenav", obs_size=32)
    _, info = image_nav.reset(seed=1)
    assert info["goal_image"].shape == (32, 32, 3) and "pointgoal" not in info


def _walk_to_goal(env, info):
    """Turn toward the goal, walk, then stop (the fake world has no obstacles)."""
    for _ in range(400):
        goal = np.subtract(info["goal_pos"], info["agent_pos"])
        if np.linalg.norm(goal) < 0.15:
            action = 0
        else:
            err = (math.atan2(goal[1], goal[0]) - info["agent_yaw"] + math.pi) % (2 * math.pi) - math.pi
            action = 2 if err > math.radians(5) else 3 if err < -math.radians(5) else 1
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return reward, terminated, truncated, info
    raise AssertionError("did not finish")


def test_metrics_come_from_habitat_measures(fake):
    env = HabitatNavEnv(turn_angle=5, forward_step=0.05, max_steps=400, success_distance=0.2)
    _, info = env.reset(seed=2)
    start = info["distance_to_goal"]
    assert info["success"] is False and info["spl"] == 0.0 and info["soft_spl"] == 0.0
    reward, terminated, truncated, info = _walk_to_goal(env, info)
    metrics = env.habitat_env.get_metrics()
    assert terminated and not truncated and info["success"] is True and info["action_text"] == "stop"
    for key in ("distance_to_goal", "spl", "soft_spl"):
        assert info[key] == pytest.approx(metrics[key])
    assert 0.8 < info["spl"] <= 1.0 and info["soft_spl"] > 0.8
    assert reward == pytest.approx(2.5 - 0.01)  # stop: no distance change, success bonus, slack
    with pytest.raises(WorldBagelError, match="reset"):
        env.step(1)
    assert start > 0


def test_truncation_at_max_steps_and_stop_far_away(fake):
    env = HabitatNavEnv(max_steps=3)
    env.reset(seed=0)
    flags = [env.step(2)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and info["success"] is False and info["spl"] == 0.0


def test_episode_selection(fake):
    env = HabitatNavEnv(episode_order="sequential")
    ids = [env.reset(seed=8)[1]["episode_id"]] + [env.reset()[1]["episode_id"] for _ in range(3)]
    assert ids == ["2", "3", "4", "5"]  # 8 % 6 episodes = 2, then in order
    assert env.habitat_env.seeds == [8]
    assert env.reset(options={"episode_id": "4"})[1]["episode_id"] == "4"
    with pytest.raises(ConfigError, match="episode_id"):
        env.reset(options={"episode_id": "nope"})
    rand = HabitatNavEnv()
    assert rand.reset(seed=5)[1]["episode_id"] == rand.reset(seed=5)[1]["episode_id"]


def test_bad_arguments(fake):
    with pytest.raises(ConfigError, match="task"):
        HabitatNavEnv(task="objectnav")
    with pytest.raises(ConfigError, match="overrides"):
        HabitatNavEnv(overrides="habitat.seed=1")
    with pytest.raises(ConfigError, match="episode_order"):
        HabitatNavEnv(episode_order="shuffled")


def test_turn_angle_takes_whole_degrees(fake):
    env = HabitatNavEnv(turn_angle=45.0)  # a whole float (yaml, CLI) becomes habitat-lab's int
    assert env.config.habitat.simulator.turn_angle == 45 and env.turn_angle == 45
    assert "habitat.simulator.turn_angle=45" in env.overrides
    assert env.action_names[2] == "turn left 45 degrees"
    for bad in (22.5, "30", True, 0, -15, float("nan")):
        with pytest.raises(ConfigError, match="turn_angle") as err:
            HabitatNavEnv(turn_angle=bad)
        assert f"turn_angle={bad!r}" in str(err.value) and "whole number" in str(err.value)


def test_paths_reach_habitat_verbatim_through_its_override_grammar(fake):
    awkward = "data/my runs/it's, a=b:[c]/${HOME}/\\${x}/{split}/{split}.json.gz\\"
    env = HabitatNavEnv(data_path=awkward, scenes_dir="scenes/${x} y", split="val,test")
    dataset = env.config.habitat.dataset
    assert (dataset.data_path, dataset.scenes_dir, dataset.split) == (awkward, "scenes/${x} y", "val,test")
    for value in (awkward, "a'b", "${x}", "\\${x}", "x\\", "", "{split}"):
        parsed = OverridesParser.create().parse_override(f"k={hydra_quoted(value)}").value()
        cfg = OmegaConf.create({"k": parsed})
        assert cfg.k == value, f"{value!r} -> {hydra_quoted(value)!r} -> {cfg.k!r}"


def test_fake_habitat_is_as_strict_as_habitat_lab(fake):
    # The refusals habitat-lab 0.3.x gives (checked against the real package in test_habitat_config_real.py).
    path = "benchmark/nav/pointnav/pointnav_habitat_test.yaml"
    with pytest.raises(OverrideParseException, match="mismatched input"):
        fake.get_config(path, ["habitat.dataset.data_path=data/{split}/{split}.json.gz"])
    with pytest.raises(ConfigCompositionException, match="turn_angle=22.5") as err:
        fake.get_config(path, ["habitat.simulator.turn_angle=22.5"])
    assert "could not be converted to Integer" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException, match="Could not override 'habitat.nokey'"):
        fake.get_config(path, ["habitat.nokey=1"])
    cfg = fake.get_config(path, ["habitat.simulator.forward_step_size=1"])
    assert cfg.habitat.simulator.forward_step_size == 1.0 and isinstance(
        cfg.habitat.simulator.forward_step_size, float
    )
    with pytest.raises(ReadonlyConfigError):
        cfg.habitat.simulator.turn_angle = 5


def test_habitat_refusals_become_one_config_error(fake):
    with pytest.raises(ConfigError, match="could not compose") as err:
        HabitatNavEnv(overrides=["habitat.simulator.turn_angle=22.5"])
    text = str(err.value)
    assert "habitat.simulator.turn_angle=22.5" in text and "could not be converted to Integer" in text
    with pytest.raises(ConfigError, match="No file found for config 'nope.yaml'"):
        HabitatNavEnv(config_path="nope.yaml")


def _doc_blocks(language: str) -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "habitat.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_docs_commands_parse_and_build_the_env(fake):
    """Each `worldbagel` command of docs/habitat.md, split as bash splits it, goes through the CLI's own
    argument parsing and config composition, and its env kwargs build the env (on the fake)."""
    commands = [
        shlex.split(line, comments=True)
        for block in _doc_blocks("bash")
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("worldbagel ")
    ]
    ids = []
    for argv in commands:
        args = cli._parser().parse_intermixed_args(argv[1:])
        _, cfg = cli_compose.compose_config(args.command, args.overrides)
        env = build_env(cfg.env.id, cfg.env.kwargs).unwrapped
        dataset = env.config.habitat.dataset
        assert dataset.data_path == "data/datasets/pointnav/habitat-test-scenes/v1/{split}/{split}.json.gz", (
            argv
        )
        assert (dataset.scenes_dir, dataset.split) == ("data/scene_datasets", "val"), argv
        env.reset(seed=0)
        ids.append(cfg.env.id)
    assert sorted(ids) == ["WorldBagel/Habitat-ImageNav-v0", "WorldBagel/Habitat-PointNav-v0"]


def test_docs_python_example_runs(fake):
    (block,) = [b for b in _doc_blocks("python") if "make_env" in b]
    namespace: dict = {}
    exec(compile(block, "docs/habitat.md", "exec"), namespace)
    assert namespace["obs"].shape == (64, 64, 3) and namespace["info"]["action_text"] == "move forward 0.25 m"


def test_yaw_of_quaternions():
    for yaw in np.linspace(-3, 3, 7):
        q = (0.0, math.sin(yaw / 2), 0.0, math.cos(yaw / 2))  # (x, y, z, w), rotation about +y
        # Habitat looks along -z; in the (x, -z) frame that direction is +90 degrees.
        expected = (yaw + math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
        assert (_yaw_of(q) - expected + math.pi) % (2 * math.pi) - math.pi == pytest.approx(0, abs=1e-9)


def test_real_habitat_pointnav_when_installed():
    pytest.importorskip("habitat_sim", reason="habitat-sim is conda-only (see docs/habitat.md)")
    habitat = pytest.importorskip("habitat", reason="habitat-lab is not installed")
    if getattr(habitat, "__fake__", False):
        pytest.skip("the fake habitat module is installed")
    data = Path(os.environ.get("WORLDBAGEL_HABITAT_DATA", "data"))
    if not (data / "scene_datasets" / "habitat-test-scenes").is_dir():
        pytest.skip(f"habitat test scenes not found under {data} (set WORLDBAGEL_HABITAT_DATA)")
    env = HabitatNavEnv(
        data_path=str(data / "datasets/pointnav/habitat-test-scenes/v1/{split}/{split}.json.gz"),
        scenes_dir=str(data / "scene_datasets"),
        obs_size=64,
    )
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        for key in ("distance_to_goal", "success", "spl", "soft_spl"):
            assert key in info
        _, _, terminated, _, info = env.step(0)
        assert terminated and "spl" in info
    finally:
        env.close()
