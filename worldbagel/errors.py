"""Exceptions raised by worldbagel.

Every error says which argument or file is wrong, shows the value, and says how to fix it.
"""

from __future__ import annotations


class WorldBagelError(Exception):
    """Base class of every error worldbagel raises on purpose."""


class ConfigError(WorldBagelError, ValueError):
    """A configuration value or function argument is invalid."""


class CheckpointError(WorldBagelError):
    """A model folder or weights file is missing, corrupt, or does not match the model."""


class DependencyNotInstalled(WorldBagelError, ImportError):
    """An optional dependency (habitat-sim, miniworld, lpips, peft, ...) is not importable."""


class InvalidAction(WorldBagelError, ValueError):
    """An action (or action text) is not part of an action space / codec vocabulary."""


def bad_argument(name: str, value: object, fix: str) -> ConfigError:
    """Build the standard "argument X has value Y; fix" error."""
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return ConfigError(f"invalid {name}={shown}: {fix}")
