"""Every evaluation metric of worldbagel in one import (definitions live in the topic modules).

    frame_metrics        psnr, ssim, mse, l1, frame_metrics           (predicted vs real frames)
    perceptual           LPIPSMetric, DreamSimMetric, FVDMetric        (optional packages, local weights)
    nav_metrics          success_rate, spl, soft_spl, navigation_summary
    trajectory_metrics   ate, rpe, umeyama_alignment, poses_from_xy_yaw
    text_metrics         normalize_answer, exact_match, qa_accuracy
    symbolic             symbolic_accuracy                             (gridworld state decoded from frames)
    horizons             HorizonScores, copy-last-frame baseline       (NWM protocol bookkeeping)

See docs/metrics.md for definitions, units and the metrics.json layout.
"""

from __future__ import annotations

from .frame_metrics import FRAME_METRICS, HIGHER_IS_BETTER, frame_metrics, l1, mse, psnr, ssim
from .horizons import (
    COPY_LAST_FRAME,
    HORIZONS,
    MODES,
    OPEN_LOOP,
    SINGLE_STEP,
    HorizonScores,
    copy_last_frame_predictions,
    horizon_targets,
    valid_horizons,
)
from .nav_metrics import (
    navigation_summary,
    soft_spl,
    soft_spl_per_episode,
    spl,
    spl_per_episode,
    success_rate,
)
from .perceptual import (
    PERCEPTUAL_METRICS,
    DreamSimMetric,
    FVDMetric,
    LPIPSMetric,
    PerceptualMetric,
    frechet_distance,
    gaussian_stats,
    load_perceptual,
)
from .symbolic import STATE_FIELDS, SymbolicAccuracy, symbolic_accuracy
from .text_metrics import exact_match, normalize_answer, qa_accuracy
from .trajectory_metrics import ate, ate_errors, poses_from_xy_yaw, rpe, umeyama_alignment

__all__ = [
    "COPY_LAST_FRAME",
    "FRAME_METRICS",
    "HIGHER_IS_BETTER",
    "HORIZONS",
    "MODES",
    "OPEN_LOOP",
    "PERCEPTUAL_METRICS",
    "SINGLE_STEP",
    "STATE_FIELDS",
    "DreamSimMetric",
    "FVDMetric",
    "HorizonScores",
    "LPIPSMetric",
    "PerceptualMetric",
    "SymbolicAccuracy",
    "ate",
    "ate_errors",
    "copy_last_frame_predictions",
    "exact_match",
    "frame_metrics",
    "frechet_distance",
    "gaussian_stats",
    "horizon_targets",
    "l1",
    "load_perceptual",
    "mse",
    "navigation_summary",
    "normalize_answer",
    "poses_from_xy_yaw",
    "psnr",
    "qa_accuracy",
    "rpe",
    "soft_spl",
    "soft_spl_per_episode",
    "spl",
    "spl_per_episode",
    "ssim",
    "success_rate",
    "symbolic_accuracy",
    "umeyama_alignment",
    "valid_horizons",
]
