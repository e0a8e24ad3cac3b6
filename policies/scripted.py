"""`ScriptedPolicy`: replays a fixed list of actions (raw actions or action texts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from worldbagel.actions import ActionCodec, codec_for_env
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.policies.base import BasePolicy, split_vector_infos

__all__ = ["ScriptedPolicy"]


class ScriptedPolicy(BasePolicy):
    """Returns `actions[0]`, `actions[1]`, ... one per `act` call; `reset()` rewinds.

    Texts ("move up", "turn left 30 degrees") are decoded through `codec` when the policy is built, so a
    bad text fails immediately. When the script runs out, `loop=True` starts again from the top; otherwise
    `act` raises a WorldBagelError. `act_batch` gives every sub-env the same scripted action and advances
    the script once per call.
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
        self._t = 0

    @classmethod
    def from_env(
        cls, env: Any, actions: Sequence[Any], loop: bool = False, seed: int | None = None
    ) -> ScriptedPolicy:
        """A scripted policy whose texts are decoded with the env's codec (`codec_for_env`)."""
        space = getattr(env, "single_action_space", None) or env.action_space
        return cls(actions, codec=codec_for_env(env), loop=loop, action_space=space)

    def reset(self, seed: int | None = None) -> None:
        self._t = 0

    @property
    def position(self) -> int:
        """How many actions have been handed out since the last reset."""
        return self._t

    def _next(self) -> Any:
        if self._t >= len(self.actions) and not self.loop:
            raise WorldBagelError(
                f"ScriptedPolicy ran out of actions after {len(self.actions)} steps; "
                "give a longer script, set loop=True, or end the episode sooner"
            )
        a = self.actions[self._t % len(self.actions)]
        self._t += 1
        return a

    def act(self, obs: Any = None, info: Mapping[str, Any] | None = None) -> Any:
        return self._next()

    def act_batch(self, obs_batch: Any, infos: Any = None) -> np.ndarray:
        n = len(obs_batch)
        split_vector_infos(infos, n)
        a = np.asarray(self._next())
        return np.stack([a] * n)


def _as_space_value(a: Any, space: gym.Space) -> Any:
    if isinstance(space, gym.spaces.Discrete):
        return np.int64(a) if np.ndim(a) == 0 and float(a) == int(a) else a
    return np.asarray(a, dtype=getattr(space, "dtype", None))
