"""The `Policy` protocol every policy follows, a base class with the batched default, and vector-info helpers.

A policy maps an observation (and the env's `info`) to an action of the env's action space:

    policy.reset(seed=0)                      # new episode; seeds any randomness
    a = policy.act(obs, info)                 # one env
    actions = policy.act_batch(obs, infos)    # a gymnasium vector env: obs [N, ...], infos in the
                                              # vector dict format ({"k": arr[N], "_k": mask[N]})

Policies that need the env itself (the oracle reads the env's shortest path) implement `bind(env)`;
`worldbagel.rollout.run_rollouts` calls it whenever it creates an env.

Every `BasePolicy` also speaks Stable-Baselines3's `predict`, so SB3 tools such as `evaluate_policy` take it
where they take a trained model:

    actions, state = policy.predict(obs, state=None, episode_start=starts, deterministic=True)

One observation gives one action; a batch from a VecEnv (leading n_envs axis) gives actions [n_envs, ...].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from worldbagel.errors import WorldBagelError, bad_argument

__all__ = ["BasePolicy", "Policy", "single_spaces", "split_vector_infos", "stack_actions"]


@runtime_checkable
class Policy(Protocol):
    """What RL code may call on any worldbagel policy."""

    action_space: gym.Space
    """The (single-env) action space the policy's actions belong to."""

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; `seed` (when given) makes the policy's randomness reproducible."""

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        """The action for one observation."""

    def act_batch(self, obs_batch: Any, infos: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Actions for a batch of observations (leading axis N) of a vector env."""


class BasePolicy(ABC):
    """Convenience base: `act_batch` loops `act` over the batch; `reset` and `bind` do nothing; `predict` is
    Stable-Baselines3's interface on top of `act` / `act_batch`."""

    action_space: gym.Space
    observation_space: gym.Space | None = None
    """The (single-env) observation space, when known (`from_env` records it): `predict` reads from it whether
    it got one observation or a batch."""

    def reset(self, seed: int | None = None) -> None:  # noqa: B027 - optional hook, stateless default
        """Start a new episode (no state by default)."""

    def start_episode(self, index: int | None = None) -> None:
        """Start env `index`'s episode afresh at its next action (every env's when None); `predict` calls it
        for each env whose `episode_start` is True. Default: `reset()` when every env restarts, nothing for
        one env of a batch; policies that keep per-env state override it."""
        if index is None:
            self.reset()

    def bind(self, env: Any) -> None:  # noqa: B027 - optional hook, most policies ignore the env
        """Attach the env the policy acts in (no-op unless the policy reads the env)."""

    @abstractmethod
    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        """The action for one observation."""

    def act_batch(self, obs_batch: Any, infos: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Loop `act` over the leading axis; `infos` may be a vector-env info dict or a list of dicts."""
        n = len(obs_batch)
        per_env = split_vector_infos(infos, n)
        return stack_actions([self.act(obs_batch[i], per_env[i]) for i in range(n)])

    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Stable-Baselines3's `predict`: (actions, state) for one observation or a VecEnv batch.

        A batch has a leading n_envs axis on the policy's `observation_space` (a dict of such arrays for Dict
        spaces), as SB3 VecEnvs give it; without a known observation space, an observation is a batch exactly
        when `episode_start` (one flag per env) is given. Actions come back as an ndarray: [n_envs, ...] for a
        batch, one action otherwise. `episode_start[i]` True starts env i's episode afresh (`start_episode`).
        `state` is returned as given: worldbagel policies keep their own per-env state, as SB3's
        non-recurrent policies do. `deterministic` is accepted for SB3's signature and changes nothing:
        these policies have no separate greedy mode (the random policy stays uniform).
        """
        n = self._batch_size(observation, episode_start)
        starts = None if episode_start is None else np.atleast_1d(np.asarray(episode_start, bool))
        if n is None:
            if starts is not None and starts.any():
                self.start_episode(None)
            return np.asarray(self.act(observation, {})), state
        if starts is not None:
            if len(starts) != n:
                raise bad_argument(
                    "episode_start", starts.tolist(), f"give one flag per env: the observation batch has {n}"
                )
            if starts.all():
                self.start_episode(None)
            else:
                for i in np.flatnonzero(starts):
                    self.start_episode(int(i))
        if isinstance(observation, Mapping):  # a Dict space: one dict per env, as act_batch indexes envs
            observation = [{k: v[i] for k, v in observation.items()} for i in range(n)]
        actions = np.asarray(self.act_batch(observation, [{} for _ in range(n)]))
        if actions.shape[:1] != (n,):
            raise WorldBagelError(
                f"{type(self).__name__}.act_batch gave actions of shape {actions.shape} for {n} envs; "
                "it must return one action per observation"
            )
        return actions, state

    def _batch_size(self, observation: Any, episode_start: Any) -> int | None:
        """n_envs for a batch, None for one observation (see `predict`)."""
        n = _batch_size_for_space(observation, self.observation_space)
        if n is not _UNKNOWN:
            return n
        if episode_start is None:
            raise bad_argument(
                "observation",
                _describe(observation),
                f"{type(self).__name__} does not know its observation space, so predict cannot tell one "
                "observation from a batch: build the policy with from_env(env) (or set policy.observation_space), "
                "or pass episode_start with one flag per env for a batch",
            )
        return len(np.atleast_1d(episode_start))


_UNKNOWN = object()
"""`_batch_size_for_space`: the space cannot tell (no space, or a kind without a fixed shape)."""


def _batch_size_for_space(observation: Any, space: gym.Space | None) -> Any:
    """n_envs when `observation` is `space` with a leading axis, None when it is one element, else _UNKNOWN;
    a shape that is neither is an error naming both shapes."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(observation, Mapping) or set(observation) != set(space.spaces):
            raise bad_argument(
                "observation", _describe(observation), f"give a dict with the keys {sorted(space.spaces)}"
            )
        sizes = {_batch_size_for_space(observation[k], s) for k, s in space.spaces.items()}
        known = sizes - {_UNKNOWN}
        if len(known) > 1:
            raise bad_argument(
                "observation", _describe(observation), "give every key the same leading n_envs axis (or none)"
            )
        return known.pop() if known else _UNKNOWN
    if not isinstance(
        space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
    ):
        return _UNKNOWN
    shape, want = np.shape(observation), tuple(space.shape)
    if shape == want:
        return None
    if len(shape) == len(want) + 1 and shape[1:] == want:
        return int(shape[0])
    raise bad_argument(
        "observation",
        f"shape {shape}",
        f"give one observation of shape {want} or a batch of shape (n_envs, {', '.join(map(str, want))})",
    )


def _describe(observation: Any) -> str:
    if isinstance(observation, Mapping):
        return "{" + ", ".join(f"{k!r}: shape {np.shape(v)}" for k, v in observation.items()) + "}"
    return f"{type(observation).__name__} of shape {np.shape(observation)}"


def single_spaces(env: Any) -> tuple[gym.Space | None, gym.Space]:
    """(observation space, action space) of one env of `env`: a plain env, a gymnasium vector env (its
    `single_*` spaces) or a Stable-Baselines3 VecEnv (whose plain spaces are already per env)."""
    obs = getattr(env, "single_observation_space", None)
    act = getattr(env, "single_action_space", None)
    return (
        obs if obs is not None else getattr(env, "observation_space", None),
        act if act is not None else env.action_space,
    )


def split_vector_infos(infos: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, n: int) -> list[dict]:
    """Turn a gymnasium vector-env info dict into one plain dict per sub-env.

    The vector format stores each key as an array of length N with a boolean mask under `_key` that says
    which sub-envs set it; nested dicts (e.g. `final_info`) follow the same format and are split too.
    A list of N dicts is returned as is (copied); None gives N empty dicts.
    """
    if infos is None:
        return [{} for _ in range(n)]
    if not isinstance(infos, Mapping):
        infos = list(infos)
        if len(infos) != n:
            raise ValueError(f"got {len(infos)} infos for a batch of {n} observations")
        return [dict(i) for i in infos]
    out: list[dict] = [{} for _ in range(n)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        parts = split_vector_infos(value, n) if isinstance(value, Mapping) else value
        for i in range(n):
            if mask is None or bool(mask[i]):
                out[i][key] = parts[i]
    return out


def stack_actions(actions: Sequence[Any]) -> np.ndarray:
    """Stack per-env actions into the array a vector env's `step` takes."""
    return np.stack([np.asarray(a) for a in actions])
