"""Policies by name, for the CLI and configs: `make_policy("oracle", env, seed=0, **kwargs)`, with the policy's
yaml preset (configs/policy/<name>.yaml) as defaults under `kwargs`.

Each entry maps a name to `"module:attribute"` of a factory called as `factory(env, seed=seed, **kwargs)`
(the policy classes' `from_env` classmethods). Modules are imported only when the policy is made. Other
parts of worldbagel add their policies with `register_policy` (e.g. the world-model planner).
"""

from __future__ import annotations

import importlib
import inspect
from importlib import resources
from typing import Any

from omegaconf import OmegaConf

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
    merged = {**preset_kwargs(name), **kwargs}
    _check_kwargs(name, factory, merged)
    return factory(env, seed=seed, **merged)


def _check_kwargs(name: str, factory: Any, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments the policy does not take, naming them and the ones it does (before building,
    so a typo in `policy.kwargs.<key>` is not a TypeError from deep inside the constructor)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        known = sorted(
            k
            for k, p in params.items()
            if k not in ("self", "env", "seed") and p.kind is not p.VAR_POSITIONAL
        )
        raise bad_argument(
            f"policy.kwargs.{unknown[0]}",
            kwargs[unknown[0]],
            f"policy '{name}' takes {known or 'no keyword arguments'}",
        )


def preset_kwargs(name: str, required: bool = False) -> dict[str, Any]:
    """The `kwargs` of the policy's yaml preset (configs/policy/<name>.yaml), {} when it has none (an error
    with `required`): what `worldbagel rollout policy=<name>` uses, so `make_policy(name, env)` builds the same
    policy; keyword arguments given to `make_policy` win over them."""
    folder = resources.files("worldbagel.configs") / "policy"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        if required:
            names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
            raise bad_argument("preset", name, f"use one of {names} (configs/policy/*.yaml) or None")
        return {}
    return dict(OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True).get("kwargs") or {})
