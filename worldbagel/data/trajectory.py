"""The on-disk episode format: write episodes atomically, read and validate them.

A dataset is a folder (full description with examples in docs/data-format.md):

    <root>/index.json                 {"format": "worldbagel-trajectories", "version": 1, "episodes": [...]}
    <root>/<episode_id>/episode.json  metadata (env id, split, seed, length, frame shape, codec, return, ...)
    <root>/<episode_id>/steps.jsonl   one JSON object per step t = 0..T-1
    <root>/<episode_id>/frames/000000.png ... frames/{T:06d}.png    T+1 RGB frames (obs before step 0 ...
                                                                   obs after step T-1)
    <root>/<episode_id>/preview.mp4   optional

Shapes: `Episode.frames` is uint8 [T+1, H, W, 3]; `actions`, `action_texts`, `rewards`, `terminated`,
`truncated`, `annotations` have length T; `infos` has length T+1 (reset info, then one per step).

Writing (worldbagel/data/episode_writer.py, re-exported here): `EpisodeWriter` streams frames into a hidden temp folder inside `root`; `finish()` writes the
json files, renames the folder into place and then updates `index.json` (temp file + os.replace, under an
flock when available; worldbagel/data/trajectory_index.py). A crash leaves either the old index or the new one, never a torn file; a folder
renamed into place whose index update was lost is picked up again by `rebuild_index`.

Reading: `TrajectoryDataset(root)` checks every indexed episode (folder, json, step count, frame files,
frame size, steps.jsonl size/checksum) and skips a bad one with a logger warning, listing it in
`dataset.skipped`; frames are loaded lazily, and a frame that fails to decode raises `CorruptEpisode`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from worldbagel.data.episode_writer import FRAME_EXTS, EpisodeWriter
from worldbagel.data.trajectory_index import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX,
    CorruptEpisode,
    index_lock,
    read_index,
    sha256_file,
    write_index,
)
from worldbagel.errors import bad_argument
from worldbagel.json_values import to_jsonable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FRAME_EXTS",
    "CorruptEpisode",
    "Episode",
    "EpisodeWriter",
    "TrajectoryDataset",
    "load_episode",
    "read_index",
    "rebuild_index",
    "remove_partial",
    "to_jsonable",
]

logger = logging.getLogger(__name__)

ANNOTATION_KEYS = ("instruction", "qa", "thought", "outcome")


@dataclass
class Episode:
    """One episode in memory; frames are read from disk on first access of `frames`."""

    id: str
    actions: list[Any]
    action_texts: list[str]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    infos: list[dict[str, Any]]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    env_id: str = ""
    split: str = ""
    seed: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    frame_paths: list[Path] | None = None
    frame_size: tuple[int, int] | None = None
    """(H, W) to resize frames to on load; None keeps the stored size."""
    path: Path | None = None
    _frames: np.ndarray | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        """Number of steps T (there are T+1 frames)."""
        return len(self.actions)

    @property
    def frames(self) -> np.ndarray:
        """uint8 [T+1, H, W, 3], loaded (and cached) on first access."""
        if self._frames is None:
            if self.frame_paths is None:
                raise CorruptEpisode(f"episode {self.id} has neither frames in memory nor frame files")
            self._frames = np.stack([self.load_frame(t) for t in range(len(self.frame_paths))])
        return self._frames

    def load_frame(self, t: int) -> np.ndarray:
        """Frame t as uint8 [H, W, 3] (from the cache if loaded, else from its file)."""
        if self._frames is not None:
            return self._frames[t]
        path = self.frame_paths[t]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if self.frame_size is not None and im.size != (self.frame_size[1], self.frame_size[0]):
                    im = im.resize((self.frame_size[1], self.frame_size[0]), Image.BILINEAR)
                frame = np.asarray(im)
        except (OSError, ValueError) as exc:
            raise CorruptEpisode(f"episode {self.id}: frame {path} cannot be decoded ({exc})") from exc
        expected = self.metadata.get("frame_shape")
        if self.frame_size is None and expected and list(frame.shape) != list(expected):
            raise CorruptEpisode(
                f"episode {self.id}: frame {path} has shape {frame.shape}, expected {expected}"
            )
        return frame

    @classmethod
    def from_arrays(
        cls,
        id: str,
        frames: np.ndarray,
        actions: Sequence[Any],
        action_texts: Sequence[str],
        rewards: Sequence[float] | None = None,
        infos: Sequence[dict] | None = None,
        **kwargs: Any,
    ) -> Episode:
        """An in-memory episode (frames [T+1,H,W,3]); rewards default to 0 and infos to empty dicts."""
        t = len(actions)
        frames = np.asarray(frames, dtype=np.uint8)
        if frames.shape[0] != t + 1 or len(action_texts) != t:
            raise bad_argument(
                "frames", frames.shape, f"need T+1={t + 1} frames and {t} action texts for {t} actions"
            )
        return cls(
            id=id,
            actions=list(actions),
            action_texts=list(action_texts),
            rewards=np.asarray(rewards if rewards is not None else np.zeros(t), np.float32),
            terminated=np.zeros(t, bool),
            truncated=np.zeros(t, bool),
            infos=list(infos) if infos is not None else [{} for _ in range(t + 1)],
            _frames=frames,
            **kwargs,
        )


class TrajectoryDataset(Sequence):
    """The valid episodes of a trajectory folder; bad ones are skipped, warned about and listed.

    `verify="fast"` (default) checks structure and sizes; `verify="full"` also hashes steps.jsonl and
    decodes every frame. `splits` keeps only episodes of those splits. `dataset.skipped` lists
    `(episode_id, reason)` for every indexed episode that failed validation.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        verify: str = "fast",
        splits: Sequence[str] | None = None,
        frame_size: tuple[int, int] | None = None,
    ):
        if verify not in ("fast", "full"):
            raise bad_argument("verify", verify, "use 'fast' or 'full'")
        self.root = Path(root)
        if not (self.root / INDEX).is_file():
            raise bad_argument(
                "root",
                str(self.root),
                f"no {INDEX} there; give a folder written by EpisodeWriter / `worldbagel collect`",
            )
        self.frame_size = frame_size
        self.episodes: list[Episode] = []
        self.skipped: list[tuple[str, str]] = []
        for entry in read_index(self.root):
            eid = str(entry.get("id", "?"))
            if splits is not None and entry.get("split") not in splits:
                continue
            try:
                self.episodes.append(self._load(entry, verify))
            except (CorruptEpisode, OSError, ValueError, KeyError, TypeError) as exc:
                reason = str(exc)
                logger.warning("skipping episode %s of %s: %s", eid, self.root, reason)
                self.skipped.append((eid, reason))

    def _load(self, entry: Mapping[str, Any], verify: str) -> Episode:
        return load_episode(self.root / str(entry["id"]), entry, verify=verify, frame_size=self.frame_size)

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> Episode:  # type: ignore[override]
        return self.episodes[i]

    @property
    def ids(self) -> list[str]:
        """Ids of the valid episodes, in index order."""
        return [e.id for e in self.episodes]


