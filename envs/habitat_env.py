"""HabitatNavEnv: habitat-lab PointNav / ImageNav episodes behind the Gymnasium 1.x API.

Shape legend: S = obs_size; rgb (S, S, 3) uint8; depth (S, S, 1) uint8 (habitat's normalised depth
in [0, 1] scaled to 0..255); goal_image (S, S, 3) uint8.

habitat-sim ships through conda only, and habitat-lab imports it: both are imported lazily, when an
env is built, and a missing install raises DependencyNotInstalled with the commands of
docs/habitat.md.

Actions: 0 stop, 1 move forward `forward_step` m (0.25), 2 turn left `turn_angle` degrees (30, whole
degrees: habitat-lab types it as an int), 3 turn right: habitat-lab's own navigation actions, in its
own order. `stop` ends the episode; it is a success when habitat's `success` measure says so
(distance to goal < success_distance).

Observations: the RGB frame (Box) or, with depth=True, a Dict {"rgb", "depth"}.
`info` (reset and every step) carries habitat-lab's own measures: distance_to_goal, success, spl,
soft_spl (added to the task config when missing), plus episode_id, scene_id, steps, action_text,
agent_pos / goal_pos ((x, -z) metres) and agent_yaw (radians, counter-clockwise), and the goal:
`pointgoal` (rho, phi) for PointNav, `goal_image` for ImageNav.
Reward: decrease of distance_to_goal - 0.01 per step, + 2.5 on success (habitat-baselines' defaults).

Episodes: `episode_order="random"` draws each episode from the env's seeded generator;
"sequential" walks the dataset in order, starting at episode `seed % n` when a seed is given.
`options={"episode_id": ...}` picks one episode by id.

Config: the env's settings become habitat-lab config overrides, composed by habitat-lab's own
`get_config` (Hydra). Strings (paths, split) are single-quoted in Hydra's override grammar, so paths
with `{split}`, spaces, commas, quotes or `${` arrive verbatim; numbers carry habitat-lab's types.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from worldbagel.errors import (
    ConfigError,
    DependencyNotInstalled,
    InvalidAction,
    WorldBagelError,
    bad_argument,
)

from .wrappers import resize_image

HABITAT_ACTIONS = ("stop", "move_forward", "turn_left", "turn_right")
"""habitat-lab task action names, in action-id order."""

TASK_CONFIGS = {
    "pointnav": "benchmark/nav/pointnav/pointnav_habitat_test.yaml",
    "imagenav": "benchmark/nav/imagenav/imagenav_test.yaml",
}
"""Default habitat-lab benchmark config per task (the small habitat-test-scenes data)."""

SOFT_SPL_OVERRIDE = "+habitat/task/measurements@habitat.task.measurements.soft_spl=soft_spl"
_SENSORS = "habitat.simulator.agents.main_agent.sim_sensors"

HABITAT_LAB_REQUIREMENT = "habitat-lab==0.3.320260507"
"""The habitat-lab build pyproject's `habitat` extra pins: earlier 0.3.x builds fail at import on
Python >= 3.11 (dataclass defaults in habitat/config/default_structured_configs.py)."""

INSTALL_COMMANDS = (
    "conda install habitat-sim withbullet headless -c conda-forge -c aihabitat-nightly"
    "   # Python 3.10/3.11 builds; desktop: drop headless\n"
    f'pip install "{HABITAT_LAB_REQUIREMENT}"\n'
    "python -m habitat_sim.utils.datasets_download --uids habitat_test_scenes habitat_test_pointnav_dataset "
    "--data-path data/"
)


def import_habitat() -> Any:
    """Import habitat-lab (which needs habitat-sim) or raise DependencyNotInstalled with install commands."""
    try:
        return importlib.import_module("habitat")
    except ImportError as exc:
        raise DependencyNotInstalled(
            f"Habitat is not importable ({exc}). habitat-sim comes from conda only; install both, then "
            f"download scenes and episodes (details: docs/habitat.md):\n{INSTALL_COMMANDS}"
        ) from exc


def hydra_quoted(text: str) -> str:
    """`text` as a single-quoted value of Hydra's override grammar that habitat-lab reads back verbatim.

    Two layers read the value: Hydra's parser (inside '...', a quote is written \\' and backslashes
    just before a quote are doubled) and then OmegaConf, which would resolve `${...}` as an
    interpolation (escaped as \\${, with backslashes just before it doubled).
    """
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def _whole_degrees(turn_angle: Any) -> int:
    """turn_angle as the int habitat-lab's SimulatorConfig.turn_angle takes, or one clear ConfigError."""
    if (
        isinstance(turn_angle, bool)
        or not isinstance(turn_angle, numbers.Real)
        or not float(turn_angle).is_integer()
        or turn_angle <= 0
    ):
        raise bad_argument(
            "turn_angle",
            turn_angle,
            "habitat-lab turns by whole degrees (its SimulatorConfig.turn_angle is an int): use a "
            "positive whole number, e.g. turn_angle=22 or 23 (env.kwargs.turn_angle=22 on the command line)",
        )
    return int(turn_angle)


def _yaw_of(rotation: Any) -> float:
    """Counter-clockwise yaw in the (x, -z) frame of a habitat agent rotation (quaternion).

    Accepts numpy-quaternion style objects (w, x, y, z attributes) or a sequence (x, y, z, w) as
    habitat stores coefficients. Habitat agents look along -z.
    """
    if all(hasattr(rotation, k) for k in ("w", "x", "y", "z")):
        w, x, y, z = (float(getattr(rotation, k)) for k in ("w", "x", "y", "z"))
    else:
        x, y, z, w = (float(v) for v in rotation)
    q = np.array([x, y, z])
    v = np.array([0.0, 0.0, -1.0])
    t = 2.0 * np.cross(q, v)
    fwd = v + w * t + np.cross(q, t)  # forward vector rotated by the quaternion
    return math.atan2(-fwd[2], fwd[0])


class HabitatNavEnv(gym.Env):
    """PointNav / ImageNav in habitat-lab with uint8 frames and habitat's success / SPL / soft-SPL."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str = "pointnav",
        config_path: str | None = None,
        data_path: str | None = None,
        scenes_dir: str | None = None,
        split: str | None = None,
        obs_size: int = 64,
        depth: bool = False,
        turn_angle: int = 30,
        forward_step: float = 0.25,
        success_distance: float = 0.2,
        max_steps: int = 500,
        episode_order: str = "random",
        overrides: Sequence[str] = (),
        slack_reward: float = 0.01,
        success_reward: float = 2.5,
        render_mode: str | None = None,
    ) -> None:
        if task not in TASK_CONFIGS:
            raise bad_argument("task", task, f"choose one of {tuple(TASK_CONFIGS)}")
        if not isinstance(obs_size, int) or obs_size < 8:
            raise bad_argument("obs_size", obs_size, "use an int >= 8 (pixels per frame side)")
        turn_angle = _whole_degrees(turn_angle)
        if not (forward_step > 0 and success_distance > 0):
            raise bad_argument(
                "forward_step/success_distance",
                (forward_step, success_distance),
                "both must be positive",
            )
        if not isinstance(max_steps, int) or max_steps < 1:
            raise bad_argument("max_steps", max_steps, "use an int >= 1")
        if episode_order not in ("random", "sequential"):
            raise bad_argument("episode_order", episode_order, "use 'random' or 'sequential'")
        if isinstance(overrides, str):
            raise bad_argument(
                "overrides", overrides, "pass a list of habitat override strings, not one string"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise bad_argument("render_mode", render_mode, "use 'rgb_array' or None")
        self.task = task
        self.obs_size = obs_size
        self.depth = bool(depth)
        self.turn_angle = turn_angle
        self.forward_step = float(forward_step)
        self.max_steps = max_steps
        self.episode_order = episode_order
        self.slack_reward = float(slack_reward)
        self.success_reward = float(success_reward)
        self.render_mode = render_mode
        self.config_path = config_path or TASK_CONFIGS[task]
        self.overrides = self.build_overrides(
            data_path=data_path,
            scenes_dir=scenes_dir,
            split=split,
            success_distance=success_distance,
            extra=overrides,
        )

        habitat = import_habitat()
        config = self._compose(habitat)
        if "soft_spl" not in config.habitat.task.measurements:
            self.overrides.append(SOFT_SPL_OVERRIDE)
            config = self._compose(habitat)
        self.config = config
        self.habitat_env = habitat.Env(config=config)
        self.episodes = list(self.habitat_env.episodes)
        if not self.episodes:
            raise bad_argument("data_path", data_path, "the episode dataset holds no episodes")

        self.action_names: tuple[str, ...] = (
            "stop",
            f"move forward {self.forward_step:g} m",
            f"turn left {self.turn_angle:g} degrees",
            f"turn right {self.turn_angle:g} degrees",
        )
        self.action_space = spaces.Discrete(len(HABITAT_ACTIONS))
        rgb = spaces.Box(0, 255, (obs_size, obs_size, 3), np.uint8)
        if self.depth:
            self.observation_space = spaces.Dict(
                {"rgb": rgb, "depth": spaces.Box(0, 255, (obs_size, obs_size, 1), np.uint8)}
            )
        else:
            self.observation_space = rgb
        self._next_index = 0
        self._frame: np.ndarray | None = None
        self._distance = 0.0
        self._steps = 0

    # ----------------------------------------------------------------------------------------
    def build_overrides(
        self,
        data_path: str | None,
        scenes_dir: str | None,
        split: str | None,
        success_distance: float,
        extra: Sequence[str],
    ) -> list[str]:
        """habitat-lab config overrides for this env's settings (extra ones last, so they win).

        Each value is written in Hydra's override grammar with habitat-lab's type: ints for
        turn_angle, max_episode_steps and sensor sizes, float literals for step size and success
        distance, single-quoted strings (`hydra_quoted`) for paths and the split.
        """
        s = self.obs_size
        out = [
            f"habitat.simulator.turn_angle={self.turn_angle:d}",
            f"habitat.simulator.forward_step_size={float(self.forward_step)!r}",
            f"habitat.environment.max_episode_steps={self.max_steps:d}",
            f"habitat.task.measurements.success.success_distance={float(success_distance)!r}",
            f"{_SENSORS}.rgb_sensor.width={s:d}",
            f"{_SENSORS}.rgb_sensor.height={s:d}",
        ]
        if self.depth:
            out += [f"{_SENSORS}.depth_sensor.width={s:d}", f"{_SENSORS}.depth_sensor.height={s:d}"]
        if data_path:
            out.append(f"habitat.dataset.data_path={hydra_quoted(str(data_path))}")
        if scenes_dir:
            out.append(f"habitat.dataset.scenes_dir={hydra_quoted(str(scenes_dir))}")
        if split:
            out.append(f"habitat.dataset.split={hydra_quoted(str(split))}")
        return out + [str(o) for o in extra]

    def _compose(self, habitat: Any) -> Any:
        """habitat-lab's config for `config_path` + `overrides`; its refusals become one ConfigError."""
        try:
            return habitat.get_config(self.config_path, overrides=list(self.overrides))
        except (HydraException, OmegaConfBaseException, RuntimeError) as exc:
            cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
            raise ConfigError(
                f"habitat-lab could not compose config_path={self.config_path!r} with overrides "
                f"{self.overrides}: {type(exc).__name__}: {exc}{cause}. Fix the env argument or "
                "`overrides` entry it names: habitat-lab's override grammar and types apply "
                "(docs/habitat.md)"
            ) from exc

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        episode_id = options.pop("episode_id", None)
        if options:
            raise bad_argument("options", options, "HabitatNavEnv takes only options={'episode_id': ...}")
        n = len(self.episodes)
        if episode_id is not None:
            ids = [str(e.episode_id) for e in self.episodes]
            if str(episode_id) not in ids:
                raise bad_argument(
                    "options['episode_id']", episode_id, f"use one of the dataset's ids, e.g. {ids[:5]}"
                )
            index = ids.index(str(episode_id))
        elif self.episode_order == "random":
            index = int(self.np_random.integers(n))
        else:
            if seed is not None:
                self._next_index = seed % n
            index = self._next_index
            self._next_index = (index + 1) % n
        hab = self.habitat_env
        hab.current_episode = self.episodes[index]
        if seed is not None:
            hab.seed(int(seed))
        observations = hab.reset()
        self._steps = 0
        metrics = hab.get_metrics()
        self._distance = float(metrics["distance_to_goal"])
        obs = self._convert(observations)
        return obs, self._info(observations, metrics, "")

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise InvalidAction(
                f"invalid action={action!r}: Habitat takes an int in 0..3 "
                f"({', '.join(f'{i} {n!r}' for i, n in enumerate(self.action_names))})"
            )
        hab = self.habitat_env
        if hab.episode_over:
            raise WorldBagelError("the habitat episode is over: call reset() first")
        action = int(action)
        observations = hab.step({"action": HABITAT_ACTIONS[action]})
        self._steps += 1
        metrics = hab.get_metrics()
        distance = float(metrics["distance_to_goal"])
        success = bool(metrics["success"])
        over = bool(hab.episode_over)
        terminated = over and (action == 0 or success)
        truncated = over and not terminated
        reward = self._distance - distance - self.slack_reward
        if terminated and success:
            reward += self.success_reward
        self._distance = distance
        obs = self._convert(observations)
        return (
            obs,
            float(reward),
            terminated,
            truncated,
            self._info(observations, metrics, self.action_names[action]),
        )

    def render(self) -> np.ndarray | None:
        """The current RGB frame (render_mode='rgb_array'); None when render_mode is None."""
        if self.render_mode is None or self._frame is None:
            return None
        return self._frame.copy()

    def close(self) -> None:
        if getattr(self, "habitat_env", None) is not None:
            self.habitat_env.close()

    # ----------------------------------------------------------------------------------------
    def _image(self, array: Any, name: str) -> np.ndarray:
        image = np.asarray(array)
        if image.ndim != 3 or image.shape[2] < 3:
            raise WorldBagelError(
                f"habitat sensor {name!r} gave shape {image.shape}; expected (H, W, 3 or 4)"
            )
        image = image[:, :, :3]
        if image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(resize_image(image, self.obs_size, "area"))

    def _convert(self, observations: dict[str, Any]) -> np.ndarray | dict[str, np.ndarray]:
        if "rgb" not in observations:
            raise WorldBagelError(
                f"habitat gave no 'rgb' observation (keys: {sorted(observations)}); enable the agent's rgb_sensor"
            )
        self._frame = self._image(observations["rgb"], "rgb")
        if not self.depth:
            return self._frame.copy()
        if "depth" not in observations:
            raise WorldBagelError(
                "depth=True but habitat gave no 'depth' observation; enable the depth_sensor"
            )
        d = np.asarray(observations["depth"], np.float32)
        if d.ndim == 2:
            d = d[:, :, None]
        d8 = np.clip(np.rint(np.clip(d[:, :, :1], 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
        return {
            "rgb": self._frame.copy(),
            "depth": np.ascontiguousarray(resize_image(d8, self.obs_size, "nearest")),
        }

    def _info(
        self, observations: dict[str, Any], metrics: dict[str, Any], action_text: str
    ) -> dict[str, Any]:
        hab = self.habitat_env
        episode = hab.current_episode
        info: dict[str, Any] = {
            "episode_id": str(episode.episode_id),
            "scene_id": str(episode.scene_id),
            "distance_to_goal": float(metrics["distance_to_goal"]),
            "success": bool(metrics["success"]),
            "spl": float(metrics["spl"]),
            "soft_spl": float(metrics["soft_spl"]),
            "steps": self._steps,
            "action_text": action_text,
        }
        state = hab.sim.get_agent_state()
        pos = np.asarray(state.position, float)
        goal = np.asarray(episode.goals[0].position, float)
        info["agent_pos"] = (float(pos[0]), -float(pos[2]))
        info["agent_yaw"] = _yaw_of(state.rotation)
        info["goal_pos"] = (float(goal[0]), -float(goal[2]))
        if "pointgoal_with_gps_compass" in observations:
            rho, phi = (
                float(v) for v in np.asarray(observations["pointgoal_with_gps_compass"]).reshape(-1)[:2]
            )
            info["pointgoal"] = (rho, phi)
        if "imagegoal" in observations:
            info["goal_image"] = self._image(observations["imagegoal"], "imagegoal")
        return info
