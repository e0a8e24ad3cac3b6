"""`RandomPolicy`: uniform random actions from its own seeded generator (never the env's)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from worldbagel.policies.base import BasePolicy, single_spaces, split_vector_infos

__all__ = ["RandomPolicy"]


class RandomPolicy(BasePolicy):
    """Samples uniformly from `action_space` with a private `numpy` generator.

    The same seed gives the same action sequence; `reset(seed)` reseeds, `reset()` keeps the stream going.
    Discrete, MultiDiscrete, MultiBinary and bounded Box spaces are sampled directly; any other space is
    sampled through a private copy of the space seeded from the generator.
    """

    def __init__(self, action_space: gym.Space, seed: int | None = None):
        self.action_space = action_space
        self._rng = np.random.default_rng(seed)
        self._fallback: gym.Space | None = None

    @classmethod
    def from_env(cls, env: Any, seed: int | None = None) -> RandomPolicy:
        """A random policy over an env's (or a vector env's single) action space."""
        obs_space, space = single_spaces(env)
        policy = cls(space, seed=seed)
        policy.observation_space = obs_space
        return policy

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._fallback = None

    def act(self, obs: Any = None, info: Mapping[str, Any] | None = None) -> Any:
        return self._sample()

    def act_batch(self, obs_batch: Any, infos: Any = None) -> np.ndarray:
        n = len(obs_batch)
        split_vector_infos(infos, n)  # validates a list's length
        return np.stack([np.asarray(self._sample()) for _ in range(n)])

    def _sample(self) -> Any:
        s, rng = self.action_space, self._rng
        if isinstance(s, gym.spaces.Discrete):
            return np.int64(s.start + rng.integers(s.n))
        if isinstance(s, gym.spaces.MultiDiscrete):
            return (s.start + rng.integers(s.nvec)).astype(s.dtype)
        if isinstance(s, gym.spaces.MultiBinary):
            return rng.integers(0, 2, size=s.shape).astype(s.dtype)
        if isinstance(s, gym.spaces.Box) and s.is_bounded("both"):
            return rng.uniform(s.low, s.high).astype(s.dtype)
        if self._fallback is None:
            self._fallback = copy.deepcopy(s)
            self._fallback.seed(int(rng.integers(2**31)))
        return self._fallback.sample()

    def __repr__(self) -> str:
        return f"RandomPolicy({self.action_space})"