def load_episode(
    folder: str | os.PathLike,
    entry: Mapping[str, Any] | None = None,
    verify: str = "fast",
    frame_size: tuple[int, int] | None = None,
) -> Episode:
    """Read and validate one episode folder (against its index `entry` when given)."""
    folder = Path(folder)
    eid = folder.name
    if not folder.is_dir():
        raise CorruptEpisode(f"episode folder {folder} is missing")
    try:
        meta = json.loads((folder / "episode.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CorruptEpisode(f"{folder / 'episode.json'} is missing") from exc
    except json.JSONDecodeError as exc:
        raise CorruptEpisode(f"{folder / 'episode.json'} is not valid JSON ({exc})") from exc
    length = int(meta["length"])
    if entry is not None and int(entry.get("length", length)) != length:
        raise CorruptEpisode(
            f"episode {eid}: index says {entry.get('length')} steps, episode.json says {length}"
        )
    steps_path = folder / "steps.jsonl"
    if not steps_path.is_file():
        raise CorruptEpisode(f"{steps_path} is missing")
    if (
        entry is not None
        and "steps_bytes" in entry
        and steps_path.stat().st_size != int(entry["steps_bytes"])
    ):
        raise CorruptEpisode(
            f"{steps_path} has {steps_path.stat().st_size} bytes, the index recorded {entry['steps_bytes']}"
        )
    if (
        verify == "full"
        and entry is not None
        and "steps_sha256" in entry
        and sha256_file(steps_path) != entry["steps_sha256"]
    ):
        raise CorruptEpisode(f"{steps_path} does not match the checksum in the index")
    steps = []
    with open(steps_path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                steps.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptEpisode(f"{steps_path} line {n + 1} is not valid JSON ({exc})") from exc
    if len(steps) != length:
        raise CorruptEpisode(f"{steps_path} has {len(steps)} steps, episode.json says {length}")
    if [s.get("t") for s in steps] != list(range(length)):
        raise CorruptEpisode(f"{steps_path}: step numbers are not 0..{length - 1} in order")
    ext = meta.get("frame_format", "png")
    frame_paths = [folder / "frames" / f"{t:06d}.{ext}" for t in range(length + 1)]
    missing = [p.name for p in frame_paths if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise CorruptEpisode(
            f"episode {eid}: {len(missing)} frame file(s) missing or empty, e.g. frames/{missing[0]}"
        )
    extra = len(list((folder / "frames").iterdir())) - len(frame_paths)
    if extra:
        raise CorruptEpisode(
            f"episode {eid}: frames/ holds {extra} file(s) more than the {length + 1} expected"
        )
    expected = meta.get("frame_shape")
    to_check = frame_paths if verify == "full" else frame_paths[:1]
    for p in to_check:
        try:
            with Image.open(p) as im:
                size = [im.size[1], im.size[0], 3]
                if verify == "full":
                    im.load()
        except (OSError, ValueError) as exc:
            raise CorruptEpisode(f"episode {eid}: frame {p} cannot be decoded ({exc})") from exc
        if expected and size != list(expected):
            raise CorruptEpisode(f"episode {eid}: frame {p} is {size}, episode.json says {expected}")
    infos = [meta.get("reset_info", {})] + [s.get("info", {}) for s in steps]
    return Episode(
        id=str(meta.get("id", eid)),
        actions=[s["action"] for s in steps],
        action_texts=[str(s.get("action_text", "")) for s in steps],
        rewards=np.array([float(s.get("reward", 0.0)) for s in steps], np.float32),
        terminated=np.array([bool(s.get("terminated", False)) for s in steps], bool),
        truncated=np.array([bool(s.get("truncated", False)) for s in steps], bool),
        infos=infos,
        annotations=[{k: s[k] for k in ANNOTATION_KEYS if k in s} for s in steps],
        env_id=str(meta.get("env_id", "")),
        split=str(meta.get("split", "")),
        seed=meta.get("seed"),
        metadata=meta,
        frame_paths=frame_paths,
        frame_size=frame_size,
        path=folder,
    )


def remove_partial(root: str | os.PathLike) -> int:
    """Delete leftovers of interrupted writers (hidden `.tmp-*` / `.trash-*` folders); returns how many."""
    root = Path(root)
    if not root.is_dir():
        return 0
    stale = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((".tmp-", ".trash-"))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def rebuild_index(root: str | os.PathLike) -> list[str]:
    """Re-create index.json from the episode folders that validate; returns the ids it indexed.

    Use after a crash between an episode's rename and its index update, or when index.json is lost.
    Invalid folders are left alone and logged.
    """
    root = Path(root)
    entries, ids = [], []
    with index_lock(root):
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                ep = load_episode(folder, verify="full")
            except (CorruptEpisode, OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("not indexing %s: %s", folder, exc)
                continue
            steps_path = folder / "steps.jsonl"
            m = ep.metadata
            entries.append(
                {
                    "id": ep.id,
                    "env_id": ep.env_id,
                    "split": ep.split,
                    "seed": ep.seed,
                    "length": ep.length,
                    "num_frames": ep.length + 1,
                    "frame_shape": m.get("frame_shape"),
                    "return": m.get("return"),
                    "success": m.get("success"),
                    "steps_bytes": steps_path.stat().st_size,
                    "steps_sha256": sha256_file(steps_path),
                    "frames_bytes": sum(p.stat().st_size for p in ep.frame_paths),
                }
            )
            ids.append(ep.id)
        write_index(root, entries)
    return ids
