"""Episode sources: read the data users have into the `Episode`s that training and evaluation consume.

    episodes = load_episodes("data/recon", SourceConfig(format="nwm"))     # or format="auto"

One reader per format, each in its own module, all returning `worldbagel.data.trajectory.Episode`s
(T+1 frames, T action texts), so `worldbagel finetune` (latent cache, sequence plans, packing) and
`worldbagel eval` treat them alike:

    format         reader                              what `path` is
    trajectories   worldbagel.data.trajectory          a folder written by `worldbagel collect` (index.json)
    nwm            worldbagel.data.nwm                 the NWM/GNM layout: <traj>/{0..N-1}.jpg + traj_data.pkl;
                                                       relative poses become "dx .. dy .. dyaw .." texts
    video          worldbagel.data.video_folder        a video file, a folder of frames, or a folder of videos
                                                       and/or frame folders; no actions (continuation)
    lerobot        worldbagel.data.lerobot             a LeRobot v2.0/v2.1 dataset (meta/info.json, parquet,
                                                       mp4 per camera); action columns become number texts

`format: auto` picks the format from what the folder holds (index.json, meta/info.json, sub-folders with
traj_data.pkl, videos or frames) and stops with one error when nothing or more than one format matches.
Every reader's error names the missing file or column and lists what is there. docs/bring-your-own-data.md
describes each format.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldbagel.data.nwm import NWMDataset
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.errors import bad_argument
from worldbagel.media import FRAME_SUFFIXES, VIDEO_SUFFIXES

__all__ = [
    "FRAME_SUFFIXES",
    "SOURCE_FORMATS",
    "VIDEO_SUFFIXES",
    "LeRobotSourceConfig",
    "NWMSourceConfig",
    "SourceConfig",
    "describe_folder",
    "detect_format",
    "load_episodes",
]

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("trajectories", "nwm", "video", "lerobot")
_READERS = {"video": "worldbagel.data.video_folder", "lerobot": "worldbagel.data.lerobot"}
"""Modules with `read_episodes(path, cfg, name)` (imported on use: lerobot needs the optional pyarrow)."""


@dataclass
class NWMSourceConfig:
    """Options of the NWM/GNM reader (worldbagel.data.nwm)."""

    split_dir: str | None = None
    """Folder of split lists (<split_dir>/<split>/traj_names.txt); None = every trajectory folder."""
    split: str = "train"
    """Split to read from split_dir (also the episodes' `split` field)."""
    metric_waypoint_spacing: float = 1.0
    """Metres per typical step of the dataset (RECON 0.25; each dataset's value is in GNM's
    data_config.yaml): dx, dy are written in these units, so 1.00 means one typical step."""


@dataclass
class LeRobotSourceConfig:
    """Options of the LeRobot v2.0/v2.1 reader (worldbagel.data.lerobot)."""

    camera: str | None = None
    """Camera feature to train on, e.g. observation.images.top; None = the only camera (an error lists them
    when there are several)."""
    action_columns: list[str] = field(default_factory=lambda: ["action"])
    """Parquet columns whose values, concatenated, are the action taken at each frame."""
    decimals: int = 2
    """Digits after the point of each number in the action text."""
    names: bool = False
    """Prefix each number with its name from info.json (`features.<column>.names`), e.g. "x 0.12 y -0.40";
    longer texts, but the model sees which joint each number drives."""
    episodes: list[int] | None = None
    """Episode indices to read; None = every episode of meta/episodes.jsonl (or of `split`)."""
    split: str | None = None
    """A split of info.json's `splits` (e.g. train = "0:50"); None = no split filter."""
    instruction: bool = True
    """Use the episode's task (meta/episodes.jsonl `tasks`) as its instruction text."""


@dataclass
class SourceConfig:
    """Which reader turns `data` into episodes, and its options (see worldbagel.data.episode_source)."""

    format: str = "auto"
    """auto (from the folder's contents), trajectories, nwm, video or lerobot."""
    frame_skip: int = 1
    """nwm, video, lerobot: keep every k-th frame (nwm: every k-th pose, actions span k poses; lerobot: the
    k actions between two kept frames are joined with ", ")."""
    frame_size: list[int] | None = None
    """[H, W] to resize frames to when they are read (bounds the memory of large videos); None keeps them."""
    nwm: NWMSourceConfig = field(default_factory=NWMSourceConfig)
    """Options of the nwm format."""
    lerobot: LeRobotSourceConfig = field(default_factory=LeRobotSourceConfig)
    """Options of the lerobot format."""

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in SOURCE_FORMATS:
            raise bad_argument("source.format", self.format, f"use auto or one of {SOURCE_FORMATS}")
        if not (isinstance(self.frame_skip, int) and self.frame_skip >= 1):
            raise bad_argument("source.frame_skip", self.frame_skip, "use an int >= 1")
        if self.frame_size is not None and (
            len(self.frame_size) != 2 or not all(int(v) >= 1 for v in self.frame_size)
        ):
            raise bad_argument("source.frame_size", self.frame_size, "use [height, width] in pixels, or null")


def describe_folder(folder: str | os.PathLike, limit: int = 12) -> str:
    """What a folder holds, for error messages: "a.json, b/, c.mp4, ... (40 entries)"."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist" if not folder.exists() else f"{folder} is a file"
    entries = sorted(folder.iterdir())
    if not entries:
        return f"{folder} is empty"
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:limit])
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{folder} holds {shown}{more}"


def _has_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in FRAME_SUFFIXES for p in folder.iterdir())


def detect_format(path: str | os.PathLike, name: str = "data") -> str:
    """The source format of `path` from its contents; one error when none or several match."""
    path = Path(path)
    if not path.exists():
        raise bad_argument(name, str(path), "no such file or folder; give a dataset folder or a video file")
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return "video"
        raise bad_argument(
            name, str(path), f"a file must be a video {VIDEO_SUFFIXES}; otherwise give a dataset folder"
        )
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    found: dict[str, str] = {}
    if (path / "index.json").is_file():
        found["trajectories"] = "index.json"
    if (path / "meta" / "info.json").is_file():
        found["lerobot"] = "meta/info.json"
    nwm = [p.name for p in subdirs if (p / "traj_data.pkl").is_file()]
    if nwm:
        found["nwm"] = f"{nwm[0]}/traj_data.pkl"
    clips = [p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    if _has_frames(path):
        found["video"] = "frame images"
    elif clips:
        found["video"] = f"videos such as {clips[0]}"
    elif not nwm and not found and any(_has_frames(p) for p in subdirs):
        found["video"] = "frame folders"
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise bad_argument(
            name,
            str(path),
            f"cannot tell its format ({describe_folder(path)}); expected index.json (trajectories), "
            "meta/info.json (lerobot), <traj>/traj_data.pkl (nwm), or videos / frame images (video)",
        )
    seen = "; ".join(f"{fmt} ({marker})" for fmt, marker in found.items())
    raise bad_argument(name, str(path), f"it looks like several formats: {seen}; set source.format=...")


def load_episodes(
    path: str | os.PathLike,
    cfg: SourceConfig | None = None,
    splits: Sequence[str] | None = None,
    name: str = "data",
) -> list[Any]:
    """The episodes at `path` read by `cfg.format`'s reader (detected when auto); `splits` keeps only
    episodes whose `split` is listed. `name` is the argument named in errors (data, dataset.path)."""
    cfg = cfg or SourceConfig()
    path = Path(path)
    if not path.exists():
        raise bad_argument(name, str(path), "no such file or folder; give a dataset folder or a video file")
    fmt = detect_format(path, name) if cfg.format == "auto" else cfg.format
    size = tuple(int(v) for v in cfg.frame_size) if cfg.frame_size else None
    if fmt == "trajectories":
        if not (path / "index.json").is_file():
            raise bad_argument(
                name,
                str(path),
                f"no index.json there ({describe_folder(path)}); give a folder written by `worldbagel collect`",
            )
        return list(TrajectoryDataset(path, splits=splits, frame_size=size))
    if fmt == "nwm":
        o = cfg.nwm
        episodes = list(
            NWMDataset(
                path,
                split_dir=o.split_dir,
                split=o.split,
                metric_waypoint_spacing=o.metric_waypoint_spacing,
                frame_skip=cfg.frame_skip,
                frame_size=size,
            )
        )
    else:
        episodes = importlib.import_module(_READERS[fmt]).read_episodes(path, cfg, name)
    if splits is not None:
        episodes = [e for e in episodes if e.split in splits]
    logger.info("read %d %s episodes from %s", len(episodes), fmt, path)
    return episodes
