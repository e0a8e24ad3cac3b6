"""`OraclePolicy`: the privileged expert that reads the simulator's ground truth.

Strategies, tried in this order when the policy is bound to an env:

1. `optimal_action()` on the env (any wrapper layer): the env's own expert. GridWorld implements it with a
   BFS shortest path, so the oracle reaches the goal in exactly `info["distance"]` steps.
2. Habitat: habitat-lab's `ShortestPathFollower` over the env's simulator (geodesic, obstacle-aware) when
   `habitat` is importable and the env exposes a habitat `Env` (attribute `habitat_env`, `_habitat_env`
   or `_env` with `.sim` and `.current_episode`).
3. A greedy geometric follower for first-person nav envs (MiniWorld): turn towards the goal until it lies
   within half a turn step of the heading, then move forward; `stop` (when the env has one) once within
   `stop_radius` metres. The pose comes from `info` (`agent_pos`, `agent_yaw`, `goal_pos`) or from
   MiniWorld's own objects (`agent.pos`, `agent.dir`, `box.pos`).

Vector envs (gymnasium's `VectorEnv`, or a Stable-Baselines3 `VecEnv` such as `DummyVecEnv` /
`SubprocVecEnv`) use strategy 1 in every sub-env, through `call` / `env_method`; `predict` (SB3's interface)
then gives one expert action per env, so SB3's `evaluate_policy` runs the oracle like a trained model.

Limitations: the greedy follower ignores walls, so it is a true oracle only in open rooms (MiniWorld
OneRoom, Hallway); in FourRooms and Maze it can walk into walls and fail. Strategy 2 is only as good as the
navmesh. An env with none of these raises a WorldBagelError naming what is missing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from worldbagel.actions import NavActionCodec, codec_for_env
from worldbagel.errors import WorldBagelError
from worldbagel.policies.base import BasePolicy, single_spaces, split_vector_infos, stack_actions

__all__ = ["GreedyFollower", "OraclePolicy"]

logger = logging.getLogger(__name__)

HABITAT_ACTION_KINDS = {0: "stop", 1: "move_forward", 2: "turn_left", 3: "turn_right"}
"""habitat-sim's `HabitatSimActions` ids -> NavActionCodec kinds."""


class OraclePolicy(BasePolicy):
    """Expert actions from the env's ground truth (see module docstring for the strategies)."""

    def __init__(self, env: Any = None, stop_radius: float = 0.2):
        self.env = None
        self.action_space = None
        self.stop_radius = float(stop_radius)
        self.strategy = "unbound"
        self._follower: Any = None
        if env is not None:
            self.bind(env)

    @classmethod
    def from_env(cls, env: Any, seed: int | None = None, stop_radius: float = 0.2) -> OraclePolicy:
        """An oracle bound to `env` (seed is accepted for a uniform factory signature and unused)."""
        return cls(env, stop_radius=stop_radius)

    def bind(self, env: Any) -> None:
        """Attach the env (single, gymnasium vector env or SB3 VecEnv) and pick a strategy."""
        self.env = env
        self.observation_space, self.action_space = single_spaces(env)
        self._follower = None
        if _vector_kind(env) is not None:
            if not _vector_has_expert(env):
                raise WorldBagelError(
                    "OraclePolicy on a vector env needs optimal_action() in every sub-env (GridWorld, MiniWorld); "
                    "for other envs run single envs"
                )
            self.strategy = "optimal_action"
            return
        if _has_attr(env, "optimal_action"):
            self.strategy = "optimal_action"
            return
        follower = _habitat_follower(env, self.stop_radius)
        if follower is not None:
            self.strategy, self._follower = "habitat", follower
            return
        self.strategy = "greedy"
        codec = codec_for_env(env)
        if not isinstance(codec, NavActionCodec):
            raise WorldBagelError(
                f"OraclePolicy cannot act in {env}: it has no optimal_action(), no habitat simulator and its "
                f"actions {codec.vocabulary} are not navigation actions for the greedy follower"
            )
        self._follower = GreedyFollower(codec, stop_radius=self.stop_radius)

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        if self.env is None:
            raise WorldBagelError("OraclePolicy is not bound to an env; call bind(env) or pass env=...")
        if _vector_kind(self.env) is not None:
            raise WorldBagelError(
                "OraclePolicy is bound to a vector env: ask for every env's action at once with "
                "act_batch(obs_batch, infos) or predict(obs_batch)"
            )
        if self.strategy == "optimal_action":
            return np.int64(self.env.get_wrapper_attr("optimal_action")())
        if self.strategy == "habitat":
            return self._habitat_act()
        pose = nav_pose(self.env, info)
        if pose is None:
            raise WorldBagelError(
                "OraclePolicy (greedy) found no pose: the env's info needs agent_pos, agent_yaw and goal_pos, "
                "or the env must be a MiniWorld env with agent and box"
            )
        return np.int64(self._follower.act(*pose))

    def act_batch(self, obs_batch: Any, infos: Any) -> np.ndarray:
        """Vector envs: asks every sub-env for `optimal_action()` (gymnasium `call`, SB3 `env_method`)."""
        kind = None if self.env is None else _vector_kind(self.env)
        if kind is None:
            return super().act_batch(obs_batch, infos)
        n = len(obs_batch)
        split_vector_infos(infos, n)
        if kind == "gymnasium":
            actions = self.env.call("optimal_action")
        else:
            actions = self.env.env_method("optimal_action")
        if len(actions) != n:
            raise WorldBagelError(
                f"OraclePolicy got {n} observations from a vector env of {len(actions)} envs"
            )
        return stack_actions([np.int64(a) for a in actions])

    def _habitat_act(self) -> Any:
        follower, goal, codec = self._follower
        hab_id = follower.get_next_action(goal())
        kind = "stop" if hab_id is None else HABITAT_ACTION_KINDS.get(int(hab_id))
        index = codec.index_of(kind) if kind else None
        if index is None:
            raise WorldBagelError(f"habitat follower chose action {hab_id!r}, which this env does not have")
        return np.int64(index)

    def __repr__(self) -> str:
        return f"OraclePolicy(strategy={self.strategy!r})"


