"""A small stand-in for habitat-lab (`habitat`) used to test HabitatNavEnv without habitat-sim.

It mimics the slice of habitat-lab's API the adapter uses: `get_config(path, overrides)` returning a
config with attribute access and `in`, `Env(config=...)` with `episodes`, `current_episode`, `seed`,
`reset`, `step({"action": name})`, `get_metrics`, `episode_over`, `sim.get_agent_state()` and `close`.
The world is a 10 m x 10 m empty square; the agent looks along -z like habitat agents do; measures
follow habitat-lab's definitions (success needs `stop` within success_distance; SPL and soft-SPL as
in habitat.tasks.nav.nav). Frames encode the pose so tests can see the agent move.
"""

from __future__ import annotations

import math
import sys
import types
from types import SimpleNamespace
from typing import Any

import numpy as np


class Node(dict):
    """A nested config: dict with attribute access (like an OmegaConf DictConfig)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def set_path(self, dotted: str, value: Any) -> None:
        node = self
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, Node())
        node[last] = value


BASE_MEASURES = ("distance_to_goal", "success", "spl", "distance_to_goal_reward")
KNOWN_CONFIGS = {
    "benchmark/nav/pointnav/pointnav_habitat_test.yaml": ("pointgoal_with_gps_compass", BASE_MEASURES),
    "benchmark/nav/imagenav/imagenav_test.yaml": ("imagegoal", BASE_MEASURES),
    "custom/pointnav_with_soft_spl.yaml": ("pointgoal_with_gps_compass", (*BASE_MEASURES, "soft_spl")),
}


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def get_config(config_path: str, overrides: list[str] | None = None) -> Node:
    if config_path not in KNOWN_CONFIGS:
        raise FileNotFoundError(f"fake habitat has no config {config_path!r}")
    goal_sensor, measures = KNOWN_CONFIGS[config_path]
    cfg = Node()
    defaults = {
        "habitat.simulator.turn_angle": 10,
        "habitat.simulator.forward_step_size": 0.25,
        "habitat.environment.max_episode_steps": 500,
        "habitat.dataset.data_path": "data/datasets/pointnav/habitat-test-scenes/v1/{split}/{split}.json.gz",
        "habitat.dataset.scenes_dir": "data/scene_datasets",
        "habitat.dataset.split": "train",
        "habitat.simulator.agents.main_agent.sim_sensors.rgb_sensor.width": 256,
        "habitat.simulator.agents.main_agent.sim_sensors.rgb_sensor.height": 256,
        "habitat.simulator.agents.main_agent.sim_sensors.depth_sensor.width": 256,
        "habitat.simulator.agents.main_agent.sim_sensors.depth_sensor.height": 256,
        "habitat.task.goal_sensor": goal_sensor,
    }
    for k, v in defaults.items():
        cfg.set_path(k, v)
    cfg.habitat.task["measurements"] = Node({m: Node() for m in measures})
    cfg.habitat.task.measurements.success["success_distance"] = 0.2
    for o in overrides or []:
        key, _, value = o.partition("=")
        if key.startswith("+habitat/task/measurements@"):
            target = key.split("@", 1)[1]
            name = target.rsplit(".", 1)[1]
            if name in cfg.habitat.task.measurements:
                raise ValueError(f"Could not append to config. An item is already at '{target}'.")
            cfg.habitat.task.measurements[name] = Node()
        else:
            cfg.set_path(key, _value(value))
    return cfg


class _Quat:
    def __init__(self, yaw: float):
        self.w, self.x, self.y, self.z = math.cos(yaw / 2), 0.0, math.sin(yaw / 2), 0.0


class _Sim:
    def __init__(self, env: Env):
        self._env = env

    def get_agent_state(self) -> SimpleNamespace:
        e = self._env
        return SimpleNamespace(position=e.pos.copy(), rotation=_Quat(e.yaw))


class Env:
    """Fake `habitat.Env`."""

    def __init__(self, config: Node):
        if "habitat" in config:
            config = config.habitat
        self.config = config
        sim = config.simulator
        self.turn = math.radians(float(sim.turn_angle))
        self.step_size = float(sim.forward_step_size)
        sensors = sim.agents.main_agent.sim_sensors
        self.rgb_hw = (int(sensors.rgb_sensor.height), int(sensors.rgb_sensor.width))
        self.depth_hw = (int(sensors.depth_sensor.height), int(sensors.depth_sensor.width))
        self.max_steps = int(config.environment.max_episode_steps)
        self.success_distance = float(config.task.measurements.success.success_distance)
        self.measures = tuple(config.task.measurements)
        self.goal_sensor = config.task.goal_sensor
        rng = np.random.default_rng(7)
        self.episodes = [
            SimpleNamespace(
                episode_id=str(i),
                scene_id="data/scene_datasets/habitat-test-scenes/fake.glb",
                start_position=[float(x), 0.0, float(z)],
                start_yaw=float(rng.uniform(-math.pi, math.pi)),
                goals=[SimpleNamespace(position=[float(gx), 0.0, float(gz)])],
            )
            for i, (x, z, gx, gz) in enumerate(rng.uniform(-3, 3, size=(6, 4)))
        ]
        self.current_episode = self.episodes[0]
        self.sim = _Sim(self)
        self.seeds: list[int] = []
        self.actions_taken: list[str] = []
        self.closed = False
        self.episode_over = True

    def seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def reset(self) -> dict[str, Any]:
        ep = self.current_episode
        self.pos = np.array(ep.start_position, float)
        self.yaw = ep.start_yaw
        self.goal = np.array(ep.goals[0].position, float)
        self.steps = 0
        self.walked = 0.0
        self.called_stop = False
        self.episode_over = False
        self.start_distance = self._distance()
        return self._observations()

    def step(self, action: dict[str, Any]) -> dict[str, Any]:
        assert not self.episode_over, "Episode over, call reset before calling step"
        name = action["action"]
        self.actions_taken.append(name)
        if name == "move_forward":
            fwd = np.array([-math.sin(self.yaw), 0.0, -math.cos(self.yaw)])
            new = np.clip(self.pos + self.step_size * fwd, -5.0, 5.0)
            self.walked += float(np.linalg.norm(new - self.pos))
            self.pos = new
        elif name == "turn_left":
            self.yaw += self.turn
        elif name == "turn_right":
            self.yaw -= self.turn
        elif name == "stop":
            self.called_stop = True
        else:
            raise ValueError(f"unknown action {name!r}")
        self.steps += 1
        self.episode_over = self.called_stop or self.steps >= self.max_steps
        return self._observations()

    def _distance(self) -> float:
        return float(np.linalg.norm((self.pos - self.goal)[[0, 2]]))

    def get_metrics(self) -> dict[str, float]:
        d = self._distance()
        success = float(self.called_stop and d < self.success_distance)
        l, p = self.start_distance, self.walked
        out = {"distance_to_goal": d, "success": success, "spl": success * l / max(p, l)}
        if "soft_spl" in self.measures:
            out["soft_spl"] = max(0.0, 1.0 - d / l) * l / max(l, p)
        return out

    def _observations(self) -> dict[str, Any]:
        h, w = self.rgb_hw
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., 0] = int(round((self.pos[0] + 5) * 25))
        rgba[..., 1] = int(round((self.pos[2] + 5) * 25))
        rgba[..., 2] = int(round((math.degrees(self.yaw) % 360) / 360 * 255))
        rgba[..., 3] = 255
        rgba[: h // 8, : w // 8, :3] = 255  # a corner marker so resizing is visible
        obs: dict[str, Any] = {"rgb": rgba}
        dh, dw = self.depth_hw
        obs["depth"] = np.full((dh, dw, 1), min(1.0, self._distance() / 10.0), np.float32)
        rel = (self.goal - self.pos)[[0, 2]]
        if self.goal_sensor == "pointgoal_with_gps_compass":
            phi = math.atan2(-rel[0], -rel[1]) - self.yaw
            obs["pointgoal_with_gps_compass"] = np.array([np.linalg.norm(rel), phi], np.float32)
        else:
            obs["imagegoal"] = np.full((h, w, 3), 128, np.uint8)
        return obs

    def close(self) -> None:
        self.closed = True


def install(monkeypatch: Any) -> types.ModuleType:
    """Put this fake in sys.modules as `habitat` for the duration of a test."""
    module = types.ModuleType("habitat")
    module.get_config = get_config
    module.Env = Env
    module.__fake__ = True
    monkeypatch.setitem(sys.modules, "habitat", module)
    return module
