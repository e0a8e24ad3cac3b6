"""Controllability: does the predicted next frame follow the action it was given?

Shape legend:
    S      samples (held-out histories)
    A      actions tried from one history (A may differ between samples)
    H, W   frame height / width;  C channels (frames channel-last, uint8 or float, see frame_metrics)

For one history and every action a, the model predicts the next frame p_a, and the env gives the true
next frame y_b of every action b. The prediction for a is **right** when it is strictly nearer (MSE) to its
own true frame y_a than to every other action's true frame y_b that differs from y_a:

    right(a) = mse(p_a, y_a) < min { mse(p_a, y_b) : y_b != y_a }

Ties, documented:
    - true frames that are identical (two actions with the same outcome, e.g. a forward step into a wall
      and a turn that changes nothing visible) are one outcome: y_b equal to y_a is not a rival of a. An
      action whose true frame equals every other action's is left out (`excluded`: nothing to tell apart).
    - a prediction exactly as near to a rival as to its own frame counts as wrong (`ties`), so a model that
      ignores actions gets no credit from equal distances.

`chance` is what a guess among the distinct true frames would score: the mean over decisions of
1 / (distinct true frames of that history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worldbagel.errors import bad_argument
from worldbagel.frame_metrics import as_unit_frames

__all__ = ["ControllabilityResult", "controllability"]


@dataclass
class ControllabilityResult:
    """Counts of one controllability evaluation (module docstring)."""

    n: int = 0
    """Decisions scored: (history, action) pairs with at least one rival true frame."""
    correct: int = 0
    """Decisions whose prediction is strictly nearest to its own true frame."""
    ties: int = 0
    """Decisions counted wrong because a rival was exactly as near as the own true frame."""
    excluded: int = 0
    """(history, action) pairs without a rival (every action's true frame is the same)."""
    chance_sum: float = 0.0
    """Sum over decisions of 1 / (distinct true frames of the history)."""
    per_action: dict[str, list[int]] = field(default_factory=dict)
    """{action name: [n, correct]}."""

    @property
    def accuracy(self) -> float | None:
        """correct / n; None without decisions."""
        return self.correct / self.n if self.n else None

    @property
    def chance(self) -> float | None:
        """Accuracy of a uniform guess among the distinct true frames; None without decisions."""
        return self.chance_sum / self.n if self.n else None

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "correct": self.correct,
            "ties": self.ties,
            "excluded": self.excluded,
            "chance": self.chance,
            "per_action": {
                name: {"n": n, "correct": c, "accuracy": c / n if n else None}
                for name, (n, c) in self.per_action.items()
            },
        }


def _distinct_ids(true: np.ndarray) -> np.ndarray:
    """(A,) id of each true frame's outcome: equal frames share an id."""
    ids = np.full(len(true), -1)
    for a in range(len(true)):
        if ids[a] < 0:
            same = [b for b in range(len(true)) if ids[b] < 0 and np.array_equal(true[a], true[b])]
            ids[same] = a
    return ids


def _distances(pred, true, s: int, data_range: float | None) -> np.ndarray:
    """(A, A) dist[a, b] = mse(p_a, y_b) up to a constant factor (only its order is used). uint8 frames are
    compared in exact integer sums, so equal distances are found equal (floats would round them apart)."""
    p = as_unit_frames(pred, f"predicted[{s}]", data_range)
    t = as_unit_frames(true, f"true[{s}]", data_range)
    if p.shape != t.shape or p.ndim != 4:
        raise bad_argument(
            f"predicted[{s}].shape",
            tuple(p.shape),
            f"must be (A, H, W, C) and equal true[{s}].shape {tuple(t.shape)}",
        )
    pred, true = np.asarray(pred), np.asarray(true)
    if data_range is None and pred.dtype == np.uint8 and true.dtype == np.uint8:
        diff = pred[:, None].astype(np.int64) - true[None, :].astype(np.int64)
        return (diff * diff).reshape(*diff.shape[:2], -1).sum(axis=-1)
    return ((p[:, None] - t[None, :]) ** 2).mean(dim=(-3, -2, -1)).numpy()


def controllability(
    predicted: np.ndarray | Sequence[np.ndarray],
    true: np.ndarray | Sequence[np.ndarray],
    action_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
    data_range: float | None = None,
) -> ControllabilityResult:
    """Score predicted next frames against the true next frame of every action (module docstring).

    Args:
        predicted: (S, A, H, W, C) frames, or a sequence of S arrays (A_s, H, W, C): the prediction after
            action a from history s.
        true: the same shapes: the env's next frame after action a from history s.
        action_names: names for `per_action`: one list for every sample, or one list per sample
            (default "action <a>").
        data_range: full intensity of float frames (see `frame_metrics.as_unit_frames`).
    """
    if len(predicted) != len(true):
        raise bad_argument(
            "predicted", len(predicted), f"give one entry per history, as true has ({len(true)})"
        )
    per_sample_names = (
        action_names is not None and len(action_names) > 0 and not isinstance(action_names[0], str)
    )
    result = ControllabilityResult()
    for s, (pred_s, true_s) in enumerate(zip(predicted, true)):
        dist = _distances(pred_s, true_s, s, data_range)
        names = action_names[s] if per_sample_names else action_names
        if names is not None and len(names) != dist.shape[0]:
            raise bad_argument("action_names", list(names), f"give {dist.shape[0]} names, one per action")
        ids = _distinct_ids(np.asarray(true_s))
        outcomes = len(set(ids.tolist()))
        for a in range(dist.shape[0]):
            rivals = ids != ids[a]
            if not rivals.any():
                result.excluded += 1
                continue
            own, nearest = dist[a, a], dist[a, rivals].min()
            ok = bool(own < nearest)
            result.n += 1
            result.correct += ok
            result.ties += bool(own == nearest)
            result.chance_sum += 1.0 / outcomes
            name = names[a] if names is not None else f"action {a}"
            counts = result.per_action.setdefault(str(name), [0, 0])
            counts[0] += 1
            counts[1] += ok
    return result
