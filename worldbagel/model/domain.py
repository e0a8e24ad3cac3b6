"""A model folder's declared domain (`worldbagel.json`) and the check of a clip against it.

A small world model only knows the frames it was trained on. Its folder says which ones in `worldbagel.json`:

    {"domain": "gridworld", "resolution": [64, 64], "palette": [[235, 235, 225], ...], "description": "..."}

- `domain`: a name shown in messages;
- `resolution` (optional): the [height, width] of its training frames;
- `palette` (optional): the flat colours its frames are drawn with (synthetic renders); a clip whose pixels
  are mostly none of them (real footage) is off the domain;
- `description` (optional): one sentence on what the frames show.

A folder without the file (the BAGEL-7B-MoT release) declares no domain and is never warned about.
`check_clip` compares a clip with the declaration and logs one warning naming each mismatch and the model
to use for real footage (`model=bagel-7b`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldbagel.errors import CheckpointError

__all__ = ["DOMAIN_FILE", "ModelDomain", "check_clip", "clip_mismatches", "read_domain"]

logger = logging.getLogger(__name__)

DOMAIN_FILE = "worldbagel.json"

PALETTE_TOLERANCE = 40.0
"""Largest RGB distance of a pixel to a palette colour that still counts as that colour: compression and
resizing blur flat colours (a 64x64 gridworld clip through mp4 keeps 99 % of its pixels within 40, a 4x
bilinear upscale through mp4 87 %; smooth natural gradients 12 %, noise 6 %)."""

MIN_PALETTE_COVERAGE = 0.75
"""Fraction of a clip's pixels that must lie near the palette for the clip to be in the domain."""

COVERAGE_PIXELS = 65536
"""About how many pixels `palette_coverage` looks at (a grid over the frames)."""

ASPECT_TOLERANCE = 0.02
"""Relative difference of width/height ratios still taken as the same aspect."""

REAL_FOOTAGE_HINT = (
    "for real footage use model=bagel-7b model.path=<BAGEL-7B-MoT folder, or ByteDance-Seed/BAGEL-7B-MoT "
    "from the Hugging Face cache>"
)


@dataclass(frozen=True)
class ModelDomain:
    """The frames a model was trained on (see the module docstring)."""

    domain: str
    resolution: tuple[int, int] | None = None
    palette: np.ndarray | None = None
    """[K, 3] float32 RGB colours, or None."""
    description: str = ""


def read_domain(folder: str | Path) -> ModelDomain | None:
    """The domain declared in `folder`/worldbagel.json, or None when the folder has no such file."""
    path = Path(folder) / DOMAIN_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); fix or delete the file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("domain"), str) or not raw["domain"]:
        raise CheckpointError(
            f'{path} must be a JSON object with a "domain" name, e.g. {{"domain": "gridworld"}}'
        )
    resolution = raw.get("resolution")
    if resolution is not None:
        if not (
            isinstance(resolution, list)
            and len(resolution) == 2
            and all(isinstance(v, int) and v > 0 for v in resolution)
        ):
            raise CheckpointError(
                f'{path}: "resolution" must be [height, width] in pixels, got {resolution!r}'
            )
        resolution = (resolution[0], resolution[1])
    palette = raw.get("palette")
    if palette is not None:
        arr = np.asarray(palette, dtype=np.float32) if isinstance(palette, list) else None
        if (
            arr is None
            or arr.ndim != 2
            or arr.shape[1] != 3
            or len(arr) == 0
            or arr.min() < 0
            or arr.max() > 255
        ):
            raise CheckpointError(f'{path}: "palette" must be a list of [r, g, b] colours in 0..255')
        palette = arr
    return ModelDomain(raw["domain"], resolution, palette, str(raw.get("description", "")))


def palette_coverage(frames: np.ndarray, palette: np.ndarray) -> float:
    """Fraction of the pixels of `frames` [T, H, W, 3] within PALETTE_TOLERANCE of a palette colour (on a
    grid of at most about COVERAGE_PIXELS pixels: a fraction needs no more)."""
    step = max(1, int(np.sqrt(frames[..., 0].size / COVERAGE_PIXELS)))
    f = frames[:, ::step, ::step].reshape(-1, 3).astype(np.float32)
    p = palette.astype(np.float32)
    # min_k |f - p_k|^2 = |f|^2 + min_k (|p_k|^2 - 2 f.p_k): one small matmul, no [N, K, 3] tensor
    d2 = (f * f).sum(-1) + ((p * p).sum(-1)[None, :] - 2.0 * (f @ p.T)).min(-1)
    return float((d2 <= PALETTE_TOLERANCE**2).mean())


def clip_mismatches(domain: ModelDomain, frames: np.ndarray) -> list[str]:
    """How the clip `frames` [T, H, W, 3] differs from `domain`: one phrase per mismatch (empty: it fits)."""
    h, w = frames.shape[1:3]
    out = []
    if domain.resolution is not None and (h, w) != domain.resolution:
        dh, dw = domain.resolution
        phrase = f"its frames are {h}x{w} (height x width), the model was trained on {dh}x{dw}"
        if abs((w / h) / (dw / dh) - 1.0) > ASPECT_TOLERANCE:
            phrase += f", and their aspect is {w / h:.2f} (width / height), not {dw / dh:.2f}"
        out.append(phrase)
    if domain.palette is not None:
        coverage = palette_coverage(frames, domain.palette)
        if coverage < MIN_PALETTE_COVERAGE:
            out.append(
                f"only {coverage:.0%} of its pixels have the {domain.domain} colours "
                f"(at least {MIN_PALETTE_COVERAGE:.0%} expected): it does not look like {domain.domain} frames"
            )
    return out


def check_clip(folder: str | Path, frames: np.ndarray, model_name: str = "") -> list[str]:
    """Log one warning when the clip `frames` [T, H, W, 3] is off the domain that `folder` declares; returns
    the mismatches (empty when the clip fits or the folder declares no domain)."""
    domain = read_domain(folder)
    if domain is None:
        return []
    mismatches = clip_mismatches(domain, np.asarray(frames))
    if mismatches:
        about = f" ({domain.description})" if domain.description else ""
        logger.warning(
            "the clip does not match the domain of model %s, %s%s: %s. Its continuation will show %s frames, "
            "not the clip's world; %s",
            model_name or folder,
            domain.domain,
            about,
            "; ".join(mismatches),
            domain.domain,
            REAL_FOOTAGE_HINT,
        )
    return mismatches
