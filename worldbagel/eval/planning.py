"""Planning evaluation: closed-loop episodes in an env, and open-loop planning on trajectory data.

Shape legend:
    N   actions of a planned / true segment;  poses are (N + 1, 3) rows (x, y, yaw) from (0, 0, 0)
    G   goal images [G, H, W, 3]

Closed loop (`evaluate_navigation`): a registered policy (default the world-model planner) runs episodes
through `worldbagel.rollout.run_rollouts`; a world-model policy plans with the evaluated model and its
sampling settings. Success, SPL (env-reported, or from the reset info's shortest distance), soft-SPL (env-reported,
or from the final distance to the goal) and the episode length are summarised.

Open loop (`evaluate_trajectory_planning`, continuous (dx, dy, dyaw) actions as in NWM): from the true
history ending at frame t0, the planner (CEM over a Box fitted to the data's action range) searches an
action sequence of `horizon` steps whose last imagined frame is closest to the true frame t0 + horizon.
Planned and true actions are integrated into poses (`integrate_actions`, the inverse of
`worldbagel.data.nwm.poses_to_actions`), in metres when the data knows its waypoint spacing, and compared
with ATE and RPE. A zero-motion plan (standing still) is scored beside it as the baseline.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from worldbagel.actions import ContinuousActionCodec
from worldbagel.data.trajectory import Episode
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.policies import POLICIES, make_policy
from worldbagel.policies.planner import WorldModelPlanner
from worldbagel.rollout import build_env, run_rollouts
from worldbagel.world_model import WorldModel

from .heldout import episode_instruction, evenly_spaced, has_continuous_actions
from .nav_metrics import soft_spl_per_episode
from .trajectory_metrics import ate, poses_from_xy_yaw, rpe

__all__ = [
    "GoalDistanceInfo",
    "check_baselines",
    "evaluate_navigation",
    "evaluate_trajectory_planning",
    "integrate_actions",
    "navigation_baselines",
    "navigation_section",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ closed loop
class GoalDistanceInfo(gym.Wrapper):
    """Adds `distance_to_goal` to infos of envs that report a shortest `distance` (GridWorld), so the rollout
    records the final distance that soft-SPL needs."""

    def _add(self, info: dict) -> dict:
        d = info.get("distance")
        if "distance_to_goal" not in info and isinstance(d, (int, float, np.integer, np.floating)) and d >= 0:
            info = {**info, "distance_to_goal": float(d)}
        return info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._add(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._add(info)


def _build_env(env_id: str, env_kwargs: Mapping[str, Any] | None) -> gym.Env:
    return GoalDistanceInfo(build_env(env_id, env_kwargs))


def _factory_accepts_world_model(name: str) -> bool:
    module, _, attr = POLICIES[name].partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return "world_model" in inspect.signature(obj).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def policy_factory(
    name: str, policy_kwargs: Mapping[str, Any] | None, seed: int, world_model: WorldModel | None
) -> Callable[[Any], Any]:
    """`env -> Policy` for a registered policy. A world-model policy (its factory takes `world_model`) plans with
    the evaluated model: `world_model` (a fresh history on its pipeline and sampling settings, codec from the
    env) is passed and wins over the policy's own `model` / `sampler` / `world` kwargs."""
    if name not in POLICIES:
        missing = (
            ""
            if name not in ("planner", "reasoning")
            else (
                f" (the {name} policy registers itself when worldbagel.policies.{name} is installed; it is not here)"
            )
        )
        raise bad_argument(
            "policy.name", name, f"use a registered policy, one of {sorted(POLICIES)}{missing}"
        )
    kwargs = dict(policy_kwargs or {})
    if world_model is not None and "world_model" not in kwargs and _factory_accepts_world_model(name):
        kwargs["world_model"] = WorldModel(world_model.pipe, None, world_model.config)
        for key in ("model", "sampler", "world"):
            kwargs.pop(key, None)
    return partial(make_policy, name, seed=seed, **kwargs)


def navigation_section(result: Any, policy: str = "", env_id: str = "") -> dict[str, Any]:
    """metrics.json "navigation" section from a `RolloutResult` (means over the completed episodes)."""
    done = [e for e in result.episodes if e.status == "ok"]
    out: dict[str, Any] = {
        "policy": policy,
        "env_id": env_id,
        "n_episodes": len(done),
        "failed": len(result.episodes) - len(done),
    }

    def mean(values: Sequence[Any]) -> float | None:
        vals = [float(v) for v in values if v is not None]
        return float(np.mean(vals)) if vals else None

    soft = []
    for e in done:
        if e.extra.get("soft_spl") is not None:
            soft.append(float(e.extra["soft_spl"]))
        elif e.extra.get("distance_to_goal") is not None and e.shortest_path is not None:
            soft.append(
                float(soft_spl_per_episode([e.extra["distance_to_goal"]], [e.shortest_path], [e.length])[0])
            )
    lengths = np.asarray([e.length for e in done], dtype=np.float64)
    out.update(
        success_rate=mean([e.success for e in done]),
        spl=mean([e.spl for e in done]),
        soft_spl=mean(soft),
        episode_length_mean=float(lengths.mean()) if lengths.size else None,
        episode_length_std=float(lengths.std()) if lengths.size else None,
    )
    return out


