"""Episodes from a LeRobot v2.0 / v2.1 dataset (the layout of lerobot's `LeRobotDataset`, codebase v2.x).

    <root>/meta/info.json          codebase_version, fps, chunks_size, splits, data_path and video_path
                                   templates, features {name: {dtype, shape, names}}
    <root>/meta/episodes.jsonl     {"episode_index": 0, "tasks": ["pick the cube"], "length": 300} per line
    <root>/data/chunk-000/episode_000000.parquet          one row per frame: timestamp, frame_index,
                                                          action, observation.state, ... (episode_chunk =
                                                          episode_index // chunks_size)
    <root>/videos/chunk-000/<camera>/episode_000000.mp4   one video per camera key (dtype "video"); a camera
                                                          of dtype "image" is a parquet column of PNG bytes

v2.0 and v2.1 differ only in their statistics files (meta/stats.json vs meta/episodes_stats.jsonl), which
are not read. v3.0 (several episodes per file) is refused with an error saying so.

Row t holds the observation at time t and the action taken there. An episode of N rows becomes N frames and
N - 1 steps (the last row's action has no next frame); with `frame_skip` k the kept frames are rows 0, k,
2k, ... and a step's text joins the k actions between two kept frames with ", ". Video frame numbers are
round(timestamp * fps).

Action text: the values of `action_columns` (concatenated) written as fixed-point numbers,
"0.12 -0.40 1.00" (`decimals` digits, "-0.00" written "0.00"), or "x 0.12 y -0.40 ..." with `names`.
BAGEL reads actions as text, and a fixed format of plain numbers is the least surprising text for a
vector: the model's tokenizer writes each digit as its own token, so two decimals cost about 5 tokens a
number, and rounding to a resolution the robot cannot use only adds tokens. The values are the dataset's
raw units (no normalisation), so a text means the same thing in every episode.

The episode's first task (meta/episodes.jsonl) becomes its instruction. Reading parquet needs pyarrow
(`pip install 'worldbagel[lerobot]'`).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from worldbagel.data.clip_episode import ClipEpisode
from worldbagel.data.episode_source import LeRobotSourceConfig, SourceConfig, describe_folder
from worldbagel.data.trajectory import CorruptEpisode
from worldbagel.data.video_folder import decode_video, probe_video
from worldbagel.errors import DependencyNotInstalled, bad_argument

__all__ = ["format_action", "read_episodes"]

logger = logging.getLogger(__name__)

DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CAMERA_DTYPES = ("video", "image")


def _pyarrow_parquet() -> Any:
    # pyarrow is optional (the lerobot extra): only LeRobot datasets need parquet
    try:
        import pyarrow.parquet as pq  # lazy: optional dependency (lerobot extra)
    except ImportError as exc:
        raise DependencyNotInstalled(
            "reading a LeRobot dataset needs pyarrow: pip install 'worldbagel[lerobot]' (or pip install pyarrow)"
        ) from exc
    return pq


def _number(value: float, decimals: int) -> str:
    s = f"{value:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def format_action(values: np.ndarray, decimals: int = 2, names: list[str] | None = None) -> str:
    """ "0.12 -0.40 1.00", or "x 0.12 y -0.40 grip 1.00" with names (one per value)."""
    nums = [_number(float(v), decimals) for v in np.asarray(values, np.float64).reshape(-1)]
    if names is None:
        return " ".join(nums)
    return " ".join(f"{n} {v}" for n, v in zip(names, nums))


def _read_json(path: Path, what: str, name: str) -> Any:
    if not path.is_file():
        raise bad_argument(
            name, str(path.parent.parent), f"{path} is missing ({describe_folder(path.parent)}); {what}"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorruptEpisode(f"{path} is not valid JSON ({exc})") from exc


def _episodes_meta(root: Path, name: str) -> list[dict[str, Any]]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise bad_argument(
            name,
            str(root),
            f"{path} is missing ({describe_folder(root / 'meta')}); a LeRobot v2 dataset lists its episodes there",
        )
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptEpisode(f"{path} line {n + 1} is not valid JSON ({exc})") from exc
    return rows


def _camera(features: dict[str, Any], wanted: str | None) -> str:
    cameras = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in CAMERA_DTYPES]
    if wanted is None:
        if len(cameras) == 1:
            return cameras[0]
        raise bad_argument(
            "source.lerobot.camera",
            wanted,
            f"the dataset has cameras {cameras}; pick one"
            if cameras
            else "meta/info.json lists no video or image feature",
        )
    if wanted not in cameras:
        raise bad_argument(
            "source.lerobot.camera", wanted, f"meta/info.json has no such camera; its cameras are {cameras}"
        )
    return wanted


def _value_names(features: dict[str, Any], columns: list[str]) -> list[str]:
    """Names of the action values, from info.json `features.<column>.names` (a list, or {"motors": [...]})."""
    out: list[str] = []
    for col in columns:
        names = features.get(col, {}).get("names")
        if isinstance(names, dict):
            names = [n for group in names.values() for n in (group if isinstance(group, list) else [group])]
        if not names:
            raise bad_argument(
                "source.lerobot.names",
                True,
                f"meta/info.json gives no names for column {col!r}; set names=false",
            )
        out += [str(n) for n in names]
    return out


def _frame_hw(feature: dict[str, Any]) -> tuple[int, int] | None:
    """(H, W) of a camera from its info.json shape and names (channel first or last)."""
    shape, names = feature.get("shape") or [], feature.get("names") or []
    if len(shape) != 3:
        return None
    if isinstance(names, list) and "height" in names and "width" in names:
        return int(shape[names.index("height")]), int(shape[names.index("width")])
    return (int(shape[1]), int(shape[2])) if shape[0] in (1, 3, 4) else (int(shape[0]), int(shape[1]))


def _selected(opts: LeRobotSourceConfig, info: dict[str, Any], listed: list[int]) -> list[int]:
    chosen = listed
    if opts.split is not None:
        splits = info.get("splits") or {}
        if opts.split not in splits:
            raise bad_argument(
                "source.lerobot.split", opts.split, f"meta/info.json splits are {sorted(splits)}"
            )
        lo, _, hi = str(splits[opts.split]).partition(":")
        chosen = [i for i in chosen if int(lo) <= i < int(hi)]
    if opts.episodes is not None:
        unknown = sorted(set(opts.episodes) - set(listed))
        if unknown:
            raise bad_argument(
                "source.lerobot.episodes",
                unknown,
                f"not in meta/episodes.jsonl (it lists {len(listed)} episodes)",
            )
        chosen = [i for i in chosen if i in set(opts.episodes)]
    return chosen


def _column_values(table: Any, col: str, path: Path) -> np.ndarray:
    """A numeric column as float64 [N, D] (a scalar column gives D = 1)."""
    values = table.column(col).to_pylist()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CorruptEpisode(f"{path}: column {col!r} is not numbers of one length per row ({exc})") from exc
    return arr.reshape(len(values), -1)


class _Reader:
    """Reads the episodes of one dataset; holds what every episode shares."""

    def __init__(self, root: Path, cfg: SourceConfig, name: str):
        self.root, self.cfg, self.opts, self.name = root, cfg, cfg.lerobot, name
        info = _read_json(root / "meta" / "info.json", "a LeRobot dataset describes itself there", name)
        version = str(info.get("codebase_version", ""))
        if version.startswith("v3"):
            raise bad_argument(
                name,
                str(root),
                f"LeRobot {version} (several episodes per file) is not read; use the dataset's v2.1 revision "
                "(huggingface revision=v2.1) or convert it",
            )
        if not version.startswith("v2"):
            logger.warning("%s: codebase_version %r, reading it as LeRobot v2.1", root, version)
        self.info, self.version = info, version
        self.features: dict[str, Any] = info.get("features") or {}
        self.fps = float(info.get("fps") or 0)
        if not self.fps > 0:
            raise CorruptEpisode(
                f"{root / 'meta' / 'info.json'}: fps is {info.get('fps')!r}; it must be positive"
            )
        self.camera = _camera(self.features, self.opts.camera)
        self.is_video = self.features[self.camera]["dtype"] == "video"
        missing = [c for c in self.opts.action_columns if c not in self.features]
        if missing or not self.opts.action_columns:
            others = [k for k, f in self.features.items() if f.get("dtype") not in CAMERA_DTYPES]
            raise bad_argument(
                "source.lerobot.action_columns",
                list(self.opts.action_columns),
                f"meta/info.json has no column {missing}; its columns are {others}",
            )
        self.names = _value_names(self.features, self.opts.action_columns) if self.opts.names else None
        self.size = tuple(int(v) for v in cfg.frame_size) if cfg.frame_size else None
        self.hw = self.size or _frame_hw(self.features[self.camera])
        self.chunks = int(info.get("chunks_size") or 1000)

    def _file(self, template_key: str, default: str, index: int) -> Path:
        template = str(self.info.get(template_key) or default)
        name = template.format(episode_chunk=index // self.chunks, episode_index=index, video_key=self.camera)
        path = self.root / name
        if not path.is_file():
            raise bad_argument(
                self.name,
                str(self.root),
                f"{path} is missing ({describe_folder(path.parent)}); download it, or choose episodes with "
                "source.lerobot.episodes=[...]",
            )
        return path

    def _table(self, index: int) -> tuple[Any, Path]:
        """The episode's parquet table (action columns, timestamps, an image camera) and its path."""
        pq = _pyarrow_parquet()
        parquet = self._file("data_path", DATA_PATH, index)
        present = pq.read_schema(parquet).names
        for option, columns in (
            ("source.lerobot.action_columns", list(self.opts.action_columns)),
            ("source.lerobot.camera", [] if self.is_video else [self.camera]),
        ):
            missing = [c for c in columns if c not in present]
            if missing:
                raise bad_argument(option, missing, f"{parquet} has no column {missing}; it has {present}")
        extra = [c for c in ("timestamp",) if c in present] + ([] if self.is_video else [self.camera])
        return pq.read_table(parquet, columns=list(self.opts.action_columns) + extra), parquet

    def _texts(self, actions: np.ndarray, rows: list[int], parquet: Path) -> list[str]:
        """One text per step: the k actions between kept frames rows[i] and rows[i + 1], joined by ", "."""
        if not np.all(np.isfinite(actions)):
            raise CorruptEpisode(f"{parquet}: action columns {self.opts.action_columns} hold NaN or inf")
        if self.names is not None and len(self.names) != actions.shape[1]:
            raise bad_argument(
                "source.lerobot.names", True, f"{len(self.names)} names for {actions.shape[1]} action values"
            )
        k, d = self.cfg.frame_skip, self.opts.decimals
        return [", ".join(format_action(actions[r + j], d, self.names) for j in range(k)) for r in rows[:-1]]

    def episode(self, meta: dict[str, Any]) -> ClipEpisode | None:
        """Episode `meta["episode_index"]`, or None when it keeps fewer than 2 frames."""
        index = int(meta["episode_index"])
        table, parquet = self._table(index)
        n, k = table.num_rows, self.cfg.frame_skip
        rows = list(range(0, n, k))  # kept frames
        if len(rows) < 2:
            return None
        actions = np.concatenate(
            [_column_values(table, c, parquet) for c in self.opts.action_columns], axis=1
        )
        texts = self._texts(actions, rows, parquet)
        if "timestamp" in table.column_names:
            times = np.asarray(table.column("timestamp").to_pylist(), np.float64).reshape(-1)
        else:
            times = np.arange(n) / self.fps
        if self.is_video:
            video = self._file("video_path", VIDEO_PATH, index)
            decode = _video_decoder(video, [int(round(times[r] * self.fps)) for r in rows])
            source = str(video)
        else:
            cells = table.column(self.camera).to_pylist()
            decode = _image_decoder([cells[r] for r in rows], self.root, parquet)
            source = f"{parquet}:{self.camera}"
        tasks = meta.get("tasks") or []
        task = str(tasks[0]) if tasks and self.opts.instruction else ""
        steps = len(rows) - 1
        return ClipEpisode(
            id=f"episode_{index:06d}",
            actions=[actions[r].tolist() if k == 1 else actions[r : r + k].tolist() for r in rows[:-1]],
            action_texts=texts,
            rewards=np.zeros(steps, np.float32),
            terminated=np.zeros(steps, bool),
            truncated=np.zeros(steps, bool),
            infos=[{"frame_index": r, "timestamp": float(times[r])} for r in rows],
            annotations=[{"instruction": task} if task and t == 0 else {} for t in range(steps)],
            env_id=f"lerobot/{self.info.get('robot_type') or self.root.name}",
            split=self.opts.split or "",
            metadata={
                "source": "lerobot",
                "codebase_version": self.version,
                "episode_index": index,
                "camera": self.camera,
                "action_columns": list(self.opts.action_columns),
                "fps": self.fps,
                "frame_skip": k,
            },
            frame_size=self.size,
            path=self.root,
            decode=decode,
            source=source,
            frame_hw=self.hw,
        )


