"""Held-out episodes for `worldbagel eval`, from any data source the readers support.

    episodes = load_heldout(DatasetConfig(format="trajectories", path="data/grid-eval"))

Sources (`DatasetConfig.format`):
    env            episodes recorded now from an env (e.g. GridWorld with split=eval: held-out layouts) with a
                   registered policy; nothing is written to disk
    trajectories   a folder written by `worldbagel collect` / EpisodeWriter (worldbagel.data.trajectory)
    nwm            the NWM/GNM layout (worldbagel.data.nwm; traj_data.pkl is a pickle: trusted data only)
    video          a video file (mp4/gif/...), a folder of frame images, or a folder of video files; such
                   episodes have no actions (`has_actions` is False) and are evaluated as continuations

Every source yields `worldbagel.data.trajectory.Episode`s (T+1 frames, T actions, T+1 infos). A video
episode stores `None` actions and empty action texts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldbagel.data.trajectory import Episode
from worldbagel.errors import WorldBagelError, bad_argument

from .options import DATASET_FORMATS, DatasetConfig

__all__ = [
    "episode_instruction",
    "evenly_spaced",
    "gridworld_size",
    "has_actions",
    "has_continuous_actions",
    "load_heldout",
    "record_env_episodes",
    "video_episodes",
]

logger = logging.getLogger(__name__)

GRIDWORLD_TOPDOWN = "WorldBagel/GridWorld-v0"
VIDEO_SUFFIXES = (".mp4", ".gif")


def evenly_spaced(n: int, count: int | None) -> list[int]:
    """`count` indices spread evenly over range(n) (all of them when count is None or >= n)."""
    if count is None or count >= n:
        return list(range(n))
    if count < 1:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, count)})


def episode_instruction(episode: Episode) -> str | None:
    """The episode's instruction (the first `instruction` annotation), or None; histories start with it, as in
    the training sequences."""
    for ann in episode.annotations or []:
        if ann and ann.get("instruction"):
            return str(ann["instruction"])
    return None


def has_actions(episode: Episode) -> bool:
    """Whether the episode records actions (video clips do not)."""
    return any(a is not None for a in episode.actions)


def has_continuous_actions(episode: Episode) -> bool:
    """Whether the actions are (dx, dy, dyaw) vectors (NWM style) rather than discrete ids."""
    return has_actions(episode) and all(
        isinstance(a, (list, tuple, np.ndarray)) and np.asarray(a).shape == (3,) for a in episode.actions
    )


def _env_kwargs(episode: Episode) -> Mapping[str, Any]:
    meta = episode.metadata or {}
    inner = meta.get("metadata") if isinstance(meta.get("metadata"), Mapping) else {}
    return inner.get("env_kwargs") or meta.get("env_kwargs") or {}


def gridworld_size(episode: Episode) -> int | tuple[int, int] | None:
    """Maze size of a top-down GridWorld episode whose infos hold the symbolic state, else None.

    Only such episodes can be scored by decoding frames (`worldbagel.envs.decode_frame`)."""
    if episode.env_id != GRIDWORLD_TOPDOWN:
        return None
    kwargs = _env_kwargs(episode)
    if kwargs.get("view", "topdown") != "topdown":
        return None
    if not episode.infos or not all(
        all(k in info for k in ("agent", "heading", "goal")) for info in episode.infos
    ):
        return None
    size = kwargs.get("size", 8)
    return tuple(size) if isinstance(size, (list, tuple)) else int(size)


def video_episodes(path: str | Path, name: str = "dataset.path") -> list[Episode]:
    """Episodes without actions from a video file, a folder of frames, or a folder of video files."""
    from worldbagel.video import read_video

    path = Path(path)
    if not path.exists():
        raise bad_argument(
            name, str(path), "give an existing video file, folder of frames or folder of videos"
        )
    if path.is_dir() and not any(p.suffix.lower() in (".png", ".jpg", ".jpeg") for p in path.iterdir()):
        sources = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not sources:
            raise bad_argument(
                name, str(path), f"the folder holds neither frames (png/jpg) nor videos {VIDEO_SUFFIXES}"
            )
    else:
        sources = [path]
    episodes = []
    for src in sources:
        frames = read_video(src)
        if len(frames) < 2:
            logger.warning("skipping %s: a clip needs at least 2 frames", src)
            continue
        n = len(frames) - 1
        episodes.append(
            Episode(
                id=src.stem if src.is_file() else src.name,
                actions=[None] * n,
                action_texts=[""] * n,
                rewards=np.zeros(n, np.float32),
                terminated=np.zeros(n, bool),
                truncated=np.zeros(n, bool),
                infos=[{} for _ in range(n + 1)],
                annotations=[{} for _ in range(n)],
                env_id="video",
                metadata={"source": "video", "path": str(src)},
                _frames=np.asarray(frames, dtype=np.uint8),
            )
        )
    return episodes


def record_env_episodes(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    policy: str = "random",
    episodes: int = 8,
    seed: int = 1000,
    max_steps: int = 32,
    annotate: str | None = None,
) -> list[Episode]:
    """Record `episodes` in-memory episodes of a registered policy in an env (infos kept, action texts from the
    env's action codec; text annotations from the annotator `annotate`, see worldbagel.data.annotations)."""
    from worldbagel.actions import codec_for_env
    from worldbagel.data.annotations import make_annotator
    from worldbagel.policies import make_policy
    from worldbagel.rollout import build_env, first_env, frame_of

    if not (isinstance(episodes, int) and episodes >= 1):
        raise bad_argument("dataset.episodes", episodes, "use an int >= 1")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise bad_argument("dataset.max_steps", max_steps, "use an int >= 1")
    kwargs = dict(env_kwargs or {})
    annotator = make_annotator(annotate)
    env = first_env(lambda: build_env(env_id, kwargs))
    try:
        codec = codec_for_env(env)
        pol = make_policy(policy, env, seed=seed)
        out = []
        for i in range(episodes):
            pol.reset(seed=seed + i)
            obs, info = env.reset(seed=seed + i)
            frames, infos, actions, texts, notes = [frame_of(obs, env)], [dict(info)], [], [], []
            done = False
            while not done and len(actions) < max_steps:
                notes.append(dict(annotator(env, obs, info)) if annotator is not None else {})
                action = pol.act(obs, info)
                obs, _, terminated, truncated, info = env.step(action)
                actions.append(action.tolist() if isinstance(action, np.ndarray) else action)
                texts.append(codec.encode(action))
                frames.append(frame_of(obs, env))
                infos.append(dict(info))
                done = bool(terminated or truncated)
            out.append(
                Episode.from_arrays(
                    f"{policy}-{seed + i}",
                    np.stack(frames),
                    actions,
                    texts,
                    infos=infos,
                    annotations=notes,
                    env_id=env_id,
                    split=str(kwargs.get("split", "")),
                    seed=seed + i,
                    metadata={"source": "env", "metadata": {"env_kwargs": kwargs, "policy": policy}},
                )
            )
        return out
    finally:
        env.close()


def load_heldout(
    cfg: DatasetConfig, env_id: str | None = None, env_kwargs: Mapping | None = None
) -> list[Episode]:
    """The episodes of a dataset config (format env records from `env_id` / `env_kwargs`)."""
    if cfg.format not in DATASET_FORMATS:
        raise bad_argument("dataset.format", cfg.format, f"use one of {DATASET_FORMATS}")
    if cfg.format == "env":
        if not env_id:
            raise bad_argument(
                "env.id", env_id, "dataset.format=env records episodes from the env group; set env=..."
            )
        episodes = record_env_episodes(
            env_id, env_kwargs, cfg.policy, cfg.episodes, cfg.seed, cfg.max_steps, cfg.annotate
        )
    else:
        if not cfg.path:
            raise bad_argument("dataset.path", cfg.path, f"give the {cfg.format} data to evaluate on")
        path = Path(cfg.path)
        if not path.exists():
            raise bad_argument(
                "dataset.path", str(path), f"no such file or folder; give the {cfg.format} data"
            )
        episodes = _read(cfg, path)
    if not episodes:
        raise WorldBagelError(f"dataset {cfg.name!r} ({cfg.format}, path={cfg.path}) holds no usable episode")
    return episodes


def _read(cfg: DatasetConfig, path: Path) -> Sequence[Episode]:
    if cfg.format == "video":
        return video_episodes(path)
    if cfg.format == "nwm":
        from worldbagel.data.nwm import NWMDataset

        ds = NWMDataset(
            path,
            split_dir=cfg.split_dir,
            split=cfg.split,
            metric_waypoint_spacing=cfg.metric_waypoint_spacing,
            frame_skip=cfg.frame_skip,
        )
        return list(ds)
    from worldbagel.data.trajectory import TrajectoryDataset

    if not (path / "index.json").is_file():
        raise bad_argument(
            "dataset.path", str(path), "no index.json there; give a folder written by `worldbagel collect`"
        )
    return list(TrajectoryDataset(path, splits=cfg.splits))
