"""Held-out episodes for `worldbagel eval`, from any data source the readers support.

    episodes = load_heldout(DatasetConfig(format="trajectories", path="data/grid-eval"))

Sources (`DatasetConfig.format`):
    env            episodes recorded now from an env (e.g. GridWorld with split=eval: held-out layouts) with a
                   registered policy; nothing is written to disk
    trajectories   a folder written by `worldbagel collect` / EpisodeWriter (worldbagel.data.trajectory)
    nwm            the NWM/GNM layout (worldbagel.data.nwm; traj_data.pkl is a pickle: trusted data only)
    video          a video file (mp4/gif/...), a folder of frame images, or a folder of video files; such
                   episodes have no actions (`has_actions` is False) and are evaluated as continuations
    lerobot        a LeRobot v2 dataset (worldbagel.data.lerobot; needs pyarrow)

Every format but env is read by `worldbagel.data.episode_source.load_episodes`, as `finetune data=` is.

Every source yields `worldbagel.data.trajectory.Episode`s (T+1 frames, T actions, T+1 infos). A video
episode stores `None` actions and empty action texts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldbagel.actions import codec_for_env
from worldbagel.data.annotations import make_annotator
from worldbagel.data.episode_source import NWMSourceConfig, SourceConfig, load_episodes
from worldbagel.data.trajectory import Episode
from worldbagel.data.video_folder import video_episodes  # re-exported: eval's name for the video reader
from worldbagel.envs.gridworld import GridWorldEnv
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env, first_env, frame_of

from .options import DATASET_FORMATS, DatasetConfig

__all__ = [
    "episode_env_kwargs",
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
AUTO_ANNOTATE = "auto"


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


def episode_env_kwargs(episode: Episode) -> Mapping[str, Any]:
    """The env kwargs the episode was recorded with (from its metadata; {} when it records none)."""
    meta = episode.metadata or {}
    inner = meta.get("metadata") if isinstance(meta.get("metadata"), Mapping) else {}
    return inner.get("env_kwargs") or meta.get("env_kwargs") or {}


def gridworld_size(episode: Episode) -> int | tuple[int, int] | None:
    """Maze size of a top-down GridWorld episode whose infos hold the symbolic state, else None.

    Only such episodes can be scored by decoding frames (`worldbagel.envs.decode_frame`)."""
    if episode.env_id != GRIDWORLD_TOPDOWN:
        return None
    kwargs = episode_env_kwargs(episode)
    if kwargs.get("view", "topdown") != "topdown":
        return None
    if not episode.infos or not all(
        all(k in info for k in ("agent", "heading", "goal")) for info in episode.infos
    ):
        return None
    size = kwargs.get("size", 8)
    return tuple(size) if isinstance(size, (list, tuple)) else int(size)


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
    env's action codec; text annotations from the annotator `annotate`, see worldbagel.data.annotations;
    `auto`: the env's own annotator, `gridworld-think` for GridWorld envs, none for the others)."""
    if not (isinstance(episodes, int) and episodes >= 1):
        raise bad_argument("dataset.episodes", episodes, "use an int >= 1")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise bad_argument("dataset.max_steps", max_steps, "use an int >= 1")
    kwargs = dict(env_kwargs or {})
    if annotate != AUTO_ANNOTATE:
        make_annotator(annotate)  # an unknown name fails before the env is built
    env = first_env(lambda: build_env(env_id, kwargs))
    try:
        annotator = make_annotator(_annotator_name(annotate, env))
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


def _annotator_name(annotate: str | None, env: Any) -> str | None:
    """`annotate`, with `auto` resolved: GridWorld envs get `gridworld-think` (how the shipped model answers),
    other envs no annotations."""
    if annotate != AUTO_ANNOTATE:
        return annotate

    return "gridworld-think" if isinstance(getattr(env, "unwrapped", env), GridWorldEnv) else None


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
    """The dataset's episodes through the shared episode-source readers (worldbagel.data.episode_source)."""
    nwm = NWMSourceConfig(cfg.split_dir, cfg.split, cfg.metric_waypoint_spacing)
    source = SourceConfig(cfg.format, cfg.frame_skip, nwm=nwm, lerobot=cfg.lerobot)
    return load_episodes(path, source, splits=cfg.splits, name="dataset.path")
