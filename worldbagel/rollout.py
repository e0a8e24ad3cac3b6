"""Run a policy in an env for a number of episodes: frames, returns, success, SPL, videos, metrics.json.

    result = run_rollouts(lambda: make_env("WorldBagel/GridWorld-v0"), policy, episodes=3, seed=0,
                          out_dir="runs/demo")

Episode i resets the env with `seed + i` (and the policy with the same seed), so a run is reproducible.
An exception in one episode (env crash, policy error) is logged, recorded as `status: "failed"` with its
error text, the env is closed and rebuilt from `env_factory`, and the next episode runs; episodes that
finished are kept. metrics.json is rewritten atomically after every episode, so even a killed run leaves
the metrics of the episodes it finished.

metrics.json (see `RolloutResult.to_json`):
- top level: `seed`, `episodes_requested`, any `metadata` given (`worldbagel rollout`: env name and id,
  policy name, and `policy_metadata`: the policy kwargs, the world model's name and path, the sampler and the
  code version with its git SHA), `episodes` (a list) and `aggregate`.
- per episode: `episode` (index), `seed`, `status` ("ok" | "failed"), `length` (steps taken), `return`
  (sum of rewards), `success` (bool, or null when the env does not report it), `spl` (from the env's
  final info when it reports `spl`; else, when the reset info has a shortest-path `distance` as in
  GridWorld, success * shortest / max(shortest, length); else null), `shortest_path` (that distance or
  null), `error` (text or null), `video` / `gif` (file names in the run folder or null), `wall_s`, and the
  final info's `soft_spl` / `distance_to_goal` when present.
- aggregate: `episodes`, `completed`, `failed`, and the means over completed episodes of `success`
  (as `success_rate`), `spl`, `length`, `return` (null when no episode reports the value).

Videos: a policy that exposes `views() -> {label: image}` (the planner: its imagined next frame and the
goal image) gets them beside the real frame: real | imagined | goal. The views returned after the action
of step t are shown with the real frame t + 1 they were meant to predict; frame 0 has blank panels.

The library does not print; pass `progress(done, total, episode_result)` to follow episodes, and
`on_step(episode, steps, limit)` to follow the steps of the running episode (`limit`: its step limit when
known, from `max_steps`, the env's spec or its own `max_steps`, else None).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

import worldbagel.envs as wb_envs  # registers the WorldBagel/... ids
from worldbagel.atomic_files import atomic_write_text
from worldbagel.code_version import code_version
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.json_values import to_jsonable
from worldbagel.policies.base import Policy
from worldbagel.video import side_by_side, write_video

__all__ = [
    "EpisodeResult",
    "RolloutResult",
    "build_env",
    "first_env",
    "frame_of",
    "policy_kwargs",
    "policy_metadata",
    "run_rollouts",
    "step_limit",
]

logger = logging.getLogger(__name__)

EXTRA_INFO_KEYS = ("soft_spl", "distance_to_goal")


@dataclass
class EpisodeResult:
    """Outcome of one episode (frames are kept only with `keep_frames=True`)."""

    episode: int
    seed: int
    status: str = "ok"
    length: int = 0
    ret: float = 0.0
    success: bool | None = None
    spl: float | None = None
    shortest_path: float | None = None
    error: str | None = None
    video: str | None = None
    gif: str | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    frames: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The metrics.json entry of this episode."""
        out = {
            "episode": self.episode,
            "seed": self.seed,
            "status": self.status,
            "length": self.length,
            "return": self.ret,
            "success": self.success,
            "spl": self.spl,
            "shortest_path": self.shortest_path,
            "error": self.error,
            "video": self.video,
            "gif": self.gif,
            "wall_s": round(self.wall_s, 4),
        }
        out.update(self.extra)
        return to_jsonable(out)


