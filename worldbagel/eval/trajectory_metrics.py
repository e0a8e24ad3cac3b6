"""Trajectory metrics: absolute trajectory error (ATE) and relative pose error (RPE), pure numpy.

Shape legend:
    N      poses along a trajectory
    d      spatial dimension, 2 (planar) or 3
    P      a pose as a homogeneous matrix (N, d+1, d+1): rotation R = P[:d, :d], translation t = P[:d, d]

ATE (Sturm et al. 2012): RMSE over time of the position error, after aligning the predicted
positions to the true ones with the least-squares rigid (or similarity) transform of Umeyama (1991).

RPE over a step delta: for every i, the motion error E_i = (Q_i^-1 Q_{i+delta})^-1 (P_i^-1 P_{i+delta})
between the true relative motion (Q) and the predicted one (P). Its translation part gives the
translation error (length units) and its rotation angle the rotation error (radians). Drift of a fixed
size per step therefore shows as a constant RPE, whatever the absolute error it accumulates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from worldbagel.errors import bad_argument

Alignment = Literal["none", "rigid", "sim"]


def poses_from_xy_yaw(xy_yaw) -> np.ndarray:
    """(N, 3) planar poses (x, y, yaw in radians) -> (N, 3, 3) homogeneous SE(2) matrices."""
    a = np.asarray(xy_yaw, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise bad_argument("xy_yaw.shape", a.shape, "pass (N, 3) rows of (x, y, yaw)")
    c, s = np.cos(a[:, 2]), np.sin(a[:, 2])
    out = np.zeros((a.shape[0], 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, :2, 2] = a[:, :2]
    out[:, 2, 2] = 1.0
    return out


def umeyama_alignment(source, target, with_scale: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares (R, t, s) with target ~ s * R @ source + t (Umeyama 1991), for (N, d) points.

    R is a proper rotation (det +1). Needs N >= 2 points (a single point fixes only the translation).
    """
    src, dst = _points(source, "source"), _points(target, "target")
    if src.shape != dst.shape:
        raise bad_argument("source.shape", src.shape, f"must equal target.shape {dst.shape}")
    n, d = src.shape
    if n < 2:
        raise bad_argument("source.shape", src.shape, "alignment needs at least 2 points")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / n  # (d, d)
    u, sing, vt = np.linalg.svd(cov)
    fix = np.eye(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[-1, -1] = -1.0
    rot = u @ fix @ vt
    var_s = (xs**2).sum() / n
    scale = float((sing * np.diag(fix)).sum() / var_s) if with_scale and var_s > 0 else 1.0
    trans = mu_d - scale * rot @ mu_s
    return rot, trans, scale


def _points(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 3 and a.shape[1] == a.shape[2] and a.shape[1] in (3, 4):
        a = a[:, :-1, -1]  # homogeneous poses -> positions
    if a.ndim != 2 or a.shape[1] not in (2, 3):
        raise bad_argument(f"{name}.shape", a.shape, "pass (N, 2|3) positions or (N, d+1, d+1) poses")
    if not np.all(np.isfinite(a)):
        raise bad_argument(name, "non-finite values", "positions must be finite")
    return a


def ate_errors(pred, true, align: Alignment = "rigid") -> np.ndarray:
    """(N,) position errors after alignment of the predicted trajectory onto the true one.

    Args:
        pred, true: (N, d) positions or (N, d+1, d+1) poses, same N and d.
        align: "rigid" (rotation + translation), "sim" (also a global scale, for monocular/unscaled
            trajectories) or "none" (raw coordinates, e.g. when both start at the same pose).
    """
    p, t = _points(pred, "pred"), _points(true, "true")
    if p.shape != t.shape:
        raise bad_argument("pred.shape", p.shape, f"must equal true.shape {t.shape}")
    if align not in ("none", "rigid", "sim"):
        raise bad_argument("align", align, "use 'rigid', 'sim' or 'none'")
    if align != "none":
        rot, trans, scale = umeyama_alignment(p, t, with_scale=align == "sim")
        p = scale * p @ rot.T + trans
    return np.linalg.norm(p - t, axis=1)


def ate(pred, true, align: Alignment = "rigid") -> float:
    """Absolute trajectory error: RMSE of aligned position errors (see `ate_errors`)."""
    e = ate_errors(pred, true, align)
    return float(np.sqrt((e**2).mean()))


def _poses(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[1] not in (3, 4):
        raise bad_argument(
            f"{name}.shape", a.shape, "pass (N, 3, 3) SE(2) or (N, 4, 4) SE(3) poses (see poses_from_xy_yaw)"
        )
    return a


def _rotation_angle(rot: np.ndarray) -> np.ndarray:
    """Rotation angle in [0, pi] of (..., d, d) rotation matrices."""
    if rot.shape[-1] == 2:
        return np.abs(np.arctan2(rot[..., 1, 0], rot[..., 0, 0]))
    cos = (np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


def rpe(pred, true, delta: int = 1) -> dict[str, float]:
    """Relative pose error over a step `delta`.

    Args:
        pred, true: (N, d+1, d+1) homogeneous poses (use `poses_from_xy_yaw` for (x, y, yaw) rows).
        delta: step between the two poses of each relative motion (1 <= delta < N).

    Returns:
        {"trans_rmse", "trans_mean" (length units), "rot_rmse", "rot_mean" (radians), "n" (pairs), "delta"}.
    """
    p, t = _poses(pred, "pred"), _poses(true, "true")
    if p.shape != t.shape:
        raise bad_argument("pred.shape", p.shape, f"must equal true.shape {t.shape}")
    if not isinstance(delta, (int, np.integer)) or not 1 <= delta < p.shape[0]:
        raise bad_argument("delta", delta, f"use an int step with 1 <= delta < N = {p.shape[0]}")
    inv = np.linalg.inv
    rel_p = inv(p[:-delta]) @ p[delta:]
    rel_t = inv(t[:-delta]) @ t[delta:]
    err = inv(rel_t) @ rel_p
    d = p.shape[1] - 1
    trans = np.linalg.norm(err[:, :d, d], axis=1)
    rot = _rotation_angle(err[:, :d, :d])
    return {
        "trans_rmse": float(np.sqrt((trans**2).mean())),
        "trans_mean": float(trans.mean()),
        "rot_rmse": float(np.sqrt((rot**2).mean())),
        "rot_mean": float(rot.mean()),
        "n": int(trans.size),
        "delta": int(delta),
    }
