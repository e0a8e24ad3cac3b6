"""Write a trajectory folder (`worldbagel collect`'s output) as a Minari dataset, Gymnasium's offline-RL format.

    check_new_dataset_id("worldbagel/gridworld-oracle-v0")       # before collecting: a usable, unused id
    export_minari("data/grid", "worldbagel/gridworld-oracle-v0", env)
    minari.load_dataset("worldbagel/gridworld-oracle-v0")        # anywhere, with minari alone

The dataset is written with minari's own `create_dataset_from_buffers` (HDF5 storage) into minari's local
datasets root: `$MINARI_DATASETS_PATH`, else `~/.minari/datasets`. Per episode, in the folder's id order:
`observations` are the recorded RGB frames [T+1, H, W, 3] (observation space `Box(0, 255, (H, W, 3), uint8)`),
`actions` the env actions [T] in the env's action space, and `rewards`, `terminations`, `truncations` the
step records [T]; the episode's `seed` is kept. Text (action texts, annotations) stays in the worldbagel
folder. Frames are stored lossless unless `jpeg=True` (minari's JPEG encoding: smaller, lossy).

A failed export removes the half-written dataset, so an id is either complete or absent.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from worldbagel.data.trajectory import Episode, TrajectoryDataset
from worldbagel.errors import DependencyNotInstalled, WorldBagelError, bad_argument

__all__ = ["MinariConfig", "check_new_dataset_id", "export_minari"]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 2**20
"""Frames held in memory at once while exporting (bytes); episodes are handed to minari in chunks this size."""

INSTALL = "pip install 'worldbagel[minari]' (or pip install 'minari[hdf5]')"


@dataclass
class MinariConfig:
    """`collect`'s Minari output (`minari.dataset_id=namespace/name-v0`)."""

    dataset_id: str | None = None
    """Also write the collected episodes as this Minari dataset (`namespace/name-v0`, loadable with
    `minari.load_dataset`) under $MINARI_DATASETS_PATH (default ~/.minari/datasets); None writes none.
    Needs the `minari` extra."""
    author: str | None = None
    """Author stored in the dataset's metadata."""
    description: str | None = None
    """Description stored in the dataset's metadata; None: the env, policy and episode count."""
    jpeg: bool = False
    """Store frames JPEG-encoded (smaller, lossy); false keeps them exactly as recorded."""


def _minari() -> Any:
    try:
        # lazy: optional dependency (minari extra: only Minari output needs it)
        import h5py  # noqa: F401 - minari's HDF5 storage
        import minari
    except ImportError as exc:
        raise DependencyNotInstalled(
            f"writing a Minari dataset needs minari with HDF5 ({exc}); {INSTALL}"
        ) from exc
    return minari


def check_new_dataset_id(dataset_id: str, name: str = "minari.dataset_id") -> Path:
    """The folder a new Minari dataset `dataset_id` will be written to; raises when the id is malformed or
    already taken (call before collecting, so a long collection does not end in a refused export)."""
    _minari()
    from minari.dataset.minari_dataset import parse_dataset_id  # lazy: optional dependency (minari extra)
    from minari.storage.datasets_root_dir import get_dataset_path  # lazy: optional dependency (minari extra)

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError):  # TypeError: an id without its -v<version>
        raise bad_argument(
            name,
            dataset_id,
            "use Minari's id form namespace/name-v0 (letters, digits, '-' and '_'; the namespace is optional, "
            "the version is not), e.g. worldbagel/gridworld-oracle-v0",
        ) from None
    path = Path(get_dataset_path(dataset_id))
    if path.exists():
        raise bad_argument(
            name,
            dataset_id,
            f"a Minari dataset with this id exists at {path}; give a new version (e.g. -v1) or delete it "
            f"with `minari delete {dataset_id}`",
        )
    return path