@dataclass
class RolloutResult:
    """All episodes of a run, the run folder and the metrics file."""

    episodes: list[EpisodeResult]
    seed: int
    episodes_requested: int
    out_dir: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics_path(self) -> Path | None:
        """`<out_dir>/metrics.json`, or None for a run without a folder."""
        return None if self.out_dir is None else self.out_dir / "metrics.json"

    def aggregate(self) -> dict[str, Any]:
        """Counts and means over the completed episodes (see module docstring)."""
        done = [e for e in self.episodes if e.status == "ok"]

        def mean(values: list[Any]) -> float | None:
            values = [float(v) for v in values if v is not None]
            return float(np.mean(values)) if values else None

        return {
            "episodes": len(self.episodes),
            "completed": len(done),
            "failed": len(self.episodes) - len(done),
            "success_rate": mean([e.success for e in done]),
            "spl": mean([e.spl for e in done]),
            "length": mean([e.length for e in done]),
            "return": mean([e.ret for e in done]),
        }

    def to_json(self) -> dict[str, Any]:
        """The whole metrics.json document."""
        return to_jsonable(
            {
                **self.metadata,
                "seed": self.seed,
                "episodes_requested": self.episodes_requested,
                "episodes": [e.to_json() for e in self.episodes],
                "aggregate": self.aggregate(),
            }
        )

    def write_metrics(self) -> Path | None:
        """Write metrics.json atomically (no-op without an out_dir)."""
        if self.metrics_path is None:
            return None
        atomic_write_text(self.metrics_path, json.dumps(self.to_json(), indent=1) + "\n")
        return self.metrics_path