class GreedyFollower:
    """Turn towards the goal, then walk; pure geometry on (agent_xy, yaw, goal_xy).

    yaw is counter-clockwise from +x in radians, in the same 2-D frame as the positions.
    """

    def __init__(self, codec: NavActionCodec, stop_radius: float = 0.2):
        self.codec = codec
        self.stop_radius = stop_radius
        self.half_turn = math.radians(codec.turn_deg) / 2

    def act(self, agent_xy: np.ndarray, yaw: float, goal_xy: np.ndarray) -> int:
        c = self.codec
        delta = np.asarray(goal_xy, float) - np.asarray(agent_xy, float)
        if float(np.hypot(*delta)) <= self.stop_radius and c.index_of("stop") is not None:
            return c.index_of("stop")
        err = wrap_angle(math.atan2(delta[1], delta[0]) - yaw)
        if err > self.half_turn and c.index_of("turn_left") is not None:
            return c.index_of("turn_left")
        if err < -self.half_turn and c.index_of("turn_right") is not None:
            return c.index_of("turn_right")
        forward = c.index_of("move_forward")
        if forward is None:
            raise WorldBagelError(f"greedy follower needs a move forward action; this env has {c.vocabulary}")
        return forward


def wrap_angle(a: float) -> float:
    """Wrap an angle in radians to [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def nav_pose(env: Any, info: Mapping[str, Any]) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(agent_xy, yaw, goal_xy) from info keys or MiniWorld internals, or None when unavailable.

    MiniWorld is y-up with heading vector (cos dir, 0, -sin dir); it is mapped to the 2-D frame
    (x, -z) so that yaw = dir is counter-clockwise.
    """
    if all(k in info for k in ("agent_pos", "agent_yaw", "goal_pos")):
        return (
            np.asarray(info["agent_pos"], float)[:2],
            float(info["agent_yaw"]),
            np.asarray(info["goal_pos"], float)[:2],
        )
    u = getattr(env, "unwrapped", env)
    agent, goal = getattr(u, "agent", None), getattr(u, "box", None)
    if agent is None or goal is None or not hasattr(agent, "pos") or not hasattr(agent, "dir"):
        return None
    a, g = np.asarray(agent.pos, float), np.asarray(goal.pos, float)
    return np.array([a[0], -a[2]]), float(agent.dir), np.array([g[0], -g[2]])


def _vector_kind(env: Any) -> str | None:
    """'gymnasium' for a gymnasium VectorEnv, 'sb3' for a Stable-Baselines3 VecEnv (told by its `env_method`
    and `num_envs`, so SB3 need not be installed), None for a single env."""
    if isinstance(env, gym.vector.VectorEnv):
        return "gymnasium"
    if (
        not isinstance(env, gym.Env)
        and callable(getattr(env, "env_method", None))
        and hasattr(env, "num_envs")
    ):
        return "sb3"
    return None


def _vector_has_expert(env: Any) -> bool:
    """Whether every sub-env has `optimal_action()`; async gymnasium sub-envs are checked on the first call."""
    if _vector_kind(env) == "sb3":
        has_attr = getattr(env, "has_attr", None)
        if callable(has_attr):
            return bool(has_attr("optimal_action"))
        try:
            env.get_attr("optimal_action")
        except AttributeError:
            return False
        return True
    subs = getattr(env, "envs", None)  # SyncVectorEnv
    return subs is None or all(_has_attr(e, "optimal_action") for e in subs)


def _has_attr(env: Any, name: str) -> bool:
    try:
        getter = env.get_wrapper_attr
    except AttributeError:
        return hasattr(env, name)
    try:
        return callable(getter(name))
    except AttributeError:
        return False


def _habitat_follower(env: Any, stop_radius: float) -> tuple[Any, Any, NavActionCodec] | None:
    """(ShortestPathFollower, goal getter, codec) for an env wrapping habitat, else None."""
    u = getattr(env, "unwrapped", env)
    hab = next(
        (getattr(u, n) for n in ("habitat_env", "_habitat_env", "_env") if getattr(u, n, None) is not None),
        None,
    )
    if hab is None or not hasattr(hab, "sim"):
        return None
    try:
        # lazy: optional dependency (habitat-lab, conda habitat-sim)
        from habitat.tasks.nav.shortest_path_follower import ShortestPathFollower
    except ImportError:
        logger.info("habitat is not importable; the oracle falls back to the greedy follower")
        return None
    codec = codec_for_env(env)
    if not isinstance(codec, NavActionCodec):
        return None
    follower = ShortestPathFollower(hab.sim, goal_radius=stop_radius, return_one_hot=False)

    def goal() -> Any:
        return hab.current_episode.goals[0].position

    return follower, goal, codec
