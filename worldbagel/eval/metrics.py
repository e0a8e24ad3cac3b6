"""Every evaluation metric of worldbagel in one import (definitions live in the topic modules).

    frame_metrics        psnr, ssim, mse, l1, frame_metrics           (predicted vs real frames)
                         psnr_of_mean_mse, capped_psnr_mean           (PSNR over a set of frames)
    controllability      controllability                              (next frame follows its action)
    lookback             lookback_scores, memory_gain_db              (turn away and back, open loop)
    perceptual           LPIPSMetric, DreamSimMetric, FVDMetric        (optional packages, local weights)
    nav_metrics          success_rate, spl, soft_spl, navigation_summary
    trajectory_metrics   ate, rpe, umeyama_alignment, poses_from_xy_yaw
    text_metrics         normalize_answer, exact_match, qa_accuracy
    symbolic             symbolic_accuracy                             (gridworld state decoded from frames)
    horizons             HorizonScores, copy-last-frame baseline       (NWM protocol bookkeeping)

See docs/metrics.md for definitions, units and the metrics.json layout.
"""

from __future__ import annotations

from worldbagel.frame_metrics import (
    FRAME_METRICS,
    HIGHER_IS_BETTER,
    PSNR_FRAME_CAP_DB,
    PSNR_FRAME_MEAN,
    capped_psnr_mean,
    frame_metrics,
    l1,
    mse,
    psnr,
    psnr_of_mean_mse,
    ssim,
)
from worldbagel.perceptual_metrics import (
    PERCEPTUAL_METRICS,
    DreamSimMetric,
    FVDMetric,
    LPIPSMetric,
    PerceptualMetric,
    frechet_distance,
    gaussian_stats,
    load_perceptual,
)

from .controllability import ControllabilityResult, controllability
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
from .lookback import lookback_scores, memory_gain_db
from .nav_metrics import (
    navigation_summary,
    soft_spl,
    soft_spl_per_episode,
    spl,
    spl_per_episode,
    success_rate,
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
    "PSNR_FRAME_CAP_DB",
    "PSNR_FRAME_MEAN",
    "SINGLE_STEP",
    "STATE_FIELDS",
    "DreamSimMetric",
    "FVDMetric",
    "HorizonScores",
    "LPIPSMetric",
    "PerceptualMetric",
    "SymbolicAccuracy",
    "ControllabilityResult",
    "ate",
    "ate_errors",
    "capped_psnr_mean",
    "controllability",
    "copy_last_frame_predictions",
    "exact_match",
    "frame_metrics",
    "frechet_distance",
    "gaussian_stats",
    "horizon_targets",
    "l1",
    "load_perceptual",
    "lookback_scores",
    "memory_gain_db",
    "mse",
    "navigation_summary",
    "normalize_answer",
    "poses_from_xy_yaw",
    "psnr",
    "psnr_of_mean_mse",
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
