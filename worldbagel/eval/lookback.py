"""The look-back (memory) test: turn away and back, open loop, and compare the frame the model ends on.

Shape legend:
    S      samples (held-out start states)
    L      steps of the out-and-back action sequence: turn left k times, then turn right k times (L = 2k)
    H, W   frame height / width;  C channels (channel-last, uint8 or float, see frame_metrics)

From a held-out history ending at the start frame y_0, the model rolls out the L actions open loop
(predictions fed back). Turning left then right by the same angle returns to the start pose, so the true
last frame y_L equals y_0: a model that still holds y_0 in its window can draw it again, one that forgot it
must guess what came back into view. `lookback_scores` scores one set of rollouts:

    final_psnr             dataset-level PSNR (PSNR of the mean MSE, `psnr_of_mean_mse`) of the last frames
    final_psnr_frame_mean  per-frame PSNR of the last frames, capped at 50 dB, averaged
    final_ssim             mean SSIM of the last frames
    path_psnr              dataset-level PSNR over all L frames of the rollouts
    returns_exactly        share of samples whose true last frame equals the true start frame

A copy-last-frame model (it repeats y_0 at every step) ends exactly on y_0, so its final-frame figures are
perfect (100 dB, the cap) whenever the env returns exactly; `path_psnr` is what it cannot fake: the frames
in between, turned away, differ from y_0. The memory gain is the final PSNR of the model's own window minus
that of the same model keeping one frame of history (`memory_gain_db`).
"""

from __future__ import annotations

import numpy as np

from worldbagel.errors import bad_argument
from worldbagel.frame_metrics import capped_psnr_mean, mse, psnr, psnr_of_mean_mse, ssim

__all__ = ["lookback_actions", "lookback_scores", "memory_gain_db"]


def lookback_actions(left: int, right: int, k: int) -> list[int]:
    """The out-and-back action ids: `left` k times, then `right` k times."""
    if not (isinstance(k, int) and k >= 1):
        raise bad_argument("lookback.turns", k, "use turn counts >= 1, e.g. [3, 4]")
    return [left] * k + [right] * k


def lookback_scores(predicted, true, start=None, data_range: float | None = None) -> dict:
    """Score open-loop out-and-back rollouts (module docstring).

    Args:
        predicted: (S, L, H, W, C) frames the model predicted along the L actions.
        true: (S, L, H, W, C) the env's frames along the same actions.
        start: (S, H, W, C) the true start frames (for `returns_exactly`); None leaves it out.
        data_range: full intensity of float frames.
    """
    pred, real = np.asarray(predicted), np.asarray(true)
    if pred.ndim != 5 or pred.shape != real.shape or pred.shape[1] < 1:
        raise bad_argument(
            "predicted.shape", pred.shape, f"must be (S, L, H, W, C) and equal true.shape {real.shape}"
        )
    last_p, last_t = pred[:, -1], real[:, -1]
    final_db = np.atleast_1d(psnr(last_p, last_t, data_range))
    out = {
        "n": int(pred.shape[0]),
        "steps": int(pred.shape[1]),
        "final_psnr": psnr_of_mean_mse(np.atleast_1d(mse(last_p, last_t, data_range))),
        "final_psnr_frame_mean": capped_psnr_mean(final_db),
        "final_ssim": float(np.mean(ssim(last_p, last_t, data_range))),
        "path_psnr": psnr_of_mean_mse(np.asarray(mse(pred, real, data_range)).reshape(-1)),
    }
    if start is not None:
        first = np.asarray(start)
        if first.shape != last_t.shape:
            raise bad_argument("start.shape", first.shape, f"must be (S, H, W, C) = {last_t.shape}")
        out["returns_exactly"] = float(np.mean([np.array_equal(a, b) for a, b in zip(first, last_t)]))
    return out


def memory_gain_db(with_window: dict, one_frame: dict) -> float:
    """Final-frame PSNR with the model's window minus with one frame of history (dB; > 0: memory helps)."""
    return float(with_window["final_psnr"]) - float(one_frame["final_psnr"])
