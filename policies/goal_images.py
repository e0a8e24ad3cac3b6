"""Goal images for goal-conditioned planning: where a planner's goal frame comes from.

Shape legend: a goal is a stack [G, H, W, 3] uint8; reaching any one of the G images counts.

`resolve_goal(info, goal, env_source)` picks, in order:
1. `info["goal_image"]` when the env provides one (ImageNav-style envs; [H, W, 3] or [G, H, W, 3]);
2. the policy's `goal` argument: a fixed image/stack, or a callable `goal(info) -> image/stack`;
3. a source derived from the bound env (`goal_source_for_env`), e.g. GridWorld's rendered goal state.

GridWorld goal frames: the env has no "goal image" of its own, so `GridWorldGoalImages` renders the state
the agent should reach: a fresh GridWorld with the same size, frame size and view is reset with
`options={"layout_seed", "goal", "agent": goal, "heading": h}` (the env's public options) for each of the
4 headings h, because the heading the agent will have on arrival is unknown. The maze and goal come from
the latest info (`layout_seed`, `goal`), so it works for vector envs and never touches the real env.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from worldbagel.envs.gridworld import GridWorldEnv
from worldbagel.errors import bad_argument

__all__ = ["GridWorldGoalImages", "goal_source_for_env", "resolve_goal"]

GoalSource = Callable[[Mapping[str, Any]], Any]


def _stack(images: Any, name: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise bad_argument(
            name, f"array of shape {arr.shape}", "give a goal image [H, W, 3] or a stack [G, H, W, 3]"
        )
    return arr.astype(np.uint8, copy=False)


class GridWorldGoalImages:
    """Renders the goal state of a GridWorld episode (agent on the goal, all 4 headings) from an info."""

    def __init__(self, size: Any = 8, obs_size: int = 64, view: str = "topdown", ego_radius: int = 3):
        self._env = GridWorldEnv(size=size, obs_size=obs_size, view=view, ego_radius=ego_radius, split="any")
        self._key: tuple | None = None
        self._images: np.ndarray | None = None

    @classmethod
    def from_env(cls, env: Any) -> GridWorldGoalImages | None:
        """A renderer matching a GridWorld env (or a vector env of them); None for any other env."""
        single = _single_env(env)
        if not isinstance(single, GridWorldEnv):
            return None
        return cls(size=single.size, obs_size=single.obs_size, view=single.view, ego_radius=single.ego_radius)

    def __call__(self, info: Mapping[str, Any]) -> np.ndarray:
        if "layout_seed" not in info or "goal" not in info:
            raise bad_argument(
                "info",
                sorted(info),
                "GridWorld goal images need the info's 'layout_seed' and 'goal' (act / act_batch pass the env's "
                "info; SB3's predict passes none: give the planner goal=IMAGE or goal=callable)",
            )
        goal = (int(info["goal"][0]), int(info["goal"][1]))
        key = (int(info["layout_seed"]), goal)
        if key != self._key:
            frames = []
            for heading in range(4):
                options = {"layout_seed": key[0], "goal": goal, "agent": goal, "heading": heading}
                frames.append(self._env.reset(seed=0, options=options)[0])
            self._images, self._key = np.stack(frames), key
        return self._images


def _single_env(env: Any) -> Any:
    """The unwrapped single env of an env or of a (sync) vector env, else None."""
    if env is None:
        return None
    envs = getattr(env, "envs", None)
    if envs:
        env = envs[0]
    try:
        return env.unwrapped
    except AttributeError:
        return None


def goal_source_for_env(env: Any) -> GoalSource | None:
    """A goal source for known envs (an env method `goal_images(info)` wins; GridWorld is built in)."""
    single = _single_env(env)
    method = getattr(single, "goal_images", None)
    if callable(method):
        return method
    return GridWorldGoalImages.from_env(env)


def resolve_goal(
    info: Mapping[str, Any], goal: Any = None, env_source: GoalSource | None = None
) -> np.ndarray | None:
    """The goal stack [G, H, W, 3] for this step (see the module docstring), or None when there is none."""
    if info and info.get("goal_image") is not None:
        return _stack(info["goal_image"], "info['goal_image']")
    if goal is not None:
        return _stack(goal(info) if callable(goal) else goal, "goal")
    if env_source is not None:
        return _stack(env_source(info), "goal (from the env)")
    return None
