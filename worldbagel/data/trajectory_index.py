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
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from worldbagel.atomic_files import atomic_write_text
from worldbagel.errors import WorldBagelError
from worldbagel.json_values import to_jsonable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX",
    "CorruptEpisode",
    "index_lock",
    "info_subset",
    "read_index",
    "sha256_file",
    "update_index",
    "write_index",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "worldbagel-trajectories"
FORMAT_VERSION = 1
INDEX = "index.json"


class CorruptEpisode(WorldBagelError):
    """An episode on disk is incomplete or does not match its metadata."""


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
        import fcntl  # lazy: POSIX only (there is no fcntl on Windows)
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
    dump goes through the pure-Python one, which dominates the time of a collection that rewrites a large index)."""
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
