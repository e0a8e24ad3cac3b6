"""Policies that RL code imports: `from worldbagel.policies import ...`.

Exports the `Policy` protocol and the baseline policies:

- `RandomPolicy(action_space, seed)`: uniform random, seeded and deterministic.
- `OraclePolicy(env)`: ground-truth expert (GridWorld BFS, habitat geodesic follower, greedy nav follower).
- `ScriptedPolicy(actions, codec)`: replays a list of actions or action texts.
- `make_policy(name, env, seed, **kwargs)` / `register_policy(name, "module:factory")`: policies by name.

Every policy also has Stable-Baselines3's `predict(observation, state, episode_start, deterministic)`, so SB3's
`evaluate_policy` runs it on an env or a VecEnv (docs/rl.md).

World-model policies (they import torch, so they load on first access):

- `WorldModelPlanner(world_model, ...)`: MPC over imagined rollouts (exhaustive / CEM), goal-image energy.
- `ReasoningPolicy(world_model, ...)`: asks the world model which action to take, parses the answer.
"""

import importlib

from worldbagel.policies.base import BasePolicy, Policy, split_vector_infos
from worldbagel.policies.oracle import OraclePolicy
from worldbagel.policies.random_policy import RandomPolicy
from worldbagel.policies.registry import POLICIES, make_policy, register_policy
from worldbagel.policies.scripted import ScriptedPolicy

_LAZY = {
    "WorldModelPlanner": "worldbagel.policies.planner",
    "ReasoningPolicy": "worldbagel.policies.reasoning",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "POLICIES",
    "BasePolicy",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "ReasoningPolicy",
    "ScriptedPolicy",
    "WorldModelPlanner",
    "make_policy",
    "register_policy",
    "split_vector_infos",
]
