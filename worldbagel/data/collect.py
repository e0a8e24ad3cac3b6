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

import logging
import os
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
from worldbagel.rollout import first_env, frame_of

__all__ = ["CollectResult", "collect", "episode_id", "record_episode"]

logger = logging.getLogger(__name__)

INDEX_EVERY_S = 2.0
"""How often a collection adds its finished episodes to index.json (seconds); rewriting the index after every
episode made collecting 8,000 two-step episodes take 6.8 minutes (docs/benchmarks.md)."""


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
    env_factory: Callable[[], Any], policy_factory: Callable[[Any], Any], annotator: Callable | None = None
) -> None:
    global _PROCESS_WORKER
    _PROCESS_WORKER = _Worker(env_factory, policy_factory, annotator)


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
    root.mkdir(parents=True, exist_ok=True)
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
    existing = {e.get("id") for e in entries}
    result = CollectResult(root=root, requested=episodes)
    todo = []
    for i in range(episodes):
        (result.skipped_existing if episode_id(i) in existing else todo).append(i)
    result.skipped_existing = [episode_id(i) for i in result.skipped_existing]
    writer_kwargs = {
        "env_id": env_id,
        "split": split,
        "frame_format": frame_format,
        "preview_fps": preview_fps,
        "metadata": dict(metadata or {}),
        "index": False,  # entries reach index.json in batches, below
    }
    pending: list[dict[str, Any]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        update_index(root, pending)
        pending.clear()
        last_flush = time.monotonic()

    def record(outcome: tuple[str, dict | None, str | None]) -> None:
        eid, entry, error = outcome
        if error is None:
            result.written.append(entry)
            pending.append(entry)
            if time.monotonic() - last_flush >= INDEX_EVERY_S:
                flush()
        else:
            result.failed.append((eid, error))
        if progress is not None:
            progress(len(result.written) + len(result.failed), len(todo), eid, error)

    try:
        if workers == 1 or len(todo) <= 1:
            worker = _Worker(env_factory, policy_factory, annotator)
            try:
                for i in todo:
                    record(worker.run(root, i, seed, writer_kwargs, max_steps))
            finally:
                worker.close()
        else:
            _run_pool(
                workers,
                todo,
                record,
                root,
                seed,
                writer_kwargs,
                max_steps,
                env_factory,
                policy_factory,
                annotator,
            )
    finally:
        flush()
    result.written.sort(key=lambda e: e["id"])
    return result


def _run_pool(
    workers, todo, record, root, seed, writer_kwargs, max_steps, env_factory, policy_factory, annotator
):
    """Record the `todo` episodes in `workers` spawned processes, passing each outcome to `record`."""
    import multiprocessing as mp

    with ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_process,
        initargs=(env_factory, policy_factory, annotator),
    ) as pool:
        futures = [pool.submit(_run_in_process, root, i, seed, writer_kwargs, max_steps) for i in todo]
        for fut in as_completed(futures):
            record(fut.result())
