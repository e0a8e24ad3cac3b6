"""Policies by name, for the CLI and configs: `make_policy("oracle", env, seed=0, **kwargs)`, with the policy's
yaml preset (configs/policy/<name>.yaml) as defaults under `kwargs`.

Each entry maps a name to `"module:attribute"` of a factory called as `factory(env, seed=seed, **kwargs)`
(the policy classes' `from_env` classmethods). Modules are imported only when the policy is made. Other
parts of worldbagel add their policies with `register_policy` (e.g. the world-model planner).
"""

from __future__ import annotations

import importlib
from typing import Any

from worldbagel.errors import bad_argument
from worldbagel.policies.base import Policy

__all__ = ["POLICIES", "make_policy", "preset_kwargs", "register_policy"]

POLICIES: dict[str, str] = {
    "random": "worldbagel.policies.random_policy:RandomPolicy.from_env",
    "oracle": "worldbagel.policies.oracle:OraclePolicy.from_env",
    "scripted": "worldbagel.policies.scripted:ScriptedPolicy.from_env",
    "planner": "worldbagel.policies.planner:WorldModelPlanner.from_env",
    "reasoning": "worldbagel.policies.reasoning:ReasoningPolicy.from_env",
}


def register_policy(name: str, target: str) -> None:
    """Add (or replace) a policy factory, given as `"package.module:Class.from_env"`."""
    if ":" not in target:
        raise bad_argument(
            "target", target, "use 'package.module:attribute' (e.g. 'mypkg.pol:MyPolicy.from_env')"
        )
    POLICIES[name] = target


def make_policy(name: str, env: Any, seed: int | None = None, **kwargs: Any) -> Policy:
    """Build the policy `name` for `env` (single or vector)."""
    if name not in POLICIES:
        raise bad_argument("policy", name, f"use one of {sorted(POLICIES)}")
    module, _, attr = POLICIES[name].partition(":")
    factory: Any = importlib.import_module(module)
    for part in attr.split("."):
        factory = getattr(factory, part)
    return factory(env, seed=seed, **{**preset_kwargs(name), **kwargs})


def preset_kwargs(name: str, required: bool = False) -> dict[str, Any]:
    """The `kwargs` of the policy's yaml preset (configs/policy/<name>.yaml), {} when it has none (an error
    with `required`): what `worldbagel rollout policy=<name>` uses, so `make_policy(name, env)` builds the same
    policy; keyword arguments given to `make_policy` win over them."""
    from importlib import resources

    from omegaconf import OmegaConf

    folder = resources.files("worldbagel.configs") / "policy"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        if required:
            names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
            raise bad_argument("preset", name, f"use one of {names} (configs/policy/*.yaml) or None")
        return {}
    return dict(OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True).get("kwargs") or {})
