"""Episodes without actions from videos and frame folders: the world model learns to continue them.

`path` is one of:

    clip.mp4                    one video file (mp4, webm, mov, avi, mkv, m4v through imageio-ffmpeg; gif
                                through pillow)
    frames/000.png ...          a folder of frame images (png/jpg, natural order: 2.png before 10.png)
    clips/a.mp4, clips/b/0.jpg  a folder of video files and/or frame folders, one episode each (sorted)

An episode of F frames has T = F - 1 steps whose action is None and whose action text is empty; sequence
plans leave empty action texts out, so frames follow each other as in `worldbagel predict`'s continuation.
Frame folders load frame by frame (`Episode.frame_paths`); videos are `ClipEpisode`s, probed once here
(frame count and size) and decoded again when training encodes them, never kept whole in memory. Clips
with fewer than 2 frames (after `frame_skip`) are skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldbagel import media
from worldbagel.data.clip_episode import ClipEpisode
from worldbagel.data.episode_source import FRAME_SUFFIXES, VIDEO_SUFFIXES, SourceConfig, describe_folder
from worldbagel.data.trajectory import CorruptEpisode, Episode
from worldbagel.errors import bad_argument
from worldbagel.media import frame_files

__all__ = ["decode_video", "probe_video", "read_episodes", "video_episodes", "video_sources"]

logger = logging.getLogger(__name__)


def video_sources(path: Path, name: str = "data") -> list[Path]:
    """The clips at `path`: the file itself, the frame folder itself, or its videos and frame folders."""
    if not path.exists():
        raise bad_argument(
            name, str(path), "give an existing video file, folder of frames or folder of videos"
        )
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise bad_argument(name, str(path), f"use a video file {VIDEO_SUFFIXES} or a folder")
        return [path]
    if any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir()):
        return [path]
    sources = sorted(
        p
        for p in path.iterdir()
        if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        or (p.is_dir() and any(q.suffix.lower() in FRAME_SUFFIXES for q in p.iterdir()))
    )
    if not sources:
        raise bad_argument(
            name,
            str(path),
            f"it holds no frames {FRAME_SUFFIXES}, videos {VIDEO_SUFFIXES} or frame folders "
            f"({describe_folder(path)})",
        )
    return sources


def probe_video(path: Path) -> tuple[int, tuple[int, int]]:
    """(frame count, (H, W)) of a video file, counted by decoding it once (exactly what `decode_video`
    returns; container metadata can be off by a frame) without keeping the frames."""
    try:
        return media.probe_video(path, "data")
    except media.MediaError as exc:
        raise CorruptEpisode(str(exc)) from None


def decode_video(path: Path, keep: Sequence[int] | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3]: the frames numbered `keep` (in that order; None = all) of a video file. Frames
    not kept are dropped while decoding, so a long clip never sits whole in memory."""
    try:
        return media.read_clip(path, "data", keep=None if keep is None else list(keep))
    except media.MediaError as exc:
        raise CorruptEpisode(str(exc)) from None


def _steps(n: int) -> dict[str, Any]:
    """The action-free fields of an episode with n steps."""
    return {
        "actions": [None] * n,
        "action_texts": [""] * n,
        "rewards": np.zeros(n, np.float32),
        "terminated": np.zeros(n, bool),
        "truncated": np.zeros(n, bool),
        "infos": [{} for _ in range(n + 1)],
        "annotations": [{} for _ in range(n)],
        "env_id": "video",
    }


def _episode(src: Path, skip: int, size: tuple[int, int] | None) -> Episode | None:
    meta = {"source": "video", "path": str(src), "frame_skip": skip}
    if src.is_dir():
        paths = frame_files(src)[::skip]
        if len(paths) < 2:
            return None
        return Episode(
            id=src.name, **_steps(len(paths) - 1), metadata=meta, frame_paths=paths, frame_size=size, path=src
        )
    count, hw = probe_video(src)
    kept = (count + skip - 1) // skip  # frames 0, k, 2k, ... < count
    if kept < 2:
        return None
    return ClipEpisode(
        id=src.stem,
        **_steps(kept - 1),
        metadata=meta,
        frame_size=size,
        path=src,
        decode=lambda: decode_video(src, range(0, count, skip)),
        source=str(src),
        frame_hw=size or hw,
    )


def video_episodes(
    path: str | Path,
    name: str = "dataset.path",
    frame_skip: int = 1,
    frame_size: tuple[int, int] | None = None,
) -> list[Episode]:
    """Episodes without actions from a video file, a folder of frames, or a folder of videos/frame folders."""
    episodes = []
    for src in video_sources(Path(path), name):
        ep = _episode(src, frame_skip, frame_size)
        if ep is None:
            logger.warning("skipping %s: a clip needs at least 2 frames (frame_skip=%d)", src, frame_skip)
            continue
        episodes.append(ep)
    return episodes


def read_episodes(path: Path, cfg: SourceConfig, name: str = "data") -> list[Episode]:
    """The episode-source entry point (worldbagel.data.episode_source)."""
    size = tuple(int(v) for v in cfg.frame_size) if cfg.frame_size else None
    return video_episodes(path, name, cfg.frame_skip, size)
