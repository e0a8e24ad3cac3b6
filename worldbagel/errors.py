"""Exceptions raised by worldbagel.

Every error says which argument or file is wrong, shows the value, and says how to fix it.
"""

from __future__ import annotations

import errno


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


_OS_ERROR_FIX = {
    errno.ENOSPC: "the disk is full: free space there, or write to another folder (out=...)",
    errno.EDQUOT: "the disk quota is exhausted: free space there, or write to another folder (out=...)",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: write to another folder (out=...)",
    errno.ENOENT: "no such file or folder: check the path",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError that names the path, the cause and the fix (no traceback)."""
    where = exc.filename if exc.filename is not None else "(path unknown)"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    fix = _OS_ERROR_FIX.get(exc.errno, "check the path and the disk")
    cause = exc.strerror or str(exc)
    return f"{where}: {cause}; {fix}. Files finished before the error are complete (atomic writes)"
