"""Record env x policy episodes into the trajectory format (worldbagel/data/trajectory.py), resumably.

    collect(partial(build_env, "WorldBagel/GridWorld-v0"), policy_factory, "data/grid", episodes=100)

Episode i has id `ep-{i:06d}` and is seeded with `seed + i` (env reset and policy reset), so the data do
not depend on how a collection was split into runs: re-running with the same arguments skips the ids
already in index.json, cleans leftovers of interrupted writers and records only the missing episodes.
An episode that raises is discarded (nothing half-written stays), logged and reported in the result;
the env is rebuilt and collection goes on. With `workers > 1` episodes run in worker processes
(spawned, one env each).

Episode folders are published as they finish; index.json is updated in batches (every `INDEX_EVERY_S`
seconds and when the collection ends, also when it ends by an exception) by this process alone. An episode
whose folder was published but whose entry had not reached the index when the process died is recorded again
by the next run (or recovered by `rebuild_index`): nothing finished is lost, and the index stays complete.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldbagel.actions import ActionCodec, codec_for_env
from worldbagel.data.trajectory import EpisodeWriter, read_index, remove_partial
from worldbagel.data.trajectory_index import update_index
from worldbagel.errors import bad_argument
from worldbagel.folder_lock import exclusive_folder
from worldbagel.rollout import first_env, frame_of

__all__ = ["CollectResult", "collect", "episode_id", "record_episode"]

logger = logging.getLogger(__name__)

INDEX_EVERY_S = 2.0
"""How often a collection adds its finished episodes to index.json (seconds): rewriting the whole index after
every episode makes a collection of many short episodes spend most of its time there (docs/benchmarks.md,
"Collecting")."""


STOPPING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""OS errors that end a collection (disk full, quota, read-only or forbidden folder) instead of failing one
episode and going on: every later episode would fail the same way."""


def episode_id(index: int) -> str:
    """The id of episode `index` in a collected dataset."""
    return f"ep-{index:06d}"


@dataclass
class CollectResult:
    """What one `collect` call did."""

    root: Path
    requested: int
    skipped_existing: list[str] = field(default_factory=list)
    written: list[dict[str, Any]] = field(default_factory=list)
    """Index entries of the episodes written by this call."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(episode id, error text) of episodes that raised."""


