"""MiniWorldNavEnv: first-person 3-D goal-reaching tasks from the PyPI `miniworld` package.

The agent must reach the red box. Actions: 0 turn left, 1 turn right, 2 move forward (MiniWorld's own
ids) and, with `stop_action=True`, 3 stop (ends the episode; success only if the box is near). Turn
and forward step sizes are MiniWorld's (15 degrees, 0.15 m by default) and name the actions, e.g.
"turn left 15 degrees", "move forward 0.15 m". Reaching the box ends the episode with success
(MiniWorld's own rule: centre distance < agent radius + box radius + 1.1 * max forward step).

World seeds decide the scene (room sizes, the box and the agent's start). They are split as GridWorld's
layout seeds are, so evaluation scenes are never trained on:
    train: world seeds in [0, 1_000_000)          (TRAIN_WORLD_SEEDS)
    eval:  world seeds in [1_000_000, 2_000_000)  (EVAL_WORLD_SEEDS)
    any:   world seeds in [0, 2_000_000)
`reset(seed=s)` seeds the episode generator, which draws the world seed from the split's range; MiniWorld
then builds the scene from the world seed (deterministically: the same seed and actions give the same
frames). `options={"world_seed": k}` pins the scene (k must lie in the split's range).

`info` every step: agent_pos, goal_pos as (x, -z) metres and agent_yaw (radians, counter-clockwise)
in a right-handed 2-D frame, distance (straight line to the box centre), success, steps, world_seed,
action_text. When the episode ends it adds path_length (metres walked), shortest_path_length and spl.

Shortest path length (for SPL) is the geodesic distance from the start to the edge of the success
region: the free-space path to the box centre (A* on a 0.2 m grid keeping the agent's radius clear of
walls, then pulled taut; envs/floorplan.py) minus the success radius, floored at 0. In single-room
tasks (Hallway, OneRoom) it is the straight-line distance minus the success radius.
SPL = success * l / max(p, l), with p the path length walked. `optimal_action()` follows a distance
field of the same grid with 0.15 m extra clearance (PLAN_MARGIN).

MiniWorld renders with OpenGL through pyglet. Without a display, `PYGLET_HEADLESS=1` (EGL) is set
here before the import unless the variable is already set; see `install_help()`.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldbagel.errors import DependencyNotInstalled, InvalidAction, bad_argument

from .floorplan import Floorplan

MINIWORLD_TASKS: dict[str, str] = {
    "Hallway": "Hallway",
    "OneRoom": "OneRoom",
    "FourRooms": "FourRooms",
    "Maze": "Maze",
    "MazeS3": "MazeS3",
}
"""Task name -> MiniWorld class (all are 'reach the red box' tasks)."""

TRAIN_WORLD_SEEDS = range(0, 1_000_000)
EVAL_WORLD_SEEDS = range(1_000_000, 2_000_000)
ANY_WORLD_SEEDS = range(0, 2_000_000)
SPLITS = {"train": TRAIN_WORLD_SEEDS, "eval": EVAL_WORLD_SEEDS, "any": ANY_WORLD_SEEDS}

_SINGLE_ROOM = {"Hallway", "OneRoom"}
PLAN_MARGIN = 0.15
"""Metres of clearance added to the agent radius when planning, so paths do not graze wall ends."""


def install_help() -> str:
    """How to install and run MiniWorld headless."""
    return (
        "pip install 'miniworld>=2.1' (or pip install 'worldbagel[miniworld]'); headless rendering needs "
        "GL/EGL libraries: apt-get install -y xvfb libgl1-mesa-dri libegl1 libgl1 libegl-mesa0 libglu1-mesa "
        "libosmesa6; then run with PYGLET_HEADLESS=1 (set automatically when DISPLAY is unset) or under "
        "`xvfb-run -a` with PYGLET_HEADLESS unset"
    )


def import_miniworld() -> Any:
    """Import `miniworld` (headless when there is no display) or raise DependencyNotInstalled."""
    if not os.environ.get("DISPLAY") and "PYGLET_HEADLESS" not in os.environ:
        os.environ["PYGLET_HEADLESS"] = "1"
    try:
        miniworld = importlib.import_module("miniworld")
    except Exception as exc:  # ImportError, or pyglet display/GL errors raised at import time
        raise DependencyNotInstalled(
            f"MiniWorld cannot be imported ({type(exc).__name__}: {exc}). Fix: {install_help()}"
        ) from exc
    _use_fast_texture_loading(miniworld)
    return miniworld


def _use_fast_texture_loading(miniworld: Any) -> None:
    """Swap MiniWorld's texture loader for one that decodes PNGs with PIL.

    MiniWorld asks pyglet for RGBA bytes of each texture, and pyglet converts RGB -> RGBA in pure
    Python: ~5 s per 1024x1024 texture, paid by every new process (7-11 s to build a Maze env). This
    loader uploads the same bytes (RGBA rows bottom-up, as pyglet gives them) with the same GL calls,
    so rendered frames are unchanged (checked frame-for-frame on every registered task).
    """
    texture_cls = miniworld.opengl.Texture
    if getattr(texture_cls, "_worldbagel_fast_load", False):
        return

    def load(cls: Any, tex_path: str) -> Any:
        import pyglet  # lazy: optional dependency (miniworld extra)
        from PIL import Image  # lazy: keeps `import worldbagel.envs` to numpy + gymnasium (envs/__init__.py)
        from pyglet import gl  # lazy: optional dependency (miniworld extra)

        with Image.open(tex_path) as im:
            rgba = np.ascontiguousarray(np.asarray(im.convert("RGBA"))[::-1])
        h, w = rgba.shape[:2]
        data = rgba.tobytes()
        tex = pyglet.image.ImageData(w, h, "RGBA", data).get_texture()
        gl.glEnable(tex.target)
        gl.glBindTexture(tex.target, tex.id)
        gl.glTexImage2D(gl.GL_TEXTURE_2D, 0, gl.GL_RGB, w, h, 0, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, data)
        gl.glHint(gl.GL_GENERATE_MIPMAP_HINT, gl.GL_NICEST)
        gl.glGenerateMipmap(gl.GL_TEXTURE_2D)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MAG_FILTER, gl.GL_LINEAR)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MIN_FILTER, gl.GL_LINEAR_MIPMAP_LINEAR)
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        return tex

    texture_cls.load = classmethod(load)
    texture_cls._worldbagel_fast_load = True


class MiniWorldNavEnv(gym.Env[np.ndarray, np.int64]):
    """A MiniWorld goal-reaching task with (S, S, 3) uint8 first-person frames and SPL."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        task: str = "Hallway",
        obs_size: int = 64,
        max_steps: int | None = None,
        stop_action: bool = True,
        domain_rand: bool = False,
        grid_resolution: float = 0.2,
        split: str = "train",
        render_mode: str | None = None,
        **task_kwargs: Any,
    ) -> None:
        if task not in MINIWORLD_TASKS:
            raise bad_argument("task", task, f"choose one of {tuple(MINIWORLD_TASKS)}")
        if split not in SPLITS:
            raise bad_argument("split", split, f"choose one of {tuple(SPLITS)}")
        if not isinstance(obs_size, int) or obs_size < 8:
            raise bad_argument("obs_size", obs_size, "use an int >= 8 (pixels per frame side)")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise bad_argument("max_steps", max_steps, "use an int >= 1, or None for the task's default")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise bad_argument("render_mode", render_mode, "use 'rgb_array' or None")
        miniworld = import_miniworld()
        cls = getattr(miniworld.envs, MINIWORLD_TASKS[task])
        try:
            self._world = cls(
                obs_width=obs_size,
                obs_height=obs_size,
                render_mode="rgb_array",
                domain_rand=domain_rand,
                **task_kwargs,
            )
        except Exception as exc:
            if not type(exc).__module__.startswith("pyglet"):
                raise
            # A GL context / window that cannot be created: the same fix as a failed import.
            raise DependencyNotInstalled(
                f"MiniWorld cannot render ({type(exc).__name__}: {exc}). Fix: {install_help()}"
            ) from exc
        if max_steps is not None:
            self._world.max_episode_steps = max_steps
        self.task = task
        self.split = split
        self.world_seed: int = -1
        self.obs_size = obs_size
        self.stop_action = stop_action
        self.grid_resolution = float(grid_resolution)
        self.render_mode = render_mode
        params = self._world.params.params
        self.forward_step = float(params["forward_step"].default)
        self.turn_step = float(params["turn_step"].default)
        names = [
            f"turn left {self.turn_step:g} degrees",
            f"turn right {self.turn_step:g} degrees",
            f"move forward {self.forward_step:g} m",
        ]
        if stop_action:
            names.append("stop")
        self.action_names: tuple[str, ...] = tuple(names)
        self.action_space = spaces.Discrete(len(names))
        self.observation_space = spaces.Box(0, 255, (obs_size, obs_size, 3), np.uint8)
        self._frame: np.ndarray | None = None
        self._plan: tuple[Floorplan, np.ndarray] | None = None
        self._shortest: float | None = None

    # ----------------------------------------------------------------------------------------
    @property
    def world(self) -> Any:
        """The wrapped MiniWorld env (its `agent`, `box`, `rooms`, ...)."""
        return self._world

    @property
    def max_steps(self) -> int:
        return int(self._world.max_episode_steps)

    @property
    def success_radius(self) -> float:
        """Centre distance below which the box counts as reached (MiniWorld's `near`)."""
        w = self._world
        return float(w.agent.radius + w.box.radius + 1.1 * w.max_forward_step)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        if set(options) - {"world_seed"}:
            raise bad_argument("options", options, "the only reset option is world_seed; pass a seed")
        seeds = SPLITS[self.split]
        if options.get("world_seed") is not None:
            world_seed = int(options["world_seed"])
            if world_seed not in seeds:
                raise bad_argument(
                    "options['world_seed']",
                    world_seed,
                    f"split={self.split!r} uses world seeds in [{seeds.start}, {seeds.stop}); "
                    "use split='eval' or 'any' for held-out scenes",
                )
        else:
            world_seed = int(self.np_random.integers(seeds.start, seeds.stop))
        # MiniWorld builds the scene from its own generator, seeded here with the world seed.
        obs, _ = self._world.reset(seed=world_seed)
        self.world_seed = world_seed
        self._frame = np.asarray(obs, np.uint8)
        self._start = self._xz(self._world.agent.pos)
        self._path_length = 0.0
        self._steps = 0
        self._success = False
        self._plan = None
        self._shortest = None
        return self._frame.copy(), self._info("")

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise InvalidAction(
                f"invalid action={action!r}: this MiniWorld env takes an int in 0..{self.action_space.n - 1} "
                f"({', '.join(f'{i} {n!r}' for i, n in enumerate(self.action_names))})"
            )
        action = int(action)
        before = self._xz(self._world.agent.pos)
        w = self._world
        if action == 3:  # stop: MiniWorld's `done` action moves nothing; we end the episode
            obs, reward, _, truncated, _ = w.step(w.actions.done)
            self._success = bool(w.near(w.box))
            terminated, truncated = True, False
        else:
            obs, reward, terminated, truncated, _ = w.step(action)
            self._success = bool(terminated)
        self._frame = np.asarray(obs, np.uint8)
        self._path_length += float(np.hypot(*(self._xz(w.agent.pos) - before)))
        self._steps += 1
        info = self._info(self.action_names[action])
        if terminated or truncated:
            info.update(self.episode_metrics())
        return self._frame.copy(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """The current first-person frame (render_mode='rgb_array'); None when render_mode is None."""
        if self.render_mode is None or self._frame is None:
            return None
        return self._frame.copy()

    def close(self) -> None:
        if getattr(self, "_world", None) is not None:
            self._world.close()

    # ----------------------------------------------------------------------------------------
    def shortest_path_length(self) -> float:
        """Geodesic metres from the episode's start to the edge of the success region (see module doc)."""
        if self._shortest is None:  # fixed for the episode: computed once, on first use
            goal = self._xz(self._world.box.pos)
            if self.task in _SINGLE_ROOM:
                d = float(np.hypot(*(self._start - goal)))
            else:
                d = self._geodesic(self._start)
            self._shortest = max(0.0, d - self.success_radius)
        return self._shortest

    def episode_metrics(self) -> dict[str, float | bool]:
        """success, path_length, shortest_path_length and spl of the episode so far."""
        l = self.shortest_path_length()
        p = self._path_length
        if not self._success:
            spl = 0.0
        elif math.isfinite(l):
            spl = 1.0 if max(p, l) == 0 else l / max(p, l)
        else:
            spl = 0.0
        return {"success": self._success, "path_length": p, "shortest_path_length": l, "spl": float(spl)}

    def optimal_action(self) -> int:
        """Expert action: follow the geodesic toward the box (turn until within half a turn step, then walk).

        Returns stop (3, when enabled) once the box is within reach, forward otherwise.
        """
        w = self._world
        if w.near(w.box):
            return 3 if self.stop_action else 2
        here = self._xz(w.agent.pos)
        goal = self._xz(w.box.pos)
        target = goal
        if self.task not in _SINGLE_ROOM:
            fp, field = self._geodesic_field()
            target = fp.waypoint(field, here)
            if target is None or float(np.hypot(*(target - here))) < 1e-6:
                target = goal
        dx, dz = target - here
        want = math.atan2(-dz, dx)  # MiniWorld heading: dir_vec = (cos dir, 0, -sin dir)
        err = (want - w.agent.dir + math.pi) % (2 * math.pi) - math.pi
        half = math.radians(self.turn_step) / 2
        if err > half:
            return 0
        if err < -half:
            return 1
        if not self._forward_blocked(w.agent.dir):
            return 2
        # Aimed well enough but grazing a wall: turn to the side whose next step is free, else toward the aim.
        turn = math.radians(self.turn_step)
        left_free = not self._forward_blocked(w.agent.dir + turn)
        right_free = not self._forward_blocked(w.agent.dir - turn)
        if left_free != right_free:
            return 0 if left_free else 1
        return 0 if err >= 0 else 1

    def _forward_blocked(self, direction: float) -> bool:
        w = self._world
        step = np.array([math.cos(direction), 0.0, -math.sin(direction)]) * self.forward_step
        return bool(w.intersect(w.agent, w.agent.pos + step, w.agent.radius))

    # ----------------------------------------------------------------------------------------
    @staticmethod
    def _xz(pos: np.ndarray) -> np.ndarray:
        return np.array([float(pos[0]), float(pos[2])])

    def _geodesic_field(self) -> tuple[Floorplan, np.ndarray]:
        """Planning grid (agent radius + PLAN_MARGIN clearance) and its distance field to the box."""
        if self._plan is None:
            self._plan = self._field_for(self._world.agent.radius + PLAN_MARGIN)
        return self._plan

    def _field_for(self, clearance: float) -> tuple[Floorplan, np.ndarray]:
        w = self._world
        segs = np.asarray(w.wall_segs, float)[:, :, [0, 2]]
        fp = Floorplan(
            segs, (w.min_x, w.max_x, w.min_z, w.max_z), clearance=clearance, resolution=self.grid_resolution
        )
        return fp, fp.distance_field(self._xz(w.box.pos))

    def _geodesic(self, xz: np.ndarray) -> float:
        """Taut shortest-path length from `xz` to the box centre with exactly the agent's clearance."""
        w = self._world
        segs = np.asarray(w.wall_segs, float)[:, :, [0, 2]]
        bounds = (w.min_x, w.max_x, w.min_z, w.max_z)
        fp = Floorplan(segs, bounds, clearance=w.agent.radius, resolution=self.grid_resolution)
        return fp.path_length(xz, self._xz(w.box.pos))

    def _info(self, action_text: str) -> dict[str, Any]:
        w = self._world
        a, g = w.agent.pos, w.box.pos
        return {
            "agent_pos": (float(a[0]), -float(a[2])),
            "agent_yaw": float((w.agent.dir + math.pi) % (2 * math.pi) - math.pi),
            "goal_pos": (float(g[0]), -float(g[2])),
            "distance": float(math.hypot(a[0] - g[0], a[2] - g[2])),
            "success": self._success,
            "steps": self._steps,
            "world_seed": self.world_seed,
            "action_text": action_text,
        }
