"""`ScriptedPolicy`: replays a fixed list of actions (raw actions or action texts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from worldbagel.actions import ActionCodec, codec_for_env
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.policies.base import BasePolicy, single_spaces, split_vector_infos

__all__ = ["ScriptedPolicy"]


class ScriptedPolicy(BasePolicy):
    """Returns `actions[0]`, `actions[1]`, ... one per `act` call; `reset()` rewinds.

    Texts ("move up", "turn left 30 degrees") are decoded through `codec` when the policy is built, so a
    bad text fails immediately. When the script runs out, `loop=True` starts again from the top; otherwise
    `act` raises a WorldBagelError. Each env keeps its own place in the script (`act` is env 0): `act_batch`
    advances every env's place once per call, so envs that start together get the same action, and
    `start_episode(i)` (SB3's `episode_start` through `predict`) rewinds env i alone.
    """

    def __init__(
        self,
        actions: Sequence[Any],
        codec: ActionCodec | None = None,
        loop: bool = False,
        action_space: gym.Space | None = None,
    ):
        actions = list(actions)
        if not actions:
            raise bad_argument("actions", actions, "give at least one action (raw action or action text)")
        decoded = []
        for a in actions:
            if isinstance(a, str):
                if codec is None:
                    raise bad_argument(
                        "codec", None, f"pass an ActionCodec to replay action texts such as {a!r}"
                    )
                decoded.append(codec.decode(a))
            else:
                decoded.append(a)
        if action_space is not None:
            bad = [a for a in decoded if not action_space.contains(_as_space_value(a, action_space))]
            if bad:
                raise bad_argument("actions", bad[:5], f"every action must belong to {action_space}")
        self.actions = decoded
        self.codec = codec
        self.loop = bool(loop)
        self.action_space = action_space
        self._places: list[int] = []

    @classmethod
    def from_env(
        cls, env: Any, actions: Sequence[Any], loop: bool = False, seed: int | None = None
    ) -> ScriptedPolicy:
        """A scripted policy whose texts are decoded with the env's codec (`codec_for_env`)."""
        obs_space, space = single_spaces(env)
        policy = cls(actions, codec=codec_for_env(env), loop=loop, action_space=space)
        policy.observation_space = obs_space
        return policy

    def reset(self, seed: int | None = None) -> None:
        self._places = []

    def start_episode(self, index: int | None = None) -> None:
        """Rewind env `index`'s script (every env's when None)."""
        if index is None:
            self.reset()
        elif index < len(self._places):
            self._places[index] = 0

    @property
    def position(self) -> int:
        """How many actions env 0 has been handed since the last reset."""
        return self._places[0] if self._places else 0

    def _join(self, n: int) -> None:
        """Give envs 0..n-1 a place; a new env joins at env 0's (0 right after a reset)."""
        start = self.position
        self._places.extend([start] * (n - len(self._places)))

    def _next(self, index: int = 0) -> Any:
        self._join(index + 1)
        t = self._places[index]
        if t >= len(self.actions) and not self.loop:
            raise WorldBagelError(
                f"ScriptedPolicy ran out of actions after {len(self.actions)} steps; "
                "give a longer script, set loop=True, or end the episode sooner"
            )
        self._places[index] = t + 1
        return self.actions[t % len(self.actions)]

    def act(self, obs: Any = None, info: Mapping[str, Any] | None = None) -> Any:
        return self._next()

    def act_batch(self, obs_batch: Any, infos: Any = None) -> np.ndarray:
        n = len(obs_batch)
        split_vector_infos(infos, n)
        self._join(n)
        return np.stack([np.asarray(self._next(i)) for i in range(n)])


def _as_space_value(a: Any, space: gym.Space) -> Any:
    if isinstance(space, gym.spaces.Discrete):
        return np.int64(a) if np.ndim(a) == 0 and float(a) == int(a) else a
    return np.asarray(a, dtype=getattr(space, "dtype", None))
