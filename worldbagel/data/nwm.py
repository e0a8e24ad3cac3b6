"""Reader for the NWM / GNM navigation dataset layout (RECON, SCAND, GoStanford, SACSoN, ...).

Layout (as produced by the GNM / NoMaD / NWM preprocessing scripts):

    <root>/<traj_name>/0.jpg, 1.jpg, ..., {N-1}.jpg     one RGB frame per pose
    <root>/<traj_name>/traj_data.pkl                    {"position": [N, 2] metres, "yaw": [N] radians}
    <split_dir>/train/traj_names.txt                    one trajectory name per line
    <split_dir>/test/traj_names.txt

Poses become relative actions between consecutive (optionally frame-skipped) frames, in the robot frame
of the earlier pose: with d = p[t+k] - p[t] in world coordinates and yaw_t the heading at t,

    dx   =  cos(yaw_t) * d.x + sin(yaw_t) * d.y        (forward)
    dy   = -sin(yaw_t) * d.x + cos(yaw_t) * d.y        (left)
    dyaw = wrap(yaw[t+k] - yaw[t]) in [-pi, pi)

and dx, dy are divided by `metric_waypoint_spacing * frame_skip` (metres per typical step of that
dataset, e.g. 0.25 for RECON in GNM's data_config.yaml) so that 1.0 means one typical step. Texts come
from `ContinuousActionCodec` ("dx 1.00 dy -0.05 dyaw 3.2").

Shapes: `position` [N, 2], `yaw` [N]; `poses_to_actions` returns float32 [M, 3] with M = (N-1)//k; an
episode has M actions and M+1 frames (frames 0, k, 2k, ...).

SECURITY: `traj_data.pkl` is a Python pickle (the public datasets' own format). It is read with a restricted
unpickler (`worldbagel.data.safe_pickle.load_arrays`) that builds only numpy arrays, numbers, lists and dicts;
a file asking for anything else (which could run code) stops the read with `UnsafePickle` naming the file,
rather than being skipped like a corrupt trajectory.

`worldbagel finetune data=<root> source.format=nwm` and `worldbagel eval dataset=nwm` read this layout
through `worldbagel.data.episode_source`.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldbagel.actions import ContinuousActionCodec
from worldbagel.data.safe_pickle import load_arrays
from worldbagel.data.trajectory import CorruptEpisode, Episode
from worldbagel.errors import InvalidAction, bad_argument

__all__ = ["NWMDataset", "load_traj_data", "poses_to_actions", "read_split", "wrap_angle"]

logger = logging.getLogger(__name__)


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles in radians to [-pi, pi)."""
    return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi


def poses_to_actions(
    position: np.ndarray, yaw: np.ndarray, metric_waypoint_spacing: float = 1.0, frame_skip: int = 1
) -> np.ndarray:
    """Relative (dx, dy, dyaw) actions [M, 3] between poses t and t+frame_skip (see module docstring)."""
    if not metric_waypoint_spacing > 0:
        raise bad_argument(
            "metric_waypoint_spacing", metric_waypoint_spacing, "use a positive step in metres"
        )
    if not (isinstance(frame_skip, int) and frame_skip >= 1):
        raise bad_argument("frame_skip", frame_skip, "use an int >= 1")
    pos = np.asarray(position, dtype=np.float64)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    if pos.ndim != 2 or pos.shape[1] < 2 or len(pos) != len(yaw):
        raise bad_argument(
            "position", pos.shape, f"need position [N, 2] matching yaw [N] (yaw has {len(yaw)})"
        )
    pos, yaw = pos[::frame_skip, :2], yaw[::frame_skip]  # [M+1, 2], [M+1]
    d = pos[1:] - pos[:-1]  # world-frame displacement [M, 2]
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dx = c * d[:, 0] + s * d[:, 1]  # rotate by -yaw_t into the robot frame
    dy = -s * d[:, 0] + c * d[:, 1]
    scale = metric_waypoint_spacing * frame_skip
    dyaw = wrap_angle(yaw[1:] - yaw[:-1])
    return np.stack([dx / scale, dy / scale, dyaw], axis=1).astype(np.float32)


