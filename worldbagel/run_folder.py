"""A command's run folder: its default name, and the resolved config saved in it when the run starts.

Every command that writes a run folder (rollout, collect, predict, imagine, eval, finetune, train-vae) opens it
with `run_folder(out, cfg, command)`, which writes, atomically and before any work:

- `config.yaml`: the command's whole resolved config (every default filled in, `out` set to the folder), the
  equivalent of Hydra's `.hydra/config.yaml`;
- `overrides.yaml`: the command and the overrides given on the command line (`command:`, `overrides:`), so
  `worldbagel <command> <overrides...>` repeats the run. The CLI names them with `invocation(...)`; a run
  started from Python has no command line, and writes config.yaml alone.

A run that resumes in the same folder (collect) rewrites both: they describe the latest run.

In a folder that has a writer lock (worldbagel/folder_lock.py: collect, finetune, train-vae and eval hold one
while they run) both are written while holding it, so a second run, refused because the folder is busy, does
not overwrite the config of the run that holds it. A run that fails before writing anything else (a bad env
id, a missing model) leaves no folder behind when it created it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from worldbagel.atomic_files import atomic_write_text
from worldbagel.folder_lock import LOCK_NAME, exclusive_folder

__all__ = ["CONFIG_FILE", "OVERRIDES_FILE", "config_yaml", "default_run_dir", "invocation", "run_folder"]

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"

_INVOCATION: contextvars.ContextVar[tuple[str, tuple[str, ...]] | None] = contextvars.ContextVar(
    "worldbagel_invocation", default=None
)


def default_run_dir(prefix: str) -> Path:
    """runs/<prefix>-<timestamp>, with a numeric suffix if that folder already exists."""
    base = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


@contextlib.contextmanager
def invocation(command: str, overrides: Sequence[str]) -> Iterator[None]:
    """Within the block, run folders record `worldbagel <command> <overrides...>` in overrides.yaml."""
    token = _INVOCATION.set((command, tuple(overrides)))
    try:
        yield
    finally:
        _INVOCATION.reset(token)


def config_yaml(cfg: Any, folder: str | Path | None = None) -> str:
    """A command's config dataclass as yaml; with `folder`, its `out` field says that folder."""
    doc = OmegaConf.structured(cfg)
    if folder is not None and dataclasses.is_dataclass(cfg) and "out" in doc:
        doc.out = str(folder)
    return OmegaConf.to_yaml(doc)


def _overrides_yaml(command: str, overrides: Sequence[str]) -> str:
    line = " ".join(["worldbagel", command, *overrides])
    return f"# {line}\n" + OmegaConf.to_yaml({"command": command, "overrides": list(overrides)})


@contextlib.contextmanager
def run_folder(folder: str | Path, cfg: Any, command: str, exclusive: bool = False) -> Iterator[Path]:
    """Create `folder` if needed, write config.yaml (and overrides.yaml) into it, and yield it.

    `exclusive=True` holds the folder's writer lock for the whole block (eval, train-vae: the command is the
    only writer); otherwise the lock is held only while the config is written, and the library function that
    writes the folder (collect, the trainer) takes it for the run. When the block raises and the folder was
    created here and holds nothing but these files, it is removed: a failed start leaves no run folder behind.
    """
    path = Path(folder)
    created = not path.exists()
    ours = {CONFIG_FILE, LOCK_NAME}
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        lock = stack.enter_context(exclusive_folder(path, command)) if exclusive else None
        brief = (path / LOCK_NAME).exists() and lock is None
        with exclusive_folder(path, command) if brief else contextlib.nullcontext():
            atomic_write_text(path / CONFIG_FILE, config_yaml(cfg, path))
            given = _INVOCATION.get()
            if given is not None:
                atomic_write_text(path / OVERRIDES_FILE, _overrides_yaml(*given))
                ours.add(OVERRIDES_FILE)
        try:
            yield path
        except BaseException:
            if created and path.is_dir() and {p.name for p in path.iterdir()} <= ours:
                shutil.rmtree(path, ignore_errors=True)
            raise
