"""Rectified-flow sampling: its knobs (`SamplerConfig`) and pure functions (spec 5.4, 5.5).

Convention: x_t = (1 - t) x0 + t eps, the model predicts the velocity v = eps - x0 ("from data to noise"), and
sampling integrates from t = 1 (noise) to t = 0 (data) with Euler steps x <- x - v dt (`euler_step`, the one
integrator: `sample_flow` and `generate_images` both step with it).

`SamplerConfig` is the one sampling config: the library (`generate_images`, `WorldModelConfig.sampler`), the
CLI (`sampler=<preset>`, `sampler.<field>=...`) and the presets (configs/sampler/*.yaml) all use it.

Shape legend: T tokens of one image, Z latent token features (64 for the release).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from worldbagel.errors import bad_argument
from worldbagel.inference.value_checks import require_finite_number, require_int

RenormType = Literal["global", "channel", "text_channel"]
RENORM_TYPES: tuple[str, ...] = ("global", "channel", "text_channel")
"""The allowed `cfg_renorm_type` values (`RenormType` as a tuple, for the checks)."""


@dataclass
class SamplerConfig:
    """Rectified-flow sampling knobs (release defaults for editing / next-frame prediction).

    Also the schema of the `sampler` config group (configs/sampler/*.yaml). OmegaConf structured configs
    refuse `Literal` fields, so `cfg_renorm_type` is a `str` whose allowed values (`RENORM_TYPES`) are
    checked on construction, like every other knob (`check`).
    """

    num_steps: int = 50
    """Grid points of the flow schedule (num_steps - 1 model evaluations)."""
    shift: float = 3.0
    """Timestep shift s of t' = s t / (1 + (s - 1) t) (release: 3.0)."""
    cfg_text_scale: float = 4.0
    """Text guidance scale (<= 1 disables CFG entirely, image guidance included)."""
    cfg_img_scale: float = 2.0
    """Image guidance scale (<= 1 disables it)."""
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    """CFG is applied at times t with interval[0] < t <= interval[1]."""
    cfg_renorm_type: str = "text_channel"
    """How the guided velocity is renormalised: one of `RENORM_TYPES`, i.e. global (Frobenius norm over the
    image), channel (per-token norms), text_channel (per-token, after text guidance only); see `cfg_combine`."""
    cfg_renorm_min: float = 0.0
    """Lower clamp of the renorm scale (1.0 disables renorm)."""
    batch_cfg: bool = True
    """Run all CFG branches of all requests in one packed forward per step (False: one forward per branch)."""

    def __post_init__(self) -> None:
        self.check()
        self.cfg_interval = (float(self.cfg_interval[0]), float(self.cfg_interval[1]))  # yaml gives a list

    def check(self) -> None:
        """Raise ConfigError naming the first invalid knob (wrong type, NaN/inf or out of range)."""
        require_int("num_steps", self.num_steps, 2, "use an int >= 2 (one model evaluation)")
        if require_finite_number("shift", self.shift, "use a finite shift > 0 (release 3.0)") <= 0:
            raise bad_argument("shift", self.shift, "must be > 0 (release uses 3.0)")
        for name in ("cfg_text_scale", "cfg_img_scale", "cfg_renorm_min"):
            require_finite_number(name, getattr(self, name), "use a finite number (release: 4.0 / 2.0 / 0.0)")
        if self.cfg_renorm_type not in RENORM_TYPES:
            raise bad_argument("cfg_renorm_type", self.cfg_renorm_type, f"use one of {RENORM_TYPES}")
        fix = "use [lo, hi] with 0 <= lo <= hi <= 1"
        interval = self.cfg_interval
        if not isinstance(interval, Sequence) or isinstance(interval, str) or len(interval) != 2:
            raise bad_argument("cfg_interval", self.cfg_interval, fix)
        lo, hi = (require_finite_number("cfg_interval", t, fix) for t in self.cfg_interval)
        if not 0 <= lo <= hi <= 1:
            raise bad_argument("cfg_interval", self.cfg_interval, fix)


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
    """One Euler step towards data: x <- x - v dt (dt = t_i - t_{i+1} > 0); every sampler steps with it."""
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
