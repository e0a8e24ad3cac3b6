"""The `Policy` protocol every policy follows, a base class with the batched default, and vector-info helpers.

A policy maps an observation (and the env's `info`) to an action of the env's action space:

    policy.reset(seed=0)                      # new episode; seeds any randomness
    a = policy.act(obs, info)                 # one env
    actions = policy.act_batch(obs, infos)    # a gymnasium vector env: obs [N, ...], infos in the
                                              # vector dict format ({"k": arr[N], "_k": mask[N]})

Policies that need the env itself (the oracle reads the env's shortest path) implement `bind(env)`;
`worldbagel.rollout.run_rollouts` calls it whenever it creates an env.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

__all__ = ["BasePolicy", "Policy", "split_vector_infos", "stack_actions"]


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
    """Convenience base: `act_batch` loops `act` over the batch; `reset` and `bind` do nothing."""

    action_space: gym.Space

    def reset(self, seed: int | None = None) -> None:  # noqa: B027 - optional hook, stateless default
        """Start a new episode (no state by default)."""

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
