"""Horizon bookkeeping for the NWM frame-prediction protocol, and the copy-last-frame baseline.

Shape legend:
    ...    leading batch dims of a batch of trajectories (none for one trajectory)
    T      time steps of a true trajectory;  frames are (..., T, H, W, C)
    k      a prediction horizon in steps (default {1, 2, 4, 8, 16})

Protocol: from a context ending at true frame index t0 (the last observed frame), a model predicts the
frame at t0 + k, in one of several modes:
    single_step       each horizon predicted from the true history (no feedback of predictions)
    open_loop         an autoregressive rollout following the true actions, predictions fed back
    copy_last_frame   the baseline: the prediction for every k is the last observed frame t0
`HorizonScores` collects per-sample metric values under (mode, k, metric) and summarises them as
mean / std (ddof=0) / n per horizon, in the JSON-ready layout documented in docs/metrics.md:

    {"horizons": [1, 2, 4, 8, 16],
     "modes": {mode: {metric: {"mean": [...], "std": [...], "n": [...]}}}}

where each list is aligned with "horizons" and holds None where a horizon has no samples.

PSNR is the exception, so that frames predicted exactly cannot game it: its cell holds the dataset-level
PSNR (`psnr_of_mean_mse` of the per-frame values converted back to MSE) under "mean", no std, and
"aggregate": "psnr_of_mean_mse"; a `psnr_frame_mean` cell beside it holds the mean ± std of the per-frame
PSNRs capped at 50 dB.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from worldbagel.errors import bad_argument
from worldbagel.frame_metrics import (
    FRAME_METRICS,
    PSNR_AGGREGATE,
    PSNR_FRAME_CAP_DB,
    PSNR_FRAME_MEAN,
    frame_metrics,
    mse_from_psnr,
    psnr_of_mean_mse,
)
from worldbagel.perceptual_metrics import PerceptualMetric

HORIZONS = (1, 2, 4, 8, 16)
SINGLE_STEP, OPEN_LOOP, COPY_LAST_FRAME = "single_step", "open_loop", "copy_last_frame"
MODES = (SINGLE_STEP, OPEN_LOOP, COPY_LAST_FRAME)


def _check_horizons(horizons: Iterable[int]) -> tuple[int, ...]:
    hs = tuple(horizons)
    if not hs or any(not isinstance(k, (int, np.integer)) or k < 1 for k in hs) or len(set(hs)) != len(hs):
        raise bad_argument("horizons", hs, "use distinct positive step counts, e.g. (1, 2, 4, 8, 16)")
    return tuple(sorted(int(k) for k in hs))


def _time_axis_frames(frames, context_end: int) -> tuple[np.ndarray, int]:
    arr = np.asarray(frames)
    if arr.ndim < 4 or arr.shape[-1] not in (1, 3):
        raise bad_argument("frames.shape", arr.shape, "pass true frames (..., T, H, W, C)")
    steps = arr.shape[-4]
    if not isinstance(context_end, (int, np.integer)) or not 0 <= context_end < steps:
        raise bad_argument(
            "context_end", context_end, f"use the index of the last observed frame, 0..{steps - 1}"
        )
    return arr, steps


def valid_horizons(num_frames: int, context_end: int, horizons: Sequence[int] = HORIZONS) -> tuple[int, ...]:
    """Horizons k whose target frame context_end + k exists in a trajectory of num_frames frames."""
    return tuple(k for k in _check_horizons(horizons) if context_end + k < num_frames)


def horizon_targets(frames, context_end: int, horizons: Sequence[int] = HORIZONS) -> dict[int, np.ndarray]:
    """{k: true frame context_end + k, shape (..., H, W, C)} for every horizon inside the trajectory."""
    arr, steps = _time_axis_frames(frames, context_end)
    return {k: arr[..., context_end + k, :, :, :] for k in valid_horizons(steps, context_end, horizons)}


def copy_last_frame_predictions(
    frames, context_end: int, horizons: Sequence[int] = HORIZONS
) -> dict[int, np.ndarray]:
    """Copy-last-frame baseline: {k: the last observed frame (..., H, W, C)} for each valid horizon."""
    arr, steps = _time_axis_frames(frames, context_end)
    last = arr[..., context_end, :, :, :]
    return dict.fromkeys(valid_horizons(steps, context_end, horizons), last)


class HorizonScores:
    """Per-sample metric values keyed by (mode, horizon, metric), summarised per horizon."""

    def __init__(self, horizons: Sequence[int] = HORIZONS) -> None:
        self.horizons = _check_horizons(horizons)
        self._values: dict[tuple[str, int, str], list[float]] = defaultdict(list)
        self._modes: list[str] = []
        self._metrics: list[str] = []

    @property
    def modes(self) -> tuple[str, ...]:
        """Modes in the order first added."""
        return tuple(self._modes)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names in the order first added."""
        return tuple(self._metrics)

    def add(self, mode: str, horizon: int, values: Mapping[str, float | np.ndarray]) -> None:
        """Record per-sample values {metric: float or array of samples} for one mode and horizon."""
        if not isinstance(mode, str) or not mode:
            raise bad_argument("mode", mode, f"name the prediction mode, e.g. one of {MODES}")
        if horizon not in self.horizons:
            raise bad_argument("horizon", horizon, f"use one of the declared horizons {self.horizons}")
        for name, v in values.items():
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
            if arr.size and np.isnan(arr).any():
                raise bad_argument(f"values[{name!r}]", v, "metric values must not be NaN")
            self._values[(mode, int(horizon), name)].extend(arr.tolist())
            if name not in self._metrics:
                self._metrics.append(name)
        if mode not in self._modes:
            self._modes.append(mode)

    def add_frames(
        self,
        mode: str,
        horizon: int,
        pred,
        target,
        names: Sequence[str] = FRAME_METRICS,
        perceptual: Sequence[PerceptualMetric] = (),
    ) -> dict[str, np.ndarray]:
        """Score predicted against true frames (..., H, W, C) with frame (and loaded per-frame perceptual)
        metrics, record every frame as a sample, and return the per-frame values."""
        values = frame_metrics(pred, target, names)
        for metric in perceptual:
            if not metric.per_frame:
                raise bad_argument(
                    "perceptual", metric.name, "only per-frame metrics; score FVD over whole sets"
                )
            values[metric.name] = np.asarray(metric(pred, target), dtype=np.float64)
        self.add(mode, horizon, values)
        return values

    def add_copy_last_frame(
        self,
        frames,
        context_end: int,
        names: Sequence[str] = FRAME_METRICS,
        perceptual: Sequence[PerceptualMetric] = (),
    ) -> None:
        """Score the copy-last-frame baseline on true frames (..., T, H, W, C) under mode COPY_LAST_FRAME."""
        preds = copy_last_frame_predictions(frames, context_end, self.horizons)
        targets = horizon_targets(frames, context_end, self.horizons)
        for k, pred in preds.items():
            self.add_frames(COPY_LAST_FRAME, k, pred, targets[k], names, perceptual)

    def values(self, mode: str, horizon: int, metric: str) -> np.ndarray:
        """All recorded samples for one cell (empty if none)."""
        return np.asarray(self._values.get((mode, int(horizon), metric), []), dtype=np.float64)

    def summary(self) -> dict:
        """{"horizons": [...], "modes": {mode: {metric: {"mean", "std", "n"}}}} with per-horizon lists; `psnr`
        is the dataset-level PSNR with `psnr_frame_mean` beside it (module docstring)."""
        modes: dict[str, dict[str, dict[str, list]]] = {}
        for mode in self._modes:
            per_metric = {}
            for metric in self._metrics:
                cells = [self.values(mode, k, metric) for k in self.horizons]
                if not any(c.size for c in cells):
                    continue
                if metric == "psnr":
                    per_metric["psnr"] = {
                        "mean": [psnr_of_mean_mse(mse_from_psnr(c)) if c.size else None for c in cells],
                        "std": [None] * len(cells),
                        "n": [int(c.size) for c in cells],
                        "aggregate": PSNR_AGGREGATE,
                    }
                    cells = [np.minimum(c, PSNR_FRAME_CAP_DB) for c in cells]
                    metric = PSNR_FRAME_MEAN
                per_metric[metric] = {
                    "mean": [float(c.mean()) if c.size else None for c in cells],
                    "std": [float(c.std()) if c.size else None for c in cells],
                    "n": [int(c.size) for c in cells],
                }
            modes[mode] = per_metric
        return {"horizons": list(self.horizons), "modes": modes}