def export_minari(
    root: str | os.PathLike,
    dataset_id: str,
    env: Any,
    author: str | None = None,
    description: str | None = None,
    algorithm_name: str | None = None,
    jpeg: bool = False,
) -> Any:
    """Write every episode of the trajectory folder `root` as the Minari dataset `dataset_id`; returns the
    `minari.MinariDataset`. `env` (a built gymnasium env) gives the action space and the env spec stored
    with the dataset; `algorithm_name` and `description` default to the policy and env `collect` recorded.
    Raises when an indexed episode is unreadable: a dataset is exported whole or not at all."""
    minari = _minari()
    path = check_new_dataset_id(dataset_id)
    data = TrajectoryDataset(root)  # a frame that does not decode fails the export (and removes it)
    if data.skipped:
        eid, reason = data.skipped[0]
        raise WorldBagelError(
            f"{root}: {len(data.skipped)} episode(s) cannot be read (first: {eid}: {reason}); re-run "
            "`worldbagel collect` on the folder to record them again, then export"
        )
    if not len(data):
        raise bad_argument("root", str(root), "the folder holds no episodes to export")
    episodes = sorted(data, key=lambda e: e.id)
    shapes = {tuple(e.load_frame(0).shape) for e in episodes}
    if len(shapes) != 1:
        raise WorldBagelError(
            f"{root}: episodes have different frame shapes {sorted(shapes)}; Minari needs one"
        )
    (shape,) = shapes
    made_by = episodes[0].metadata.get("metadata") or {}  # collect's {"env": ..., "policy": ...}
    algorithm_name = algorithm_name or made_by.get("policy")
    if description is None:
        source = made_by.get("env") or episodes[0].env_id or "an env"
        description = f"worldbagel collect: {source} x {algorithm_name or 'a'} policy, RGB frames"

    observation_space = spaces.Box(0, 255, shape, np.uint8)
    action_space = env.action_space
    dataset = None
    try:
        with warnings.catch_warnings():
            # minari recommends author e-mail, code link and an eval env; none of them is known here
            warnings.filterwarnings(
                "ignore", message=r".*(author|code_permalink|eval_env)", category=UserWarning
            )
            for chunk in _chunks(episodes, int(np.prod(shape))):
                buffers = [_buffer(e, i, action_space) for e, i in chunk]
                if dataset is None:
                    dataset = minari.create_dataset_from_buffers(
                        dataset_id,
                        buffers,
                        env=env,
                        observation_space=observation_space,
                        action_space=action_space,
                        algorithm_name=algorithm_name,
                        author=author,
                        description=description,
                        data_format="hdf5",
                        jpeg_encoding=jpeg,
                    )
                else:
                    dataset.update_dataset_from_buffer(buffers)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # nothing half-written stays under the id
        raise
    logger.info("wrote Minari dataset %s (%d episodes) to %s", dataset_id, len(episodes), path)
    return dataset


def _chunks(episodes: Sequence[Episode], bytes_per_frame: int) -> Iterator[list[tuple[Episode, int]]]:
    """(episode, index) groups whose frames stay under CHUNK_BYTES (one episode at least)."""
    chunk: list[tuple[Episode, int]] = []
    size = 0
    for i, e in enumerate(episodes):
        frame_bytes = bytes_per_frame * (e.length + 1)
        if chunk and size + frame_bytes > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append((e, i))
        size += frame_bytes
    if chunk:
        yield chunk


def _buffer(episode: Episode, index: int, action_space: Any) -> Any:
    """One episode as a minari EpisodeBuffer (frames loaded from disk here, released with the buffer)."""
    from minari.data_collector.episode_buffer import EpisodeBuffer  # lazy: optional dependency (minari extra)

    actions = [np.asarray(a, dtype=action_space.dtype) for a in episode.actions]
    bad = next((a for a in actions if not action_space.contains(a)), None)
    if bad is not None:
        raise WorldBagelError(
            f"episode {episode.id}: action {bad!r} is not in the env's action space {action_space}; "
            "export the folder with the env that recorded it"
        )
    return EpisodeBuffer(
        id=index,
        seed=episode.seed,
        # frame by frame, not `episode.frames`, which would keep every episode's frames cached in memory
        observations=[episode.load_frame(t) for t in range(episode.length + 1)],
        actions=actions,
        rewards=[float(r) for r in episode.rewards],
        terminations=[bool(t) for t in episode.terminated],
        truncations=[bool(t) for t in episode.truncated],
        infos={},
    )
