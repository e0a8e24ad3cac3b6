"""Finiteness checks at the inference API's boundary: NaN or inf in an argument raises one error naming it.

A NaN that reaches the model spreads through every later token: a NaN sampler setting or initial latent turns
the whole generated image black, a NaN frame silently becomes a black frame (8-bit conversion maps NaN to 0).
These checks run where such values enter (`SamplerConfig.check`, the sampler functions, `Context`
appends, `WorldModel` entry points), so the caller gets `bad_argument(name, value, fix)` instead.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import torch

from worldbagel.errors import bad_argument


def require_finite_number(name: str, value: object, fix: str = "use a finite number") -> float:
    """`value` as a float; raises ConfigError naming `name` when it is not a real, finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad_argument(name, value, fix)
    if not math.isfinite(float(value)):
        raise bad_argument(name, value, fix)
    return float(value)


def require_int(name: str, value: object, minimum: int, fix: str) -> int:
    """`value` as an int; raises ConfigError naming `name` unless it is an integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise bad_argument(name, value, fix)
    return int(value)


def require_finite(name: str, value: torch.Tensor | np.ndarray) -> None:
    """Raise ConfigError naming `name` (and how many entries are bad) when a floating tensor / array holds
    NaN or inf; integer data always passes."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() == 0:
            return
        finite = torch.isfinite(value.detach())
        if bool(finite.all()):
            return
        bad, total = int((~finite).sum()), value.numel()
    else:
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
            return
        finite = np.isfinite(arr)
        if bool(finite.all()):
            return
        bad, total = int((~finite).sum()), arr.size
    raise bad_argument(
        name,
        f"<{type(value).__name__} {tuple(value.shape)} with {bad} NaN/inf of {total} values>",
        "every value must be finite (NaN or inf would spread through the whole output)",
    )


def require_finite_image(name: str, image: object) -> None:
    """`require_finite` for an image given as an array or tensor (PIL images hold 8-bit values: always pass)."""
    if isinstance(image, (torch.Tensor, np.ndarray)):
        require_finite(name, image)
