"""Navigation episode metrics: success rate, SPL, soft-SPL and episode length.

Definitions (per episode i, then averaged over episodes):
    success_i       1 if the agent ended at the goal (the env's own success test), else 0
    SPL_i           success_i * l_i / max(p_i, l_i)                      (Anderson et al. 2018)
    soft-SPL_i      max(0, 1 - d_i / d0_i) * l_i / max(p_i, l_i)          (Habitat's SoftSPL)
where l_i is the shortest-path length from start to goal, p_i the length of the path the agent took,
d_i its final distance to the goal and d0_i the initial distance to the goal (Habitat uses l_i = d0_i,
the geodesic start-goal distance; `initial_distance` defaults to `shortest`). Lengths may be metres or
grid moves, as long as each episode uses one unit.

Degenerate episodes: when l_i = p_i = 0 (start on the goal, no move) the path ratio is 1; when
d0_i = 0 the soft success is 1 if d_i = 0, else 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from worldbagel.errors import bad_argument


def _vector(values, name: str, n: int | None = None, nonneg: bool = True) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and arr.size != n:
        raise bad_argument(f"len({name})", arr.size, f"give one value per episode ({n} episodes)")
    if not np.all(np.isfinite(arr)):
        raise bad_argument(name, values, "values must be finite numbers")
    if nonneg and np.any(arr < 0):
        raise bad_argument(name, values, "lengths and distances must be >= 0")
    return arr


def _path_ratio(shortest: np.ndarray, taken: np.ndarray) -> np.ndarray:
    denom = np.maximum(shortest, taken)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(denom > 0, shortest / np.where(denom > 0, denom, 1.0), 1.0)
    return ratio


def success_rate(successes: Sequence[bool] | np.ndarray) -> float:
    """Fraction of successful episodes."""
    s = _vector(np.asarray(successes, dtype=bool), "successes")
    if s.size == 0:
        raise bad_argument("successes", successes, "pass at least one episode")
    return float(s.mean())


def spl_per_episode(successes, shortest, taken) -> np.ndarray:
    """SPL of each episode: success * shortest / max(taken, shortest)."""
    s = _vector(np.asarray(successes, dtype=bool), "successes")
    l = _vector(shortest, "shortest", s.size)
    p = _vector(taken, "taken", s.size)
    return s * _path_ratio(l, p)


def spl(successes, shortest, taken) -> float:
    """Success weighted by (normalised inverse) Path Length, averaged over episodes."""
    per = spl_per_episode(successes, shortest, taken)
    if per.size == 0:
        raise bad_argument("successes", successes, "pass at least one episode")
    return float(per.mean())


def soft_spl_per_episode(final_distance, shortest, taken, initial_distance=None) -> np.ndarray:
    """Soft-SPL of each episode: max(0, 1 - d / d0) * shortest / max(taken, shortest)."""
    d = _vector(final_distance, "final_distance")
    l = _vector(shortest, "shortest", d.size)
    p = _vector(taken, "taken", d.size)
    d0 = l if initial_distance is None else _vector(initial_distance, "initial_distance", d.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        soft = np.where(d0 > 0, 1.0 - d / np.where(d0 > 0, d0, 1.0), (d == 0).astype(np.float64))
    return np.clip(soft, 0.0, 1.0) * _path_ratio(l, p)


def soft_spl(final_distance, shortest, taken, initial_distance=None) -> float:
    """Soft-SPL averaged over episodes (progress toward the goal instead of binary success)."""
    per = soft_spl_per_episode(final_distance, shortest, taken, initial_distance)
    if per.size == 0:
        raise bad_argument("final_distance", final_distance, "pass at least one episode")
    return float(per.mean())


EPISODE_KEYS = ("success", "shortest", "taken", "final_distance", "steps")


def navigation_summary(episodes: Sequence[Mapping[str, float]]) -> dict[str, float | int]:
    """All navigation metrics over a list of episode records.

    Each record needs `success` (bool), `shortest` (shortest-path length), `taken` (length of the path
    the agent took), `final_distance` (distance to goal at the end) and `steps` (actions taken); an
    optional `initial_distance` (default: `shortest`) is used by soft-SPL.

    Returns:
        {"n_episodes", "success_rate", "spl", "soft_spl", "episode_length_mean", "episode_length_std"}
        (std over episodes, ddof=0).
    """
    if len(episodes) == 0:
        raise bad_argument("episodes", episodes, "pass at least one episode record")
    for i, ep in enumerate(episodes):
        missing = [k for k in EPISODE_KEYS if k not in ep]
        if missing:
            raise bad_argument(f"episodes[{i}]", dict(ep), f"each record needs the keys {EPISODE_KEYS}")

    def col(key: str) -> list:
        return [ep[key] for ep in episodes]

    initial = [ep.get("initial_distance", ep["shortest"]) for ep in episodes]
    steps = _vector(col("steps"), "steps")
    return {
        "n_episodes": len(episodes),
        "success_rate": success_rate(col("success")),
        "spl": spl(col("success"), col("shortest"), col("taken")),
        "soft_spl": soft_spl(col("final_distance"), col("shortest"), col("taken"), initial),
        "episode_length_mean": float(steps.mean()),
        "episode_length_std": float(steps.std()),
    }
