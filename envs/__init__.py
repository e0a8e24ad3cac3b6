"""Gymnasium environments registered under `WorldBagel/...`.

Importing this package registers every id with gymnasium (entry points are strings, so neither
miniworld nor habitat is imported here) and stays cheap: numpy + gymnasium only, no torch.

    WorldBagel/GridWorld-v0            8x8 maze, top-down 64x64 frames (pure numpy)
    WorldBagel/GridWorldEgo-v0         the same mazes seen agent-centred, rotated with the heading
    WorldBagel/MiniWorld-<Task>-v0     first-person 3-D navigation (PyPI `miniworld`, headless GL)
                                       Task in Hallway, OneRoom, FourRooms, Maze, MazeS3
    WorldBagel/Habitat-PointNav-v0     habitat-lab PointNav (habitat-sim from conda)
    WorldBagel/Habitat-ImageNav-v0     habitat-lab ImageNav
    WorldBagel/Video-v0                a video file / frame folder played as observations (kwarg `path`)

`make_env(env_id, **kwargs)` makes one of them with `render_mode="rgb_array"` unless told otherwise.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from worldbagel.errors import bad_argument

from .grid_frames import UndecodableFrame, decode_frame
from .gridworld import EVAL_LAYOUT_SEEDS, TRAIN_LAYOUT_SEEDS, GridWorldEnv, layout_split
from .maze import bfs_distances, generate_maze, shortest_path_actions
from .miniworld_env import MINIWORLD_TASKS
from .wrappers import FrameHistory, ResizeObservation, SelectImage, resize_image

_PKG = "worldbagel.envs"

_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "WorldBagel/GridWorld-v0": (f"{_PKG}.gridworld:GridWorldEnv", {"view": "topdown"}),
    "WorldBagel/GridWorldEgo-v0": (f"{_PKG}.gridworld:GridWorldEnv", {"view": "ego"}),
    **{
        f"WorldBagel/MiniWorld-{task}-v0": (f"{_PKG}.miniworld_env:MiniWorldNavEnv", {"task": task})
        for task in MINIWORLD_TASKS
    },
    "WorldBagel/Habitat-PointNav-v0": (f"{_PKG}.habitat_env:HabitatNavEnv", {"task": "pointnav"}),
    "WorldBagel/Habitat-ImageNav-v0": (f"{_PKG}.habitat_env:HabitatNavEnv", {"task": "imagenav"}),
    "WorldBagel/Video-v0": (f"{_PKG}.video_env:VideoEnv", {}),
}

WORLD_BAGEL_IDS: list[str] = list(_SPECS)
"""Every registered `WorldBagel/...` id."""


def register_envs() -> None:
    """Register every WorldBagel id with gymnasium (idempotent)."""
    for env_id, (entry_point, kwargs) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs), disable_env_checker=False)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make(env_id, **kwargs)` for a WorldBagel id, with render_mode='rgb_array' by default."""
    if env_id not in _SPECS:
        raise bad_argument("env_id", env_id, f"choose one of {WORLD_BAGEL_IDS}")
    kwargs.setdefault("render_mode", "rgb_array")
    return gym.make(env_id, **kwargs)


register_envs()

# The world-model env (worldbagel/imagined_env.py; torch loads only when it is made). Not in WORLD_BAGEL_IDS:
# it needs a trained model (by default the gridworld model shipped in the package).
if "WorldBagel/Imagined-v0" not in gym.registry:
    gym.register(id="WorldBagel/Imagined-v0", entry_point="worldbagel.imagined_env:ImaginedEnv")

__all__ = [
    "EVAL_LAYOUT_SEEDS",
    "MINIWORLD_TASKS",
    "TRAIN_LAYOUT_SEEDS",
    "WORLD_BAGEL_IDS",
    "FrameHistory",
    "GridWorldEnv",
    "ResizeObservation",
    "SelectImage",
    "UndecodableFrame",
    "bfs_distances",
    "decode_frame",
    "generate_maze",
    "layout_split",
    "make_env",
    "register_envs",
    "resize_image",
    "shortest_path_actions",
]
