"""`EpisodeWriter`: stream one episode into the trajectory format and publish it atomically.

Frames are written as they arrive into a hidden `<root>/.tmp-<id>-*` folder; `finish()` writes
episode.json, renames the folder to `<root>/<id>` and then adds the entry to index.json. A crash before
the rename leaves only the hidden folder (`remove_partial` cleans it); a crash between rename and index
update leaves a complete folder that `rebuild_index` picks up. Format: docs/data-format.md.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from worldbagel.data.trajectory_index import info_subset, sha256_file, update_index
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.file_mode import mkdtemp
from worldbagel.json_values import to_jsonable
from worldbagel.video import write_video

__all__ = ["FRAME_EXTS", "EpisodeWriter"]

FRAME_EXTS = ("png", "jpg")


class EpisodeWriter:
    """Write one episode: `start(obs, info)`, `add_step(...)` per env step, then `finish()`.

    Frames go to disk as they arrive (memory stays flat). Use as a context manager so an exception
    discards the half-written episode (`abort()`) instead of leaving it behind:

        with EpisodeWriter(root, "ep-000003", env_id="WorldBagel/GridWorld-v0", seed=3) as w:
            w.start(obs, info)
            ...
            w.add_step(action, obs, reward, terminated, truncated, info, action_text="move up")
            entry = w.finish()
    """

    def __init__(
        self,
        root: str | os.PathLike,
        episode_id: str,
        env_id: str = "",
        split: str = "train",
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        frame_format: str = "png",
        info_keys: Sequence[str] | None = None,
        preview_fps: float | None = None,
        index: bool = True,
    ):
        """`index=False`: `finish()` publishes the folder but leaves index.json to the caller, who adds the
        returned entries in batches with `update_index(root, entries)` (what `collect` does: one index rewrite
        per episode costs O(episodes) each, quadratic over a large collection)."""
        if (
            not episode_id
            or "/" in episode_id
            or episode_id.startswith(".")
            or episode_id != episode_id.strip()
        ):
            raise bad_argument("episode_id", episode_id, "use a plain folder name such as 'ep-000001'")
        if frame_format not in FRAME_EXTS:
            raise bad_argument("frame_format", frame_format, f"use one of {FRAME_EXTS}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.episode_id = episode_id
        self.env_id = env_id
        self.split = split
        self.seed = seed
        self.metadata = to_jsonable(dict(metadata or {}))
        self.frame_format = frame_format
        self.info_keys = None if info_keys is None else tuple(info_keys)
        self.preview_fps = preview_fps
        self.index = bool(index)
        self._tmp = Path(mkdtemp(prefix=f".tmp-{episode_id}-", dir=self.root))
        (self._tmp / "frames").mkdir()
        self._steps = open(self._tmp / "steps.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - closed in finish/abort
        self._frame_shape: tuple[int, ...] | None = None
        self._num_frames = 0
        self._length = 0
        self._return = 0.0
        self._reset_info: dict[str, Any] = {}
        self._last_info: dict[str, Any] = {}
        self._done = False
        self._finished = False
        self._preview: list[np.ndarray] = []

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()

    @property
    def length(self) -> int:
        """Steps written so far."""
        return self._length

    def _write_frame(self, obs: Any) -> None:
        frame = np.asarray(obs)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=-1)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise bad_argument(
                "obs",
                f"array {frame.shape} {frame.dtype}",
                "frames must be uint8 RGB [H, W, 3] (select the image)",
            )
        if self._frame_shape is None:
            self._frame_shape = frame.shape
        elif frame.shape != self._frame_shape:
            raise bad_argument("obs", frame.shape, f"every frame of an episode must be {self._frame_shape}")
        path = self._tmp / "frames" / f"{self._num_frames:06d}.{self.frame_format}"
        if self.frame_format == "png":
            Image.fromarray(frame).save(path, compress_level=1)
        else:
            Image.fromarray(frame).save(path, quality=95)
        if self.preview_fps:
            self._preview.append(frame)
        self._num_frames += 1

    def start(self, obs: Any, info: Mapping[str, Any] | None = None) -> None:
        """Record the reset observation (frame 0) and reset info."""
        if self._num_frames:
            raise WorldBagelError(f"episode {self.episode_id}: start() was already called")
        self._write_frame(obs)
        self._reset_info = info_subset(info, self.info_keys)

    def add_step(
        self,
        action: Any,
        obs: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any] | None = None,
        action_text: str | None = None,
        instruction: str | None = None,
        qa: Sequence[Mapping[str, str]] | None = None,
        thought: str | None = None,
        outcome: str | None = None,
    ) -> None:
        """Record one env step: the action taken, the observation it led to, and optional annotations
        (`outcome` describes the observation the action led to; the others the one it was taken from)."""
        if not self._num_frames:
            raise WorldBagelError(f"episode {self.episode_id}: call start(obs, info) before add_step")
        if self._done:
            raise WorldBagelError(f"episode {self.episode_id}: add_step after the episode ended")
        self._write_frame(obs)
        step: dict[str, Any] = {
            "t": self._length,
            "action": to_jsonable(action),
            "action_text": action_text
            if action_text is not None
            else str((info or {}).get("action_text", "")),
            "reward": float(reward),
            "terminated": bool(terminated),
            "truncated": bool(truncated),
            "info": info_subset(info, self.info_keys),
        }
        if instruction is not None:
            step["instruction"] = str(instruction)
        if qa:
            # "system": think mode's system text, asked before the question (worldbagel.data.annotations)
            step["qa"] = [
                {
                    "q": str(p["q"]),
                    "a": str(p["a"]),
                    **({"system": str(p["system"])} if p.get("system") else {}),
                }
                for p in qa
            ]
        if thought is not None:
            step["thought"] = str(thought)
        if outcome is not None:
            step["outcome"] = str(outcome)
        self._steps.write(json.dumps(step) + "\n")
        self._length += 1
        self._return += float(reward)
        self._last_info = step["info"]
        self._done = bool(terminated or truncated)

    def finish(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write episode.json, move the folder into place, add it to index.json (unless `index=False`); returns
        the index entry."""
        if self._finished:
            raise WorldBagelError(f"episode {self.episode_id} is already finished")
        if not self._num_frames:
            raise WorldBagelError(f"episode {self.episode_id}: nothing recorded (call start first)")
        self._steps.close()
        if self.preview_fps and self._preview:
            write_video(self._tmp / "preview.mp4", np.stack(self._preview), fps=self.preview_fps)
        steps_path = self._tmp / "steps.jsonl"
        h, w, _ = self._frame_shape
        success = self._last_info.get("success")
        meta = {
            "id": self.episode_id,
            "env_id": self.env_id,
            "split": self.split,
            "seed": self.seed,
            "length": self._length,
            "num_frames": self._num_frames,
            "frame_format": self.frame_format,
            "frame_shape": [h, w, 3],
            "return": self._return,
            "success": bool(success) if success is not None else None,
            "reset_info": self._reset_info,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": {**self.metadata, **to_jsonable(dict(metadata or {}))},
        }
        (self._tmp / "episode.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        entry = {
            "id": self.episode_id,
            "env_id": self.env_id,
            "split": self.split,
            "seed": self.seed,
            "length": self._length,
            "num_frames": self._num_frames,
            "frame_shape": [h, w, 3],
            "return": self._return,
            "success": meta["success"],
            "steps_bytes": steps_path.stat().st_size,
            "steps_sha256": sha256_file(steps_path),
            "frames_bytes": sum(p.stat().st_size for p in (self._tmp / "frames").iterdir()),
        }
        dest = self.root / self.episode_id
        if dest.exists():  # a previous attempt that never reached the index (or an overwrite)
            trash = Path(mkdtemp(prefix=f".trash-{self.episode_id}-", dir=self.root))
            os.replace(dest, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(self._tmp, dest)
        if self.index:
            update_index(self.root, entry)
        self._finished = True
        self._preview = []
        return entry

    def abort(self) -> None:
        """Discard everything written for this episode."""
        if not self._steps.closed:
            self._steps.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._finished = True