def record_episode(
    env: Any,
    policy: Any,
    writer: EpisodeWriter,
    seed: int,
    codec: ActionCodec | None = None,
    max_steps: int | None = None,
    annotator: Callable[[Any, Any, Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one episode into `writer` and finish it; returns the index entry.

    `annotator(env, obs, info)` is called on the observation each action is taken from and returns text
    annotations of that step (any of `instruction`, `qa` [{q, a}], `thought`); an annotator with an
    `outcome(env, obs, info)` method is also called on the observation the action led to, and its text is
    stored as the step's `outcome`. See worldbagel/data/annotations.py.
    """
    policy.reset(seed=seed)
    obs, info = env.reset(seed=seed)
    writer.start(frame_of(obs, env), info)
    done = False
    while not done:
        notes = dict(annotator(env, obs, info)) if annotator is not None else {}
        action = policy.act(obs, info)
        text = codec.encode(action) if codec is not None else None
        obs, reward, terminated, truncated, info = env.step(action)
        if annotator is not None and hasattr(annotator, "outcome"):
            notes["outcome"] = annotator.outcome(env, obs, info)
        capped = max_steps is not None and writer.length + 1 >= max_steps
        writer.add_step(
            action,
            frame_of(obs, env),
            reward,
            terminated,
            truncated or (capped and not terminated),
            info,
            text,
            **notes,
        )
        done = bool(terminated or truncated or capped)
    return writer.finish()


class _Worker:
    """An env + policy kept alive across episodes (rebuilt after a failure)."""

    def __init__(
        self,
        env_factory: Callable[[], Any],
        policy_factory: Callable[[Any], Any],
        annotator: Callable[[Any, Any, Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ):
        self.env_factory, self.policy_factory, self.annotator = env_factory, policy_factory, annotator
        self.env = self.policy = self.codec = None
        self.built_once = False

    def run(self, root: Path, index: int, seed: int, writer_kwargs: Mapping[str, Any], max_steps: int | None):
        eid = episode_id(index)
        if self.env is None and not self.built_once:  # a first build that fails is a config error: stop
            self.env = first_env(self.env_factory)
            self.built_once = True
        try:
            if self.env is None:
                self.env = self.env_factory()
            if self.policy is None:
                self.policy = self.policy_factory(self.env)
                self.codec = _codec_or_none(self.env)
            with EpisodeWriter(root, eid, seed=seed + index, **writer_kwargs) as writer:
                return (
                    eid,
                    record_episode(
                        self.env, self.policy, writer, seed + index, self.codec, max_steps, self.annotator
                    ),
                    None,
                )
        except OSError as exc:
            if exc.errno in STOPPING_ERRNOS:  # every later episode would fail the same way: stop here
                self.close()
                raise
            logger.error("episode %s failed: %s: %s", eid, type(exc).__name__, exc, exc_info=True)
            self.close()
            return eid, None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # one bad episode must not stop the collection
            logger.error("episode %s failed: %s: %s", eid, type(exc).__name__, exc, exc_info=True)
            self.close()
            return eid, None, f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception as exc:  # a crashed env may not close cleanly
                logger.debug("closing env failed: %s", exc)
        self.env = self.policy = self.codec = None


def _codec_or_none(env: Any) -> ActionCodec | None:
    try:
        return codec_for_env(env)
    except Exception as exc:
        logger.warning("no action codec for %s (%s); action_text comes from info['action_text']", env, exc)
        return None


_PROCESS_WORKER: _Worker | None = None


def _init_process(
    env_factory: Callable[[], Any],
    policy_factory: Callable[[Any], Any],
    annotator: Callable | None,
    parent: int,
) -> None:
    """Build this worker's env and policy and start the watchdog that ends it with `parent` (the pid of the
    collecting process, passed in: a parent killed while this worker was still starting has already handed it
    to another parent, so `os.getppid()` here could name the wrong one)."""
    global _PROCESS_WORKER
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _PROCESS_WORKER = _Worker(env_factory, policy_factory, annotator)


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker process once its parent has died (the pool's queues would keep it waiting forever).

    An orphan is re-parented, so its parent pid changes; polling it works on every POSIX system, unlike
    Linux's PR_SET_PDEATHSIG, which fires when the *thread* that spawned the worker ends."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _run_in_process(
    root: Path, index: int, seed: int, writer_kwargs: Mapping[str, Any], max_steps: int | None
):
    return _PROCESS_WORKER.run(root, index, seed, writer_kwargs, max_steps)


def collect(
    env_factory: Callable[[], Any],
    policy_factory: Callable[[Any], Any],
    root: str | os.PathLike,
    episodes: int,
    seed: int = 0,
    env_id: str = "",
    split: str = "train",
    max_steps: int | None = None,
    frame_format: str = "png",
    preview_fps: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    workers: int = 1,
    progress: Callable[[int, int, str, str | None], None] | None = None,
    annotator: Callable[[Any, Any, Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> CollectResult:
    """Make sure `root` holds episodes ep-000000 .. ep-{episodes-1}; record the missing ones.

    `progress(done, todo, episode_id, error_or_None)` is called after each recorded (or failed) episode.
    `annotator(env, obs, info)` adds text annotations to each step (see `record_episode`).
    Factories must be picklable (module-level functions or functools.partial) when `workers > 1`.
    """
    if not (isinstance(episodes, int) and episodes >= 1):
        raise bad_argument("episodes", episodes, "use an int >= 1")
    if not (isinstance(workers, int) and workers >= 1):
        raise bad_argument("workers", workers, "use an int >= 1")
    root = Path(root)
    writer_kwargs = {
        "env_id": env_id,
        "split": split,
        "frame_format": frame_format,
        "preview_fps": preview_fps,
        "metadata": dict(metadata or {}),
        "index": False,  # entries reach index.json in batches, through _IndexBatches
    }
    with exclusive_folder(root, "collect"):
        todo, skipped = _missing_episodes(root, episodes, seed, env_id)
        result = CollectResult(root=root, requested=episodes, skipped_existing=skipped)
        with _IndexBatches(root) as index:

            def record(outcome: tuple[str, dict | None, str | None]) -> None:
                eid, entry, error = outcome
                if error is None:
                    result.written.append(entry)
                    index.add(entry)
                else:
                    result.failed.append((eid, error))
                if progress is not None:
                    progress(len(result.written) + len(result.failed), len(todo), eid, error)

            if workers == 1 or len(todo) <= 1:
                worker = _Worker(env_factory, policy_factory, annotator)
                try:
                    for i in todo:
                        record(worker.run(root, i, seed, writer_kwargs, max_steps))
                finally:
                    worker.close()
            else:
                factories = (env_factory, policy_factory, annotator)
                _run_pool(workers, todo, record, root, seed, writer_kwargs, max_steps, *factories)
    result.written.sort(key=lambda e: e["id"])
    return result


def _missing_episodes(root: Path, episodes: int, seed: int, env_id: str) -> tuple[list[int], list[str]]:
    """(indices to record, ids already recorded) of episodes 0..episodes-1 in `root`."""
    cleaned = remove_partial(root)
    if cleaned:
        logger.info("removed %d unfinished episode folder(s) of an interrupted run", cleaned)
    entries = read_index(root)
    others = sorted(
        {str(e.get("env_id")) for e in entries if env_id and e.get("env_id") not in (env_id, None)}
    )
    if others:
        raise bad_argument(
            "out", str(root), f"it holds episodes of {others}, not {env_id}; use a new folder for another env"
        )
    existing = _verified_ids(root, entries, seed)
    todo = [i for i in range(episodes) if episode_id(i) not in existing]
    return todo, [episode_id(i) for i in range(episodes) if episode_id(i) in existing]


class _IndexBatches:
    """Adds finished episodes to index.json every INDEX_EVERY_S seconds and once more when the block ends,
    however it ends. When the block ends by an error and that last write fails too (a full disk), the first
    error is the one raised: the episodes' folders are complete, and the next run (or rebuild_index) picks
    them up."""

    def __init__(self, root: Path):
        self.root, self.pending, self.last = root, [], time.monotonic()

    def __enter__(self) -> _IndexBatches:
        return self

    def add(self, entry: dict[str, Any]) -> None:
        self.pending.append(entry)
        if time.monotonic() - self.last >= INDEX_EVERY_S:
            self.flush()

    def flush(self) -> None:
        update_index(self.root, self.pending)
        self.pending.clear()
        self.last = time.monotonic()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.flush()
        except OSError as err:
            if exc is None:
                raise
            logger.error("could not add %d finished episode(s) to the index: %s", len(self.pending), err)


def _run_pool(
    workers, todo, record, root, seed, writer_kwargs, max_steps, env_factory, policy_factory, annotator
):
    """Record the `todo` episodes in `workers` spawned processes, passing each outcome to `record`."""
    with ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_process,
        initargs=(env_factory, policy_factory, annotator, os.getpid()),
    ) as pool:
        futures = [pool.submit(_run_in_process, root, i, seed, writer_kwargs, max_steps) for i in todo]
        try:
            for fut in as_completed(futures):
                record(fut.result())
        except BaseException:
            for fut in futures:  # the pool's shutdown would otherwise wait for every queued episode
                fut.cancel()
            raise


def _verified_ids(root: Path, entries: list[dict[str, Any]], seed: int) -> set[str]:
    """The ids of index entries whose folder holds the episode the entry describes.

    An entry recorded with another base seed means the folder was collected with other arguments: that is
    an error, not something to record over. An entry whose folder is missing or disagrees with it (id, seed
    or length in episode.json; e.g. left by a writer that did not hold the folder lock) is reported and
    recorded again, which replaces both."""
    wrong_seed = [
        e["id"]
        for e in entries
        if isinstance(e.get("seed"), int)
        and str(e.get("id", "")).startswith("ep-")
        and e["seed"] != seed + int(e["id"][3:])
    ]
    if wrong_seed:
        first = next(e for e in entries if e["id"] == wrong_seed[0])
        raise bad_argument(
            "seed",
            seed,
            f"{root} holds {len(wrong_seed)} episode(s) recorded with another seed ({first['id']} has seed "
            f"{first['seed']}, so that run used seed={first['seed'] - int(first['id'][3:])}); rerun with that "
            "seed to resume it, or use a new out=",
        )
    good, repaired = set(), []
    for e in entries:
        try:
            meta = json.loads((root / str(e["id"]) / "episode.json").read_text(encoding="utf-8"))
            same = all(meta.get(k) == e.get(k) for k in ("id", "seed", "length"))
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        (good.add if same else repaired.append)(e["id"])
    if repaired:
        logger.warning(
            "%d index entr%s of %s do not match their episode folder (%s%s): recording them again",
            len(repaired),
            "y" if len(repaired) == 1 else "ies",
            root,
            ", ".join(repaired[:5]),
            ", ..." if len(repaired) > 5 else "",
        )
    return good