def build_env(env_id: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    """`gymnasium.make(env_id, render_mode="rgb_array", **kwargs)` with the WorldBagel ids registered.

    Module-level (picklable with functools.partial) so worker processes can build their own envs.
    """
    if env_id not in gym.registry:
        raise bad_argument(
            "env.id", env_id, f"use a registered gymnasium id, e.g. one of {wb_envs.WORLD_BAGEL_IDS}"
        )
    kw = dict(kwargs or {})
    kw.setdefault("render_mode", "rgb_array")
    if env_id.startswith("WorldBagel/"):  # the registered TimeLimit follows env.kwargs.max_steps
        kw = wb_envs.with_step_limits(kw)
    return gym.make(env_id, **kw)


def policy_kwargs(
    policy: str, kwargs: Mapping[str, Any], model: Any = None, sampler: Any = None
) -> dict[str, Any]:
    """A policy's factory kwargs with a command's `model=` / `sampler=` groups in place of its own.

    World-model policies (planner, reasoning) name their model and sampler in their kwargs (`policy.kwargs.model`);
    a command's `model=bagel-7b model.path=DIR` / `sampler=fast` replace them. A policy without those kwargs uses
    no world model, and giving it one is refused.
    """
    out = dict(kwargs)
    for key, value in (("model", model), ("sampler", sampler)):
        if value is None:
            continue
        if key not in out:
            raise bad_argument(
                key,
                getattr(value, "name", key) if key == "model" else key,
                f"policy={policy} does not use a world model; use policy=planner or policy=reasoning",
            )
        out[key] = value
    return out


def policy_metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What metrics.json records about the acting policy and the code: `policy_kwargs` (the factory's kwargs,
    as `policy_kwargs` gives them), `model` (name and path of a world-model policy's model, else None),
    `sampler` (the flow sampler it predicts with: the given one, else its model's own preset; None without a
    world model), and `code_version` (package version, git SHA: worldbagel/code_version.py)."""

    def plain(value: Any) -> Any:
        return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value

    out: dict[str, Any] = {
        "policy_kwargs": {k: plain(v) for k, v in kwargs.items()},
        "model": None,
        "sampler": None,
        "code_version": code_version(),
    }
    if "model" in kwargs:  # a world-model policy (planner, reasoning): resolve presets as it will
        # lazy: the loader imports torch (seconds); rollouts without a world model never need it
        from worldbagel.world_model_loader import model_config
        from worldbagel.world_model_loader import sampler_config as generation_config

        model = model_config(plain(kwargs["model"]))
        out["model"] = {"name": model.name, "path": model.path}
        out["sampler"] = asdict(generation_config(plain(kwargs.get("sampler")) or model.sampler))
    return out


def frame_of(obs: Any, env: Any = None) -> np.ndarray | None:
    """The RGB frame [H, W, 3] uint8 of an observation (array, or dict with 'rgb'/'image'), else env.render()."""
    if isinstance(obs, Mapping):
        obs = next((obs[k] for k in ("rgb", "image", "pixels") if k in obs), None)
    arr = None if obs is None else np.asarray(obs)
    if arr is not None and arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
        return arr
    if env is not None:
        rendered = env.render()
        if rendered is not None:
            return np.asarray(rendered, dtype=np.uint8)
    return None


def _bind(policy_or_factory: Any, env: Any) -> Policy:
    if isinstance(policy_or_factory, type) or not hasattr(policy_or_factory, "act"):
        return policy_or_factory(env)
    bind = getattr(policy_or_factory, "bind", None)
    if bind is not None:
        bind(env)
    return policy_or_factory


def first_env(env_factory: Callable[[], Any]) -> Any:
    """Build the first env; a failure there is a configuration problem, not an episode crash."""
    try:
        return env_factory()
    except WorldBagelError:
        raise
    except Exception as exc:
        raise WorldBagelError(
            f"could not build the env ({type(exc).__name__}: {exc}); check the env id and its kwargs"
        ) from exc


def _close(env: Any) -> None:
    try:
        env.close()
    except Exception as exc:  # a crashed env may fail to close too; nothing more to do about it
        logger.debug("closing the env failed: %s", exc)


def run_rollouts(
    env_factory: Callable[[], Any],
    policy: Policy | Callable[[Any], Policy],
    episodes: int,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    max_steps: int | None = None,
    video: bool = True,
    gif: bool = True,
    fps: float | None = None,
    keep_frames: bool = False,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int, int, EpisodeResult], None] | None = None,
    on_step: Callable[[int, int, int | None], None] | None = None,
    on_episode: Callable[[EpisodeResult, list[np.ndarray], float], None] | None = None,
) -> RolloutResult:
    """Run `episodes` episodes of `policy` in envs from `env_factory`; see the module docstring.

    `policy` is a Policy (its `bind(env)` is called when present) or a factory `env -> Policy`, called
    whenever a new env is built. `max_steps` caps each episode on top of the env's own limit. With
    `out_dir`, writes `episode_XXX.mp4` / `.gif` (when `video` / `gif`) and metrics.json there.
    `on_step(episode, steps, limit)` is called after every env step (see the module docstring), and
    `on_episode(result, frames, fps)` after every episode with the frames its videos show (with the policy's
    views) and their frame rate.
    """
    if not (isinstance(episodes, int) and episodes >= 1):
        raise bad_argument("episodes", episodes, "use an int >= 1")
    if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
        raise bad_argument("max_steps", max_steps, "use an int >= 1, or None for the env's own limit")
    out = None if out_dir is None else Path(out_dir)
    # a first env (or policy) that fails to build is a config error: it stops the run before any folder exists
    env = first_env(env_factory)
    try:
        bound = _bind(policy, env)
    except BaseException:
        _close(env)
        raise
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    result = RolloutResult(
        [], seed=seed, episodes_requested=episodes, out_dir=out, metadata=dict(metadata or {})
    )
    for i in range(episodes):
        ep_seed = seed + i
        er = EpisodeResult(episode=i, seed=ep_seed)
        frames: list[np.ndarray] = []
        views: list[dict[str, np.ndarray]] = []
        start = time.perf_counter()
        try:
            if env is None:
                env = env_factory()
                bound = _bind(policy, env)
            step = None if on_step is None else partial(on_step, i)
            _run_episode(env, bound, ep_seed, max_steps, er, frames, views, step)
        except Exception as exc:  # an env crash must not take the finished episodes down with it
            er.status, er.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.error("episode %d (seed %d) failed: %s", i, ep_seed, er.error, exc_info=True)
            if env is not None:
                _close(env)
            env, bound = None, None
        er.wall_s = time.perf_counter() - start
        written = out is not None and (video or gif)
        shown = with_views(frames, views) if frames and (written or on_episode is not None) else []
        rate = fps or _env_fps(env)
        if written and shown:
            _write_videos(out, er, shown, rate, video, gif)
        if keep_frames and frames:
            er.frames = np.stack(frames)
        result.episodes.append(er)
        result.write_metrics()
        if on_episode is not None:
            on_episode(er, shown, rate)
        if progress is not None:
            progress(i + 1, episodes, er)
    if env is not None:
        _close(env)
    return result


def _run_episode(
    env: Any,
    policy: Policy,
    seed: int,
    max_steps: int | None,
    er: EpisodeResult,
    frames: list[np.ndarray],
    views: list[dict[str, np.ndarray]],
    on_step: Callable[[int, int | None], None] | None = None,
) -> None:
    policy.reset(seed=seed)
    limit = step_limit(env, max_steps) if on_step is not None else None
    obs, info = env.reset(seed=seed)
    first = frame_of(obs, env)
    if first is not None:
        frames.append(first)
    shortest = info.get("distance") if isinstance(info, Mapping) else None
    done = False
    while not done:
        action = policy.act(obs, info)
        if callable(getattr(policy, "views", None)):
            views.append(policy.views())
        obs, reward, terminated, truncated, info = env.step(action)
        er.length += 1
        er.ret += float(reward)
        frame = frame_of(obs, env)
        if frame is not None:
            frames.append(frame)
        done = bool(terminated or truncated) or (max_steps is not None and er.length >= max_steps)
        if on_step is not None:
            on_step(er.length, limit)
    if "success" in info:
        er.success = bool(info["success"])
    if "spl" in info and info["spl"] is not None:
        er.spl = float(info["spl"])
    elif shortest is not None and er.success is not None and float(shortest) >= 0:
        er.shortest_path = float(shortest)
        er.spl = float(er.success) * (
            shortest / max(shortest, er.length) if max(shortest, er.length) > 0 else 1.0
        )
    for key in EXTRA_INFO_KEYS:
        if key in info:
            er.extra[key] = info[key]


def step_limit(env: Any, max_steps: int | None = None) -> int | None:
    """The most steps an episode of `env` can take: the least of `max_steps`, the env's registered
    `max_episode_steps` and its own `max_steps` attribute (GridWorld, MiniWorld, Habitat); None if none is known."""
    spec = getattr(env, "spec", None)
    known = [
        max_steps,
        getattr(spec, "max_episode_steps", None),
        getattr(getattr(env, "unwrapped", env), "max_steps", None),
    ]
    known = [int(k) for k in known if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0]
    return min(known) if known else None


def with_views(frames: list[np.ndarray], views: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Real frames with the policy's views beside them (real | view 1 | ...); `frames` when there are none.

    views[t] (recorded after the action of step t) goes beside frames[t + 1]; frame 0 and steps whose policy
    returned no image for a label get a blank (grey) panel.
    """
    labels: list[str] = []
    for v in views:
        labels += [k for k in v if k not in labels]
    if not labels or not frames:
        return frames

    h, w = frames[0].shape[:2]
    blank = np.full((h, w, 3), 128, np.uint8)
    panels = [np.stack(frames)]
    for label in labels:
        column = [blank] + [_fit(v.get(label), h, w, blank) for v in views]
        panels.append(np.stack(column[: len(frames)] + [blank] * (len(frames) - len(column))))
    return list(side_by_side(panels, labels=["real", *labels]))


def _fit(image: np.ndarray | None, h: int, w: int, blank: np.ndarray) -> np.ndarray:
    if image is None:
        return blank
    image = np.asarray(image)
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((w, h), Image.NEAREST))
    return image.astype(np.uint8)


def _env_fps(env: Any) -> float:
    fps = (getattr(env, "metadata", None) or {}).get("render_fps") if env is not None else None
    return float(fps) if fps else 10.0


def _write_videos(
    out: Path, er: EpisodeResult, frames: list[np.ndarray], fps: float, mp4: bool, gif: bool
) -> None:
    stack = np.stack(frames)
    try:
        if mp4:
            er.video = write_video(out / f"episode_{er.episode:03d}.mp4", stack, fps=fps).name
        if gif:
            er.gif = write_video(out / f"episode_{er.episode:03d}.gif", stack, fps=fps).name
    except Exception as exc:  # a video failure must not lose the episode's metrics
        logger.error("writing the video of episode %d failed: %s", er.episode, exc)