def load_traj_data(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(position [N, 2], yaw [N]) from a traj_data.pkl, unpickled with the restricted loader (numpy arrays,
    numbers, lists and dicts only; anything else raises `UnsafePickle` naming the file)."""
    data = load_arrays(path)
    if not isinstance(data, dict) or "position" not in data or "yaw" not in data:
        raise CorruptEpisode(f"{path} must hold a dict with 'position' and 'yaw'")
    position = np.asarray(data["position"], dtype=np.float64)
    yaw = np.asarray(data["yaw"], dtype=np.float64).reshape(-1)
    if position.ndim != 2 or position.shape[1] < 2 or len(position) != len(yaw):
        raise CorruptEpisode(f"{path}: position {position.shape} and yaw {yaw.shape} do not describe N poses")
    if not (np.all(np.isfinite(position[:, :2])) and np.all(np.isfinite(yaw))):
        raise CorruptEpisode(f"{path}: poses contain NaN or inf")
    return position[:, :2], yaw


def read_split(split_dir: str | os.PathLike, split: str) -> list[str]:
    """Trajectory names listed in `<split_dir>/<split>/traj_names.txt` (blank lines ignored)."""
    path = Path(split_dir) / split / "traj_names.txt"
    if not path.is_file():
        raise bad_argument(
            "split", split, f"{path} does not exist; use a split folder holding traj_names.txt"
        )
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class NWMDataset(Sequence):
    """Episodes of an NWM/GNM-layout dataset, compatible with `worldbagel.data.trajectory.Episode`.

    `split_dir` + `split` pick the trajectories from traj_names.txt; without `split_dir` every sub-folder
    of `root` holding a traj_data.pkl is used (sorted). Trajectories that are missing, have too few
    frames, missing images or out-of-bounds steps are skipped with a warning and listed in `skipped`.
    Frames load lazily from the jpgs (resized to `frame_size` (H, W) when given).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split_dir: str | os.PathLike | None = None,
        split: str = "train",
        metric_waypoint_spacing: float = 1.0,
        frame_skip: int = 1,
        codec: ContinuousActionCodec | None = None,
        frame_size: tuple[int, int] | None = None,
        min_actions: int = 1,
        name: str | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise bad_argument(
                "root", str(self.root), "give the folder holding one sub-folder per trajectory"
            )
        poses_to_actions(np.zeros((2, 2)), np.zeros(2), metric_waypoint_spacing, frame_skip)  # validates args
        self.metric_waypoint_spacing = float(metric_waypoint_spacing)
        self.frame_skip = frame_skip
        self.codec = codec or ContinuousActionCodec()
        self.frame_size = frame_size
        self.split = split
        self.name = name or self.root.name
        if split_dir is not None:
            names = read_split(split_dir, split)
        else:
            names = sorted(p.name for p in self.root.iterdir() if (p / "traj_data.pkl").is_file())
        self.episodes: list[Episode] = []
        self.skipped: list[tuple[str, str]] = []
        for traj in names:
            try:
                self.episodes.append(self._load(traj, min_actions))
            except (CorruptEpisode, InvalidAction, OSError, pickle.UnpicklingError, EOFError) as exc:
                logger.warning("skipping NWM trajectory %s: %s", traj, exc)
                self.skipped.append((traj, str(exc)))

    def _load(self, traj: str, min_actions: int) -> Episode:
        folder = self.root / traj
        if not folder.is_dir():
            raise CorruptEpisode(f"trajectory folder {folder} is missing")
        position, yaw = load_traj_data(folder / "traj_data.pkl")
        kept = np.arange(0, len(yaw), self.frame_skip)  # frame numbers used: [M+1]
        frame_paths = [folder / f"{int(i)}.jpg" for i in kept]
        missing = [p.name for p in frame_paths if not p.is_file()]
        if missing:
            raise CorruptEpisode(f"{folder}: {len(missing)} frame(s) missing, e.g. {missing[0]}")
        actions = poses_to_actions(position, yaw, self.metric_waypoint_spacing, self.frame_skip)
        if len(actions) < min_actions:
            raise CorruptEpisode(f"{folder}: {len(actions)} action(s), fewer than min_actions={min_actions}")
        texts = [self.codec.encode(a) for a in actions]
        infos: list[dict[str, Any]] = [
            {
                "position": [float(position[i, 0]), float(position[i, 1])],
                "yaw": float(yaw[i]),
                "frame": int(i),
            }
            for i in kept
        ]
        n = len(actions)
        return Episode(
            id=traj,
            actions=[a.tolist() for a in actions],
            action_texts=texts,
            rewards=np.zeros(n, np.float32),
            terminated=np.zeros(n, bool),
            truncated=np.zeros(n, bool),
            infos=infos,
            annotations=[{} for _ in range(n)],
            env_id=f"nwm/{self.name}",
            split=self.split,
            metadata={
                "source": "nwm",
                "metric_waypoint_spacing": self.metric_waypoint_spacing,
                "frame_skip": self.frame_skip,
            },
            frame_paths=frame_paths,
            frame_size=self.frame_size,
            path=folder,
        )

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> Episode:  # type: ignore[override]
        return self.episodes[i]

    @property
    def ids(self) -> list[str]:
        """Names of the trajectories that loaded."""
        return [e.id for e in self.episodes]
