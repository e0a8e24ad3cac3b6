"""A small stand-in for habitat-lab (`habitat`) used to test HabitatNavEnv without habitat-sim.

It mimics the slice of habitat-lab's API the adapter uses: `get_config(path, overrides)` and
`Env(config=...)` with `episodes`, `current_episode`, `seed`, `reset`, `step({"action": name})`,
`get_metrics`, `episode_over`, `sim.get_agent_state()` and `close`.

Config: as strict as habitat-lab 0.3.x's own `get_config`. Overrides go through Hydra's real override
parser (`OverridesParser`) and value overrides are merged by Hydra's own override step into an
OmegaConf structured config whose dataclasses mirror habitat-lab's (`default_structured_configs.py`)
for every key the adapter sets: the same types (turn_angle and sensor sizes are ints), struct mode
(unknown keys are refused), read-only result. Config-group overrides
(`+habitat/task/measurements@habitat.task.measurements.NAME=NAME`) add a measure from a small group
of habitat's measure names; a group named twice or an unknown option fails as in Hydra.
tests/test_habitat_config_real.py checks that this fake accepts and refuses what habitat-lab does.

World: a 10 m x 10 m empty square; the agent looks along -z like habitat agents do; measures follow
habitat-lab's definitions (success needs `stop` within success_distance; SPL and soft-SPL as in
habitat.tasks.nav.nav). Frames encode the pose so tests can see the agent move.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf

# --- habitat-lab's structured configs, reduced to the keys the adapter and this fake use ----------


@dataclass
class EnvironmentConfig:
    max_episode_steps: int = 1000


@dataclass
class SimulatorSensorConfig:
    type: str = MISSING
    height: int = 480
    width: int = 640


@dataclass
class HabitatSimRGBSensorConfig(SimulatorSensorConfig):
    type: str = "HabitatSimRGBSensor"


@dataclass
class HabitatSimDepthSensorConfig(SimulatorSensorConfig):
    type: str = "HabitatSimDepthSensor"
    min_depth: float = 0.0
    max_depth: float = 10.0
    normalize_depth: bool = True


@dataclass
class AgentConfig:
    sim_sensors: dict[str, SimulatorSensorConfig] = field(default_factory=dict)


@dataclass
class SimulatorConfig:
    forward_step_size: float = 0.25
    turn_angle: int = 10
    agents: dict[str, AgentConfig] = field(default_factory=dict)


@dataclass
class MeasurementConfig:
    type: str = MISSING


@dataclass
class SuccessMeasurementConfig(MeasurementConfig):
    type: str = "Success"
    success_distance: float = 0.2


@dataclass
class LabSensorConfig:
    type: str = MISSING


@dataclass
class TaskConfig:
    type: str = "Nav-v0"
    lab_sensors: dict[str, LabSensorConfig] = field(default_factory=dict)
    measurements: dict[str, MeasurementConfig] = field(default_factory=dict)


@dataclass
class DatasetConfig:
    type: str = "PointNav-v1"
    split: str = "train"
    scenes_dir: str = "data/scene_datasets"
    data_path: str = "data/datasets/pointnav/habitat-test-scenes/v1/{split}/{split}.json.gz"


@dataclass
class HabitatConfig:
    seed: int = 100
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)


@dataclass
class Root:
    habitat: HabitatConfig = field(default_factory=HabitatConfig)


MEASUREMENT_GROUP = {
    "distance_to_goal": lambda: MeasurementConfig(type="DistanceToGoal"),
    "success": SuccessMeasurementConfig,
    "spl": lambda: MeasurementConfig(type="SPL"),
    "soft_spl": lambda: MeasurementConfig(type="SoftSPL"),
    "distance_to_goal_reward": lambda: MeasurementConfig(type="DistanceToGoalReward"),
}
"""habitat-lab's `habitat/task/measurements` config group (the navigation measures)."""

BASE_MEASURES = ("distance_to_goal", "success", "spl", "distance_to_goal_reward")
KNOWN_CONFIGS = {
    "benchmark/nav/pointnav/pointnav_habitat_test.yaml": (
        {"pointgoal_with_gps_compass_sensor": "PointGoalWithGPSCompassSensor"},
        BASE_MEASURES,
        500,
    ),
    "benchmark/nav/imagenav/imagenav_test.yaml": (
        {"imagegoal_sensor": "ImageGoalSensor"},
        BASE_MEASURES,
        1000,
    ),
    "custom/pointnav_with_soft_spl.yaml": (
        {"pointgoal_with_gps_compass_sensor": "PointGoalWithGPSCompassSensor"},
        (*BASE_MEASURES, "soft_spl"),
        500,
    ),
}
"""Config path -> (lab sensors, measures, max_episode_steps), as habitat-lab's yaml files set them."""

_PARSER = OverridesParser.create()


def _base_config(config_path: str) -> DictConfig:
    lab_sensors, measures, max_steps = KNOWN_CONFIGS[config_path]
    rgbd_agent = AgentConfig(
        sim_sensors={
            "rgb_sensor": HabitatSimRGBSensorConfig(width=256, height=256),
            "depth_sensor": HabitatSimDepthSensorConfig(width=256, height=256),
        }
    )
    habitat = HabitatConfig(
        environment=EnvironmentConfig(max_episode_steps=max_steps),
        simulator=SimulatorConfig(agents={"main_agent": rgbd_agent}),
        task=TaskConfig(
            lab_sensors={name: LabSensorConfig(type=kind) for name, kind in lab_sensors.items()},
            measurements={m: MEASUREMENT_GROUP[m]() for m in measures},
        ),
    )
    cfg = OmegaConf.structured(Root(habitat=habitat))
    OmegaConf.set_struct(cfg, True)
    return cfg


def get_config(config_path: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose like habitat-lab: group overrides first (Hydra's defaults list), then value overrides."""
    if config_path not in KNOWN_CONFIGS:
        raise RuntimeError(f"No file found for config '{config_path}'")  # habitat-lab's message
    cfg = _base_config(config_path)
    parsed = _PARSER.parse_overrides(list(overrides or []))
    groups = [o for o in parsed if "/" in o.key_or_group]
    values = [o for o in parsed if "/" not in o.key_or_group]
    added: set[str] = set()
    for o in groups:
        where = f"{o.key_or_group}@{o.package}"
        if o.key_or_group != "habitat/task/measurements" or not o.is_add() or not o.package:
            raise ConfigCompositionException(f"fake habitat has no config group override like {o.input_line}")
        if where in added:
            raise ConfigCompositionException(f"{where} appears more than once in the final defaults list")
        added.add(where)
        name = o.value()
        if name not in MEASUREMENT_GROUP:
            raise MissingConfigException(
                f"Could not find '{o.key_or_group}/{name}'", missing_cfg_file=f"{o.key_or_group}/{name}"
            )
        OmegaConf.update(
            cfg, o.package, OmegaConf.structured(MEASUREMENT_GROUP[name]()), merge=True, force_add=True
        )
    # Hydra's own value-override step (what habitat-lab's compose runs): same merge, same type checks.
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    OmegaConf.set_readonly(cfg, True)  # habitat-lab's patch_config leaves the config read-only
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

    def __init__(self, config: DictConfig):
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
        self.goal_sensor = (
            "pointgoal_with_gps_compass"
            if "pointgoal_with_gps_compass_sensor" in config.task.lab_sensors
            else "imagegoal"
        )
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
