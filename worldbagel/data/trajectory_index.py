"""The index and JSON side of the trajectory format (see worldbagel/data/trajectory.py, docs/data-format.md).

`index.json` is read and written only here: writes are atomic (temp file + fsync + os.replace) and the
read-modify-write of an update holds an flock on `<root>/.index.lock`, so concurrent writers in one
dataset never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldbagel.errors import WorldBagelError
from worldbagel.file_mode import mkstemp

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX",
    "MAX_INFO_ARRAY",
    "CorruptEpisode",
    "atomic_write_text",
    "index_lock",
    "info_subset",
    "read_index",
    "sha256_file",
    "to_jsonable",
    "update_index",
    "write_index",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "worldbagel-trajectories"
FORMAT_VERSION = 1
INDEX = "index.json"
MAX_INFO_ARRAY = 4096
"""Info arrays with more elements than this (depth maps, images) are not stored in steps.jsonl."""


class CorruptEpisode(WorldBagelError):
    """An episode on disk is incomplete or does not match its metadata."""


# ---------------------------------------------------------------------------------------------------
# JSON helpers


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to JSON types; raises TypeError for anything else."""
    if _depth > 20:
        raise TypeError("nesting too deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        if value.size > MAX_INFO_ARRAY:
            raise TypeError(f"array of {value.size} elements is too large for steps.jsonl")
        return to_jsonable(value.tolist(), _depth + 1)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, _depth + 1) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def info_subset(info: Mapping[str, Any] | None, keys: Sequence[str] | None) -> dict[str, Any]:
    """The JSON-able part of an env info dict (optionally only `keys`); large arrays/objects are dropped."""
    out: dict[str, Any] = {}
    for k, v in (info or {}).items():
        if keys is not None and k not in keys:
            continue
        try:
            out[str(k)] = to_jsonable(v)
        except TypeError as exc:
            logger.debug("info[%r] not stored: %s", k, exc)
    return out


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def index_lock(root: Path) -> Iterator[None]:
    """Exclusive lock around index read-modify-write (flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(root / ".index.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_index(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The episode entries of `<root>/index.json` ([] when there is no index yet)."""
    path = Path(root) / INDEX
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptEpisode(
            f"{path} is not valid JSON ({exc}); run worldbagel.data.trajectory.rebuild_index({str(root)!r})"
        ) from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT_NAME
        or not isinstance(data.get("episodes"), list)
    ):
        raise CorruptEpisode(f"{path} is not a {FORMAT_NAME} index (needs 'format' and an 'episodes' list)")
    if int(data.get("version", 0)) > FORMAT_VERSION:
        raise CorruptEpisode(
            f"{path} has format version {data.get('version')}; this worldbagel reads <= {FORMAT_VERSION}"
        )
    return list(data["episodes"])


def write_index(root: Path, entries: list[dict[str, Any]]) -> None:
    """Write index.json atomically, one episode entry per line (each line by json's C encoder: an indented
    dump goes through the pure-Python one, which made a 1,500-episode collection spend 90 % of its time here)."""
    head = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION})[:-1]
    lines = ",\n".join(json.dumps(e) for e in entries)
    atomic_write_text(root / INDEX, f'{head}, "episodes": [\n{lines}\n]}}\n')


def update_index(root: Path, entries: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    """Add (or replace, by id) one entry or several to index.json, in one locked read-modify-write."""
    new = [dict(entries)] if isinstance(entries, Mapping) else [dict(e) for e in entries]
    if not new:
        return
    ids = {e["id"] for e in new}
    with index_lock(root):
        kept = [e for e in read_index(root) if e.get("id") not in ids]
        merged = sorted(kept + new, key=lambda e: str(e.get("id")))
        write_index(root, merged)
