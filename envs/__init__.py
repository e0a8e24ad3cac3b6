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

`make_env(env_id, **kwargs)` makes one of them with `render_mode="rgb_array"` unless told otherwise;
`make_vec(env_id, num_envs, ...)` is `gymnasium.make_vec` with the same default.

Episode limits: every id but Video-v0 (a clip has no fixed length) is registered with `max_episode_steps`
equal to the env's own default `max_steps`, so `spec.max_episode_steps` is what RL code expects and gymnasium's
TimeLimit truncates at the same step as the env. `make_env` / `make_vec` keep the two in step when either
`max_steps` or `max_episode_steps` is given; with `gymnasium.make` directly, pass both (the TimeLimit
otherwise stays at the registered default and may cut a longer episode short).

Async vector envs: MiniWorld renders with OpenGL (pyglet / EGL), and a GL context does not survive `fork`.
`gymnasium.vector.AsyncVectorEnv` builds one env in the calling process to read the spaces before it starts
its workers, so with the default `fork` start method (Linux, Python < 3.14) every worker would hang on its
first frame. `make_vec` therefore starts MiniWorld workers with the `spawn` context (a script that spawns
needs the `if __name__ == "__main__":` guard); with `gymnasium.make_vec`, pass
`vector_kwargs={"context": "spawn"}`. A MiniWorld env built in a process forked after OpenGL was set up
raises a WorldBagelError naming that fix instead of hanging.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import gymnasium as gym

from worldbagel.errors import WorldBagelError, bad_argument

from .grid_frames import UndecodableFrame, decode_frame
from .gridworld import EVAL_LAYOUT_SEEDS, TRAIN_LAYOUT_SEEDS, GridWorldEnv, layout_split
from .maze import bfs_distances, generate_maze, shortest_path_actions
from .miniworld_env import MINIWORLD_TASKS, MiniWorldNavEnv
from .wrappers import FrameHistory, ResizeObservation, SelectImage, resize_image

_PKG = "worldbagel.envs"

GRIDWORLD_MAX_STEPS = 64
"""GridWorldEnv's default `max_steps`."""
MINIWORLD_MAX_STEPS: dict[str, int] = {
    "Hallway": 250,
    "OneRoom": 180,
    "FourRooms": 250,
    "Maze": 1536,
    "MazeS3": 216,
}
"""Each MiniWorld task's own episode limit (miniworld 2.1; Maze and MazeS3: num_rows * num_cols * 24 for their
8 x 8 and 3 x 3 rooms, so other maze sizes need `max_steps`)."""
HABITAT_MAX_STEPS = 500
"""HabitatNavEnv's default `max_steps`."""
IMAGINED_MAX_STEPS = 64
"""ImaginedEnv's default `max_steps`."""

# id -> (entry point, constructor kwargs, max_episode_steps)
_SPECS: dict[str, tuple[str, dict[str, Any], int | None]] = {
    "WorldBagel/GridWorld-v0": (f"{_PKG}.gridworld:GridWorldEnv", {"view": "topdown"}, GRIDWORLD_MAX_STEPS),
    "WorldBagel/GridWorldEgo-v0": (f"{_PKG}.gridworld:GridWorldEnv", {"view": "ego"}, GRIDWORLD_MAX_STEPS),
    **{
        f"WorldBagel/MiniWorld-{task}-v0": (
            f"{_PKG}:make_miniworld_env",
            {"task": task},
            MINIWORLD_MAX_STEPS[task],
        )
        for task in MINIWORLD_TASKS
    },
    "WorldBagel/Habitat-PointNav-v0": (
        f"{_PKG}.habitat_env:HabitatNavEnv",
        {"task": "pointnav"},
        HABITAT_MAX_STEPS,
    ),
    "WorldBagel/Habitat-ImageNav-v0": (
        f"{_PKG}.habitat_env:HabitatNavEnv",
        {"task": "imagenav"},
        HABITAT_MAX_STEPS,
    ),
    "WorldBagel/Video-v0": (f"{_PKG}.video_env:VideoEnv", {}, None),
}

WORLD_BAGEL_IDS: list[str] = list(_SPECS)
"""Every registered `WorldBagel/...` id."""

MINIWORLD_IDS: list[str] = [i for i in WORLD_BAGEL_IDS if i.startswith("WorldBagel/MiniWorld-")]
"""The ids whose envs render with OpenGL (started with `spawn` by `make_vec`'s async mode)."""