def evaluate_navigation(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    policy: str,
    policy_kwargs: Mapping[str, Any] | None = None,
    world_model: WorldModel | None = None,
    episodes: int = 4,
    seed: int = 1000,
    max_steps: int | None = None,
    out_dir: str | os.PathLike | None = None,
    video: bool = False,
    fps: float | None = None,
    progress: Callable[[int, int, Any], None] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Run closed-loop episodes; returns (the navigation section, the RolloutResult). With `out_dir` the
    rollout's own metrics.json (per-episode records) and optional videos go there."""
    factory = policy_factory(policy, policy_kwargs, seed, world_model)
    result = run_rollouts(
        partial(_build_env, env_id, dict(env_kwargs or {})),
        factory,
        episodes=episodes,
        seed=seed,
        out_dir=out_dir,
        max_steps=max_steps,
        video=video,
        gif=False,
        fps=fps,
        metadata={"env_id": env_id, "policy": policy},
        progress=progress,
    )
    failed = [e for e in result.episodes if e.status != "ok"]
    if len(failed) == len(result.episodes):
        raise WorldBagelError(f"every navigation episode failed; the first error: {failed[0].error}")
    return navigation_section(result, policy, env_id), result


def check_baselines(names: Sequence[str]) -> None:
    """Refuse baseline names that are not registered policies (before any episode runs)."""
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise bad_argument(
            "navigation.baselines", list(names), f"{unknown} are not policies; use any of {sorted(POLICIES)}"
        )


def navigation_baselines(
    names: Sequence[str],
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    seed: int,
    max_steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """{name: navigation section} of model-free baseline policies (random, oracle, ...) on the same episode
    seeds as the evaluated policy, so their success and SPL sit beside it. A baseline that cannot run in this
    env (e.g. no oracle for it) becomes {"skipped": reason} instead of failing the evaluation."""
    check_baselines(names)
    out: dict[str, Any] = {}
    for i, name in enumerate(names):

        def step(done: int, total: int, ep: Any, i: int = i) -> None:
            if progress is not None:
                progress(i * episodes + done, len(names) * episodes)

        try:
            out[name], _ = evaluate_navigation(
                env_id,
                env_kwargs,
                name,
                None,
                episodes=episodes,
                seed=seed,
                max_steps=max_steps,
                progress=step,
            )
        except WorldBagelError as exc:
            logger.warning("navigation baseline %s skipped: %s", name, exc)
            out[name] = {"skipped": str(exc)}
    return out


# ----------------------------------------------------------------------------------------- open loop
def integrate_actions(actions, scale: float = 1.0, start=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(N, 3) robot-frame actions (dx forward, dy left, dyaw radians) -> (N + 1, 3) poses (x, y, yaw).

    Each translation is rotated by the heading before the step and multiplied by `scale` (metres per unit,
    e.g. metric_waypoint_spacing * frame_skip for NWM data)."""
    a = np.asarray(actions, dtype=np.float64).reshape(-1, 3)
    poses = np.zeros((a.shape[0] + 1, 3))
    poses[0] = start
    for i, (dx, dy, dyaw) in enumerate(a):
        x, y, yaw = poses[i]
        c, s = np.cos(yaw), np.sin(yaw)
        poses[i + 1] = (x + scale * (c * dx - s * dy), y + scale * (s * dx + c * dy), yaw + dyaw)
    return poses


def _scale(ep: Episode) -> tuple[float, str]:
    meta = ep.metadata or {}
    if "metric_waypoint_spacing" in meta:
        return float(meta["metric_waypoint_spacing"]) * int(meta.get("frame_skip", 1)), "m"
    return 1.0, "steps"


def _action_box(episodes: Sequence[Episode]) -> gym.spaces.Box:
    """The data's action range plus 10 % margin (at least +-0.05), within the codec's default bounds."""
    acts = np.concatenate([np.asarray(ep.actions, dtype=np.float64).reshape(-1, 3) for ep in episodes])
    lo, hi = acts.min(0), acts.max(0)
    margin = np.maximum(0.1 * (hi - lo), 0.05)
    limit = np.array([10.0, 10.0, np.pi])
    return gym.spaces.Box(
        np.maximum(lo - margin, -limit).astype(np.float32), np.minimum(hi + margin, limit).astype(np.float32)
    )


def _errors(pred_poses: np.ndarray, true_poses: np.ndarray, align: str, delta: int) -> dict[str, float]:
    r = rpe(poses_from_xy_yaw(pred_poses), poses_from_xy_yaw(true_poses), delta)
    return {
        "ate": ate(pred_poses[:, :2], true_poses[:, :2], align),
        "rpe_trans": r["trans_rmse"],
        "rpe_rot": r["rot_rmse"],
        "final_error": float(np.linalg.norm(pred_poses[-1, :2] - true_poses[-1, :2])),
    }


def evaluate_trajectory_planning(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    horizon: int = 8,
    trajectories: int = 4,
    context: int = 4,
    population: int = 16,
    elites: int = 4,
    iterations: int = 2,
    energy: str = "latent",
    align: str = "none",
    rpe_delta: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Plan toward goal frames on continuous-action trajectories and score the integrated plans (module
    docstring); returns the metrics.json "trajectory" section."""
    if not (isinstance(horizon, int) and horizon >= 1):
        raise bad_argument("trajectory.horizon", horizon, "use an int >= 1 (steps from start to goal frame)")
    if not (isinstance(rpe_delta, int) and 1 <= rpe_delta <= horizon):
        raise bad_argument("trajectory.rpe_delta", rpe_delta, f"use an int in [1, horizon={horizon}]")
    usable = [ep for ep in episodes if has_continuous_actions(ep) and ep.length >= horizon]
    if not usable:
        raise bad_argument(
            "trajectory.horizon",
            horizon,
            "no trajectory has continuous (dx, dy, dyaw) actions and that many steps",
        )
    chosen = [usable[i] for i in evenly_spaced(len(usable), trajectories)]
    space = _action_box(usable)
    codec = ContinuousActionCodec(clip=True)
    wm = WorldModel(world_model.pipe, codec, world_model.config)
    planner = WorldModelPlanner(
        wm,
        action_space=space,
        horizon=horizon,
        method="cem",
        energy=energy,
        aggregate="final",
        population=population,
        elites=elites,
        iterations=iterations,
        seed=seed,
    )
    per: list[dict[str, Any]] = []
    units = set()
    for ep in chosen:
        t0 = min(max(context - 1, 0), ep.length - horizon)
        start = max(0, t0 - context + 1)
        hist = WorldModel(wm.pipe, codec, wm.config).reset(
            ep.load_frame(start), instruction=episode_instruction(ep)
        )
        for t in range(start + 1, t0 + 1):
            hist.act(ep.action_texts[t - 1] or codec.encode(ep.actions[t - 1])).observe(ep.load_frame(t))
        goal = np.asarray(ep.load_frame(t0 + horizon))
        goal = np.asarray(wm.pipe.vae_transform.resize(goal))[None]
        plan = planner.plan([hist], [goal], [{}])[0]
        scale, unit = _scale(ep)
        units.add(unit)
        truth = integrate_actions(np.asarray(ep.actions[t0 : t0 + horizon], dtype=np.float64), scale)
        planned = integrate_actions(np.stack([np.asarray(a, dtype=np.float64) for a in plan.actions]), scale)
        still = integrate_actions(np.zeros((horizon, 3)), scale)
        per.append(
            {
                "episode": ep.id,
                "t0": t0,
                "planner": _errors(planned, truth, align, rpe_delta),
                "zero_motion": _errors(still, truth, align, rpe_delta),
                "path_length": float(np.linalg.norm(np.diff(truth[:, :2], axis=0), axis=1).sum()),
            }
        )
        logger.info("planned %s from t0=%d: ATE %.3f", ep.id, t0, per[-1]["planner"]["ate"])

    def avg(who: str) -> dict[str, float]:
        return {k: float(np.mean([p[who][k] for p in per])) for k in per[0][who]}

    return {
        "n_trajectories": len(per),
        "horizon": horizon,
        "units": units.pop() if len(units) == 1 else "mixed",
        "align": align,
        "rpe_delta": rpe_delta,
        "planner": {"method": "cem", "population": population, "iterations": iterations, "energy": energy},
        "ate": avg("planner")["ate"],
        "rpe": {"trans_rmse": avg("planner")["rpe_trans"], "rot_rmse": avg("planner")["rpe_rot"]},
        "final_error": avg("planner")["final_error"],
        "path_length_mean": float(np.mean([p["path_length"] for p in per])),
        "zero_motion": avg("zero_motion"),
        "per_trajectory": per,
    }
