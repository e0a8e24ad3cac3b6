"""WorldModelPlanner: model-predictive control over rollouts imagined by a `WorldModel`.

Shape legend:
    N   envs planned together (1 for `act`, the vector size for `act_batch`)
    K   candidate action sequences of one env          T   planning horizon (imagined steps)
    G   goal images (reaching any one counts)          H, W  frame height / width

Every real step (closed loop):
1. the env's history is updated: on an episode's first step it restarts from the observation, later the
   executed action and the new real observation are appended (so imagination starts from what really
   happened, inside the world model's bounded window);
2. candidate action sequences are imagined on forks of that history (no recomputation of the shared
   prefix); all candidates of all envs advance one imagined step in ONE batched sampling call
   (`predict_batch`; the last step uses `predict_unabsorbed`, which skips re-encoding frames nobody
   predicts from);
3. each candidate gets an energy (below) and the first action of the lowest-energy sequence is returned.

Search: `exhaustive` enumerates all |A|^T sequences of a small discrete action set; with `dedupe` the
sequences form a tree and each distinct prefix is imagined once (|A| + |A|^2 + ... predictions instead of
T |A|^T). `cem` (the cross-entropy method) samples `population` sequences per iteration from per-step
categorical distributions (discrete) or diagonal Gaussians clipped to the bounds (Box), refits them to the
`elites` best with `smoothing`, and keeps the best sequence seen. `auto` = exhaustive when
|A|^T <= max_exhaustive, else cem.

Energy of a candidate with frames f_1..f_T and actions a_1..a_T:
    goal_weight * aggregate_t( min_g distance(f_t, goal_g) + step_cost * (t - 1) )
    + sum_i weight_i * scorer_i(frames, actions, info)
with `aggregate` one of min (default: the best moment of the plan, so reaching the goal early and
staying is not required), final, mean; `distance` from `worldbagel.policies.energy` (latent by default, ssim,
lpips) or any callable(frames [n, H, W, 3], goals [G, H, W, 3]) -> [n, G]. The goal term is skipped
when no goal image is available; then at least one scorer is required.

Goal images come from `info["goal_image"]`, the `goal` argument (an image/stack or a callable(info)), or
the bound env (GridWorld: the rendered goal state, see `worldbagel.policies.goal_images`).

After each step `last_plans[i]` holds env i's chosen `Plan` (actions, energy, imagined frames, goal), e.g.
for a real | imagined | goal video.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from worldbagel.errors import bad_argument
from worldbagel.policies.base import single_spaces
from worldbagel.policies.energy import auto_scorers, frame_distance, make_scorer
from worldbagel.policies.goal_images import goal_source_for_env, resolve_goal
from worldbagel.policies.world_model_policy import HistorySlot, WorldModelPolicy
from worldbagel.world_model import WorldModel, predict_batch

__all__ = ["METHODS", "Plan", "WorldModelPlanner"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "exhaustive", "cem")
AGGREGATES = ("min", "final", "mean")


@dataclass
class Plan:
    """The chosen plan of one env at one step."""

    actions: list
    """Best action sequence (its first action is executed)."""
    energy: float
    frames: np.ndarray
    """Imagined frames of the best sequence [T, H, W, 3]."""
    goal: np.ndarray | None
    """Goal images used [G, H, W, 3] (None when only scorers were used)."""
    candidates: int
    """Action sequences scored for this step."""


@dataclass
class _Job:
    """One candidate sequence being imagined."""

    slot: int
    actions: tuple
    world: WorldModel | None
    frames: list
    dist: list


class WorldModelPlanner(WorldModelPolicy):
    """MPC policy: imagine candidate futures with a WorldModel, act on the lowest-energy one."""

    def __init__(
        self,
        world_model: WorldModel,
        action_space: gym.Space | None = None,
        goal: Any = None,
        horizon: int = 2,
        method: str = "auto",
        energy: str | Callable | None = "latent",
        energy_kwargs: Mapping[str, Any] | None = None,
        goal_weight: float = 1.0,
        scorers: Sequence[Any] = (),
        aggregate: str = "min",
        step_cost: float = 0.0,
        population: int = 32,
        elites: int = 6,
        iterations: int = 3,
        smoothing: float = 0.7,
        max_exhaustive: int = 64,
        dedupe: bool = True,
        instruction: str | None = None,
        seed: int | None = None,
    ):
        if not isinstance(world_model, WorldModel):
            raise bad_argument("world_model", world_model, "pass a worldbagel.WorldModel")
        self.world_model = world_model
        self.action_space = action_space if action_space is not None else _space_from_codec(world_model)
        if not isinstance(self.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise bad_argument(
                "action_space", self.action_space, "the planner supports Discrete and Box spaces"
            )
        if not (isinstance(horizon, int) and horizon >= 1):
            raise bad_argument("horizon", horizon, "use an int >= 1 (imagined steps per candidate)")
        if method not in METHODS:
            raise bad_argument("method", method, f"use one of {METHODS}")
        if method == "exhaustive" and not isinstance(self.action_space, gym.spaces.Discrete):
            raise bad_argument("method", method, "exhaustive search needs a Discrete action space; use cem")
        if aggregate not in AGGREGATES:
            raise bad_argument("aggregate", aggregate, f"use one of {AGGREGATES}")
        if not (isinstance(population, int) and population >= 2):
            raise bad_argument("population", population, "use an int >= 2")
        if not (isinstance(elites, int) and 1 <= elites <= population):
            raise bad_argument("elites", elites, f"use an int in [1, population={population}]")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise bad_argument("iterations", iterations, "use an int >= 1")
        if not 0 < smoothing <= 1:
            raise bad_argument(
                "smoothing", smoothing, "use a value in (0, 1] (1 = refit fully each iteration)"
            )
        self.goal = goal
        self.horizon = horizon
        self.method = method
        self.goal_weight = float(goal_weight)
        self.distance = self._make_distance(energy, dict(energy_kwargs or {}))
        self.scorers = [_weighted(s) for s in scorers]
        self.aggregate = aggregate
        self.step_cost = float(step_cost)
        self.population, self.elites, self.iterations = population, elites, iterations
        self.smoothing = float(smoothing)
        self.max_exhaustive = int(max_exhaustive)
        self.dedupe = bool(dedupe)
        self.instruction = instruction
        self._env_goal = None
        self._slots: list[HistorySlot] = []
        self.last_plans: list[Plan | None] = []
        self.reset(seed)

    # ------------------------------------------------------------------ construction helpers
    def _make_distance(self, energy: str | Callable | None, kwargs: dict) -> Callable | None:
        if energy is None or callable(energy):
            return energy
        return frame_distance(str(energy), pipe=self.world_model.pipe, **kwargs)

    @classmethod
    def from_env(
        cls, env: Any, seed: int | None = None, preset: str | None = "planner", **kwargs: Any
    ) -> WorldModelPlanner:
        """A planner for `env` (single or vector), planning as `worldbagel rollout policy=planner` does.

        Keyword arguments not given come from the policy preset `preset` (configs/policy/planner.yaml: the shipped
        gridworld model, the `fast` sampler, generated latents re-entering as they are, horizon 2, `scorers:
        [auto]`, ...); `preset=None` starts from the bare defaults instead (the model's own sampler and world
        config, no scorers, the constructor's defaults). `model` is a preset name such as 'gridworld' or a
        mapping like {'name': 'tiny', 'path': DIR}, loaded with `sampler` and `world` unless a ready
        `world_model` is given (with the env's action codec); `scorers` may name task scorers
        ('gridworld_distance', or 'auto' for those that fit the env), give {'name', 'weight', ...} mappings,
        callables or (callable, weight) pairs. Every other keyword goes to the constructor."""
        world_model, space, kwargs = cls._from_env_parts(env, preset, kwargs)
        built = []
        for s in kwargs.pop("scorers", None) or ():
            if s == "auto":
                built.extend(auto_scorers(env))
            elif isinstance(s, str):
                built.append(make_scorer(s, env))
            elif isinstance(s, Mapping):
                s = dict(s)
                weight = float(s.pop("weight", 1.0))
                built.append((make_scorer(str(s.pop("name")), env, **s), weight))
            else:
                built.append(s)
        planner = cls(world_model, action_space=space, scorers=built, seed=seed, **kwargs)
        planner.observation_space = single_spaces(env)[0]
        planner.bind(env)
        return planner

    # ------------------------------------------------------------------ Policy protocol
    def reset(self, seed: int | None = None) -> None:
        """New episode in every env; `seed` reseeds the candidate sampling and the imagination noise."""
        if seed is not None or not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(seed)
            self._gen = torch.Generator().manual_seed(int(self._rng.integers(2**62)))
        for slot in self._slots:
            slot.new_episode = True

    def bind(self, env: Any) -> None:
        """Use `env` (single or vector) as a goal-image source when info and `goal` give none."""
        self._env_goal = goal_source_for_env(env)

    @property
    def last_plan(self) -> Plan | None:
        """The plan of env 0 at the latest step."""
        return self.last_plans[0] if self.last_plans else None

    def views(self, index: int = 0) -> dict[str, np.ndarray]:
        """Env `index`'s latest plan as images for a rollout video: the imagined next frame and the goal."""
        plan = self.last_plans[index] if index < len(self.last_plans) else None
        if plan is None:
            return {}
        out = {"imagined": np.asarray(plan.frames[0])}
        if plan.goal is not None and len(plan.goal):
            out["goal"] = np.asarray(plan.goal[0])
        return out

    # ------------------------------------------------------------------ closed loop
    def _act(self, observations: list, infos: list[dict]) -> list:
        worlds = self._observe_all(observations, infos)
        goals = [resolve_goal(info, self.goal, self._env_goal) for info in infos]
        if self.distance is not None and self.goal_weight != 0 and not self.scorers:
            missing = [i for i, g in enumerate(goals) if g is None]
            if missing:
                raise bad_argument(
                    "goal",
                    None,
                    f"env(s) {missing} have no goal image: pass goal=IMAGE or goal=callable(info), use an env "
                    "whose info has 'goal_image', or add task scorers",
                )
        plans = self.plan(worlds, goals, infos)
        self.last_plans = list(plans)
        actions = []
        for slot, plan in zip(self._slots, plans):
            slot.last_action = plan.actions[0]
            actions.append(plan.actions[0])
        return actions

    # ------------------------------------------------------------------ planning
    def plan(
        self, worlds: Sequence[WorldModel], goals: Sequence[np.ndarray | None], infos: Sequence[Mapping]
    ) -> list[Plan]:
        """Best plan for each history (one per env), searching all envs' candidates together."""
        method = self.method
        if method == "auto":
            small = isinstance(self.action_space, gym.spaces.Discrete)
            method = (
                "exhaustive"
                if small and int(self.action_space.n) ** self.horizon <= self.max_exhaustive
                else "cem"
            )
        if method == "exhaustive":
            jobs = self._exhaustive(worlds, goals)
            return self._choose(jobs, len(worlds), goals, infos)
        return self._cem(worlds, goals, infos)

    def _actions(self) -> list:
        s = self.action_space
        return [np.int64(s.start + i) for i in range(int(s.n))]

    def _imagine(
        self, jobs: list[_Job], steps: int, goals: Sequence[np.ndarray | None], first: int = 0
    ) -> None:
        """Advance every job by `steps` imagined frames (one batched call per frame) and score the frames.
        The horizon's last frame is not re-encoded into the forks' histories (nothing is predicted from it)."""
        worlds = [j.world for j in jobs]
        for t in range(first, first + steps):
            acts = [j.actions[t] for j in jobs]
            if t == self.horizon - 1:
                frames = predict_unabsorbed(worlds, acts, self._gen)
            else:
                frames = [fs[0] for fs in predict_batch(worlds, 1, [[a] for a in acts], self._gen)]
            for j, f in zip(jobs, frames):
                j.frames.append(f)
        self._distances(jobs, goals, range(first, first + steps))

    def _distances(self, jobs: list[_Job], goals: Sequence[np.ndarray | None], steps: range) -> None:
        if self.distance is None or self.goal_weight == 0:
            return
        for slot in sorted({j.slot for j in jobs}):
            goal = goals[slot]
            mine = [j for j in jobs if j.slot == slot]
            if goal is None:
                for j in mine:
                    j.dist.extend([0.0] * len(steps))
                continue
            stack = np.stack([j.frames[t] for j in mine for t in steps])  # [k * s, H, W, 3]
            d = (
                np.asarray(self.distance(stack, goal), dtype=np.float64)
                .min(axis=1)
                .reshape(len(mine), len(steps))
            )
            for j, row in zip(mine, d):
                j.dist.extend(row.tolist())

    def _exhaustive(self, worlds: Sequence[WorldModel], goals) -> list[_Job]:
        acts = self._actions()
        if not self.dedupe:
            jobs = [
                _Job(i, seq, w.fork(), [], [])
                for i, w in enumerate(worlds)
                for seq in itertools.product(acts, repeat=self.horizon)
            ]
            self._imagine(jobs, self.horizon, goals)
            return jobs
        level = [_Job(i, (), w, [], []) for i, w in enumerate(worlds)]
        for t in range(self.horizon):
            level = [
                _Job(p.slot, p.actions + (a,), p.world.fork(), list(p.frames), list(p.dist))
                for p in level
                for a in acts
            ]
            self._imagine(level, 1, goals, first=t)
        return level

    def _energy(self, job: _Job, info: Mapping) -> float:
        total = 0.0
        if job.dist:
            d = np.asarray(job.dist) + self.step_cost * np.arange(len(job.dist))
            agg = {"min": d.min, "final": lambda: d[-1], "mean": d.mean}[self.aggregate]()
            total += self.goal_weight * float(agg)
        if self.scorers:
            frames = np.stack(job.frames)
            for scorer, weight in self.scorers:
                total += weight * float(scorer(frames, list(job.actions), info))
        return total

    def _choose(self, jobs: list[_Job], n: int, goals, infos) -> list[Plan]:
        best: list[tuple[float, _Job] | None] = [None] * n
        counts = [0] * n
        for j in jobs:
            e = self._energy(j, infos[j.slot])
            counts[j.slot] += 1
            if best[j.slot] is None or e < best[j.slot][0]:
                best[j.slot] = (e, j)
        return [
            Plan(list(b[1].actions), b[0], np.stack(b[1].frames), goals[i], counts[i])
            for i, b in enumerate(best)
        ]

    def _cem(self, worlds: Sequence[WorldModel], goals, infos) -> list[Plan]:
        space, n, T = self.action_space, len(worlds), self.horizon
        discrete = isinstance(space, gym.spaces.Discrete)
        if discrete:
            probs = [np.full((T, int(space.n)), 1.0 / int(space.n)) for _ in range(n)]
        else:
            low, high = _bounds(space)
            mean = [np.broadcast_to((low + high) / 2, (T, *space.shape)).astype(np.float64) for _ in range(n)]
            std = [np.broadcast_to((high - low) / 2, (T, *space.shape)).astype(np.float64) for _ in range(n)]
        best: list[tuple[float, _Job] | None] = [None] * n
        counts = [0] * n
        for _ in range(self.iterations):
            jobs = []
            for i, w in enumerate(worlds):
                for _k in range(self.population):
                    if discrete:
                        idx = [int(self._rng.choice(int(space.n), p=probs[i][t])) for t in range(T)]
                        seq = tuple(np.int64(space.start + k) for k in idx)
                    else:
                        x = self._rng.normal(mean[i], std[i])
                        seq = tuple(np.clip(x, low, high).astype(space.dtype))
                    jobs.append(_Job(i, seq, w.fork(), [], []))
            self._imagine(jobs, T, goals)
            for i in range(n):
                mine = [j for j in jobs if j.slot == i]
                energies = np.array([self._energy(j, infos[i]) for j in mine])
                counts[i] += len(mine)
                order = np.argsort(energies, kind="stable")
                if best[i] is None or energies[order[0]] < best[i][0]:
                    best[i] = (float(energies[order[0]]), mine[order[0]])
                elite = [mine[k].actions for k in order[: self.elites]]
                a = self.smoothing
                if discrete:
                    freq = np.zeros_like(probs[i])
                    for seq in elite:
                        for t, act in enumerate(seq):
                            freq[t, int(act) - int(space.start)] += 1.0 / len(elite)
                    probs[i] = (1 - a) * probs[i] + a * freq
                else:
                    e = np.stack([np.stack(seq) for seq in elite]).astype(np.float64)  # [elites, T, ...]
                    mean[i] = (1 - a) * mean[i] + a * e.mean(axis=0)
                    std[i] = np.maximum((1 - a) * std[i] + a * e.std(axis=0), 1e-3)
            for j in jobs:
                j.world = None  # free the forks' caches between iterations
        return [
            Plan(list(b[1].actions), b[0], np.stack(b[1].frames), goals[i], counts[i])
            for i, b in enumerate(best)
        ]

    def __repr__(self) -> str:
        return (
            f"WorldModelPlanner(horizon={self.horizon}, method={self.method!r}, aggregate={self.aggregate!r}, "
            f"scorers={len(self.scorers)})"
        )


def predict_unabsorbed(
    worlds: Sequence[WorldModel], actions: Sequence[Any], generator=None
) -> list[np.ndarray]:
    """Append one action to each world and predict the next frame of all of them in ONE batched sampling
    call, without re-encoding the frames into the histories (the planner's last imagined step). The worlds
    are left with the action appended and no frame after it."""
    if not worlds:
        return []
    outs = predict_batch(list(worlds), 1, [[a] for a in actions], generator, absorb=False)
    return [o[0] for o in outs]


def _weighted(scorer: Any) -> tuple[Callable, float]:
    if isinstance(scorer, tuple) and len(scorer) == 2 and callable(scorer[0]):
        return scorer[0], float(scorer[1])
    if callable(scorer):
        return scorer, 1.0
    raise bad_argument(
        "scorers", scorer, "give callables scorer(frames, actions, info) or (scorer, weight) pairs"
    )


def _bounds(space: gym.spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise bad_argument("action_space", space, "CEM needs a bounded Box; give finite low/high")
    return low, high


def _space_from_codec(world_model: WorldModel) -> gym.Space:
    vocab = getattr(world_model.codec, "vocabulary", None)
    if not vocab:
        raise bad_argument("action_space", None, "give the env's action space (the codec has no vocabulary)")
    return gym.spaces.Discrete(len(vocab))
