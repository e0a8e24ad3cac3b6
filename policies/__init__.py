"""Policies that RL code imports: `from worldbagel.policies import ...`.

Exports the `Policy` protocol and the baseline policies:

- `RandomPolicy(action_space, seed)`: uniform random, seeded and deterministic.
- `OraclePolicy(env)`: ground-truth expert (GridWorld BFS, habitat geodesic follower, greedy nav follower).
- `ScriptedPolicy(actions, codec)`: replays a list of actions or action texts.
- `make_policy(name, env, seed, **kwargs)` / `register_policy(name, "module:factory")`: policies by name.

World-model policies (planner, reasoning) live in their own modules and register themselves by name.
"""

from worldbagel.policies.base import BasePolicy, Policy, split_vector_infos
from worldbagel.policies.oracle import OraclePolicy
from worldbagel.policies.random_policy import RandomPolicy
from worldbagel.policies.registry import POLICIES, make_policy, register_policy
from worldbagel.policies.scripted import ScriptedPolicy

__all__ = [
    "POLICIES",
    "BasePolicy",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "ScriptedPolicy",
    "make_policy",
    "register_policy",
    "split_vector_infos",
]
