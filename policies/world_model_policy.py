"""Closed-loop bookkeeping shared by the policies that keep a world-model history per env.

`WorldModelPlanner` and `ReasoningPolicy` both follow the same loop in a real env: on the first observation
of an episode a fresh history starts (a shallow copy of the world model: same network, codec and config,
its own contexts); afterwards the action the policy took and the observation it led to are appended. One
slot per env makes the same code serve single and vector envs.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldbagel.actions import codec_for_env
from worldbagel.policies.base import BasePolicy, single_spaces, split_vector_infos, stack_actions
from worldbagel.policies.registry import preset_kwargs
from worldbagel.world_model import WorldModel
from worldbagel.world_model_loader import load_world_model


@dataclass
class HistorySlot:
    """Closed-loop state of one env."""

    world: WorldModel | None = None
    last_action: Any = None
    steps: int = 0
    new_episode: bool = True


class WorldModelPolicy(BasePolicy):
    """Base of policies that observe a real env through a per-env world-model history.

    Subclasses set `self.world_model`, `self.instruction` and `self._slots = []` and implement
    `_act(observations, infos) -> actions`, recording each env's chosen action in `self._slots[i].last_action`.
    """

    world_model: WorldModel
    instruction: str | None
    _slots: list[HistorySlot]

    def start_episode(self, index: int | None = None) -> None:
        """Restart the history of env `index` (all envs when None) at its next observation. Vector envs that
        report `steps == 0` in a reset info (as GridWorld does) restart automatically."""
        for i, slot in enumerate(self._slots):
            if index is None or i == index:
                slot.new_episode = True

    def act(self, obs: Any, info: Mapping[str, Any] | None = None) -> Any:
        return self._act([obs], [dict(info or {})])[0]

    def act_batch(self, obs_batch: Any, infos: Any = None) -> np.ndarray:
        n = len(obs_batch)
        return stack_actions(self._act([obs_batch[i] for i in range(n)], split_vector_infos(infos, n)))

    @staticmethod
    def _from_env_parts(env: Any, preset: str | None, kwargs: dict[str, Any]) -> tuple[WorldModel, Any, dict]:
        """What both policies' `from_env` start with: (world model, single-env action space, the remaining
        constructor kwargs). Keyword arguments not given come from configs/policy/<preset>.yaml (none with
        preset=None); `model` / `sampler` / `world` load the world model unless a ready `world_model` is given,
        which gets the env's action codec when it has none."""
        kwargs = {**(preset_kwargs(preset, required=True) if preset else {}), **kwargs}
        model, sampler, world = (
            kwargs.pop("model", None),
            kwargs.pop("sampler", None),
            kwargs.pop("world", None),
        )
        world_model = kwargs.pop("world_model", None)
        codec = codec_for_env(env)
        if world_model is None:
            world_model = load_world_model(model, sampler, codec, world)
        elif world_model.codec is None:
            world_model.codec = codec
        return world_model, single_spaces(env)[1], kwargs

    @abstractmethod
    def _act(self, observations: list, infos: list[dict]) -> list:
        """The actions for one observation per env."""

    def _observe_all(self, observations: list, infos: list[dict]) -> list[WorldModel]:
        """Bring every env's history up to its new observation; returns the histories."""
        while len(self._slots) < len(observations):
            self._slots.append(HistorySlot())
        return [self._observe(self._slots[i], o, infos[i]) for i, o in enumerate(observations)]

    def _observe(self, slot: HistorySlot, obs: Any, info: Mapping[str, Any]) -> WorldModel:
        obs = np.asarray(obs)
        restarted = info.get("steps") == 0  # a (vector env auto-)reset info, e.g. GridWorld's
        if slot.world is None or slot.new_episode or restarted:
            slot.world = copy.copy(self.world_model)  # same model, codec and config; its own history
            slot.world.reset(obs, instruction=info.get("instruction") or self.instruction)
            slot.steps, slot.new_episode = 0, False
        else:
            slot.world.act(slot.last_action).observe(obs)
            slot.steps += 1
        return slot.world
