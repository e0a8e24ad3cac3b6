"""Rectified-flow sampling as pure functions (spec 5.4, 5.5).

Convention: x_t = (1 - t) x0 + t eps, the model predicts the velocity v = eps - x0 ("from data to noise"), and
sampling integrates from t = 1 (noise) to t = 0 (data) with Euler steps x <- x - v dt.

Shape legend: T tokens of one image, Z latent token features (64 for the release).
"""

from __future__ import annotations

from typing import Literal

import torch

from worldbagel.errors import bad_argument
from worldbagel.inference.value_checks import require_finite_number, require_int

RenormType = Literal["global", "channel", "text_channel"]
RENORM_TYPES: tuple[str, ...] = ("global", "channel", "text_channel")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t); s = 1 is the identity, s > 1 spends more steps at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def flow_schedule(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The shifted time grid t'_0 = 1 > ... > t'_{n-1} = 0 (float64 -> float32), `num_steps` points.

    Sampling evaluates the model at the first n - 1 points (n - 1 model calls for n points).
    """
    require_int("num_steps", num_steps, 2, "need an int >= 2 grid points (1 model evaluation)")
    fix = "the timestep shift must be a finite number > 0 (release uses 3.0)"
    if require_finite_number("shift", shift, fix) <= 0:
        raise bad_argument("shift", shift, fix)
    t = torch.linspace(1, 0, num_steps)
    return shift_time(t, shift)


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: float | torch.Tensor) -> torch.Tensor:
    """One Euler step towards data: x <- x - v dt (dt = t_i - t_{i+1} > 0)."""
    return x - v * dt


def cfg_active(t: float, interval: tuple[float, float]) -> bool:
    """CFG applies at step time t iff interval[0] < t <= interval[1] (official rule)."""
    return interval[0] < t <= interval[1]


def cfg_combine(
    v_cond: torch.Tensor,
    v_text_uncond: torch.Tensor | None,
    v_img_uncond: torch.Tensor | None,
    text_scale: float,
    img_scale: float,
    renorm_type: RenormType = "global",
    renorm_min: float = 0.0,
) -> torch.Tensor:
    """Combine the three CFG branches of one image exactly as the official `_forward_flow`.

    v_* [T, Z]. If text_scale <= 1 the conditional velocity is returned as is (image guidance is then
    skipped too, an official quirk). Renorm rescales the guided velocity so its norm never exceeds the
    conditional one (scale clamped to [renorm_min, 1]); `global` uses the Frobenius norm over the image,
    `channel` / `text_channel` per-token norms over the Z channels (`text_channel` renorms after the text
    step, before image guidance, and not after it).
    """
    if renorm_type not in RENORM_TYPES:
        raise bad_argument("cfg_renorm_type", renorm_type, f"use one of {RENORM_TYPES}")
    text_scale = require_finite_number(
        "cfg_text_scale", text_scale, "use a finite guidance scale (<= 1: none)"
    )
    img_scale = require_finite_number("cfg_img_scale", img_scale, "use a finite guidance scale (<= 1: none)")
    require_finite_number("cfg_renorm_min", renorm_min, "use a finite lower clamp (1.0 disables renorm)")
    if text_scale <= 1.0:
        return v_cond
    if v_text_uncond is None:
        raise ValueError("text_scale > 1 needs the text-dropped branch velocity (v_text_uncond)")
    use_img = img_scale > 1.0
    if use_img and v_img_uncond is None:
        raise ValueError("img_scale > 1 needs the image-dropped branch velocity (v_img_uncond)")
    u = v_text_uncond + text_scale * (v_cond - v_text_uncond)
    if renorm_type == "text_channel":
        norm_c = v_cond.norm(dim=-1, keepdim=True)
        norm_u = u.norm(dim=-1, keepdim=True)
        u = u * (norm_c / (norm_u + 1e-8)).clamp(min=renorm_min, max=1.0)
        return v_img_uncond + img_scale * (u - v_img_uncond) if use_img else u
    if use_img:
        u = v_img_uncond + img_scale * (u - v_img_uncond)
    if renorm_type == "global":
        norm_c, norm_u = v_cond.norm(), u.norm()
    else:  # channel
        norm_c, norm_u = v_cond.norm(dim=-1, keepdim=True), u.norm(dim=-1, keepdim=True)
    return u * (norm_c / (norm_u + 1e-8)).clamp(min=renorm_min, max=1.0)


def sample_flow(
    velocity,
    x: torch.Tensor,
    num_steps: int,
    shift: float = 1.0,
) -> torch.Tensor:
    """Integrate dx/dt = v from t=1 to 0 with `velocity(x, t_i, i) -> v`; returns x at t = 0."""
    ts = flow_schedule(num_steps, shift)
    for i in range(num_steps - 1):
        dt = ts[i] - ts[i + 1]
        x = euler_step(x, velocity(x, float(ts[i]), i), dt)
    return x