IMAGINED_ID = "WorldBagel/Imagined-v0"


def register_envs() -> None:
    """Register every WorldBagel id with gymnasium (idempotent)."""
    for env_id, (entry_point, kwargs, max_steps) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=entry_point,
                kwargs=dict(kwargs),
                max_episode_steps=max_steps,
                disable_env_checker=False,
            )
    # The world-model env (worldbagel/imagined_env.py; torch loads only when it is made). Not in
    # WORLD_BAGEL_IDS: it needs a trained model (by default the gridworld model shipped in the package).
    if IMAGINED_ID not in gym.registry:
        gym.register(
            id=IMAGINED_ID,
            entry_point="worldbagel.imagined_env:ImaginedEnv",
            max_episode_steps=IMAGINED_MAX_STEPS,
        )


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make(env_id, **kwargs)` for a WorldBagel id, with render_mode='rgb_array' by default and the
    TimeLimit in step with the env's `max_steps` (see the module docstring)."""
    _check_id(env_id)
    kwargs.setdefault("render_mode", "rgb_array")
    return gym.make(env_id, **with_step_limits(kwargs))


def make_vec(
    env_id: str,
    num_envs: int = 1,
    vectorization_mode: str | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """`gymnasium.make_vec` for a WorldBagel id, with render_mode='rgb_array' by default, the TimeLimit in
    step with `max_steps`, and MiniWorld's async workers started with the `spawn` context unless
    `vector_kwargs` names a `context` (see the module docstring for why)."""
    _check_id(env_id)
    vector_kwargs = dict(vector_kwargs or {})
    if env_id in MINIWORLD_IDS and str(getattr(vectorization_mode, "value", vectorization_mode)) == "async":
        vector_kwargs.setdefault("context", "spawn")
    kwargs.setdefault("render_mode", "rgb_array")
    return gym.make_vec(
        env_id,
        num_envs,
        vectorization_mode=vectorization_mode,
        vector_kwargs=vector_kwargs,
        **with_step_limits(kwargs),
    )


def _check_id(env_id: str) -> None:
    if env_id not in _SPECS and env_id != IMAGINED_ID:
        raise bad_argument("env_id", env_id, f"choose one of {[*WORLD_BAGEL_IDS, IMAGINED_ID]}")


def with_step_limits(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for `gymnasium.make` of a WorldBagel id with the env's `max_steps` and gymnasium's
    `max_episode_steps` set together when only one is given (see the module docstring)."""
    steps, limit = kwargs.get("max_steps"), kwargs.get("max_episode_steps")
    if steps is not None and limit is None:
        return {**kwargs, "max_episode_steps": steps}
    if limit is not None and steps is None and limit != -1:
        return {**kwargs, "max_steps": limit}
    return kwargs


_GL_FORKED = False
"""True in a process forked from one that had an OpenGL context (pyglet's), which the fork cannot use."""


def _note_fork() -> None:
    global _GL_FORKED
    gl = sys.modules.get("pyglet.gl")
    _GL_FORKED = gl is not None and getattr(gl, "current_context", None) is not None


os.register_at_fork(after_in_child=_note_fork)


def make_miniworld_env(**kwargs: Any) -> MiniWorldNavEnv:
    """Entry point of the MiniWorld ids: `MiniWorldNavEnv(**kwargs)`, refused with the fix in a process forked
    after OpenGL was set up (there it would hang on its first frame)."""
    if _GL_FORKED:
        raise WorldBagelError(
            f"MiniWorld cannot render in process {os.getpid()}: it was forked from a process that had "
            "already set up OpenGL, and a GL context does not survive fork. Start worker processes with the "
            "'spawn' context: worldbagel.envs.make_vec(..., vectorization_mode='async') does, "
            "gymnasium.make_vec needs vector_kwargs={'context': 'spawn'}, SB3's SubprocVecEnv works with its "
            "default (forkserver), not with start_method='fork'"
        )
    return MiniWorldNavEnv(**kwargs)


make_miniworld_env.metadata = (
    MiniWorldNavEnv.metadata
)  # gymnasium.make reads the render modes from the creator


register_envs()

__all__ = [
    "EVAL_LAYOUT_SEEDS",
    "MINIWORLD_IDS",
    "MINIWORLD_MAX_STEPS",
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
    "make_miniworld_env",
    "make_vec",
    "register_envs",
    "resize_image",
    "shortest_path_actions",
    "with_step_limits",
]