def _video_decoder(video: Path, numbers: list[int]):
    """decode() for a camera video: the frames at `numbers` (the last may be one past the end: timestamps
    and decoded frame counts can disagree by a frame at the end of an episode)."""

    def decode() -> np.ndarray:
        try:
            return decode_video(video, numbers)
        except CorruptEpisode:
            count, _ = probe_video(video)
            if numbers[-1] > count:
                raise
            return decode_video(video, [min(i, count - 1) for i in numbers])

    return decode


def _image_decoder(cells: list[Any], root: Path, parquet: Path):
    """decode() for a camera stored in the parquet (dtype image: {"bytes": png, "path": ...} per row)."""

    def decode() -> np.ndarray:
        frames = []
        for cell in cells:
            data = cell.get("bytes") if isinstance(cell, dict) else None
            source: Any = (
                io.BytesIO(data)
                if data
                else (root / cell["path"] if isinstance(cell, dict) and cell.get("path") else None)
            )
            if source is None:
                raise CorruptEpisode(f"{parquet}: an image cell holds neither bytes nor a path")
            with Image.open(source) as im:
                frames.append(np.asarray(im.convert("RGB")))
        return np.stack(frames)

    return decode


def read_episodes(path: Path, cfg: SourceConfig, name: str = "data") -> list[ClipEpisode]:
    """The episode-source entry point (worldbagel.data.episode_source)."""
    _pyarrow_parquet()  # fail before any work when pyarrow is missing
    reader = _Reader(Path(path), cfg, name)
    metas = {int(m["episode_index"]): m for m in _episodes_meta(reader.root, name) if "episode_index" in m}
    episodes = []
    for index in _selected(reader.opts, reader.info, sorted(metas)):
        ep = reader.episode(metas[index])
        if ep is None:
            logger.warning(
                "skipping LeRobot episode %d: fewer than 2 frames (frame_skip=%d)", index, cfg.frame_skip
            )
            continue
        episodes.append(ep)
    return episodes
