"""The NWM frame-prediction protocol run on a WorldModel over held-out trajectories.

Shape legend:
    S      samples (windows cut from trajectories)
    F      true frames of one sample: its context frames, then up to max(horizons) future frames
    k, K   a horizon (steps ahead of the context end t0) and the horizons of a sample
    H, W   the model's frame size (true frames are resized to it, so predictions and targets align)

A sample is a window of one trajectory: context frames start..t0 (`context` frames; fewer at the very
start of a clip) and the true future t0+1..t0+max(k). For every horizon k the frame t0+k is predicted in
these modes:
    single_step     teacher forcing: the history holds the true frames and actions up to t0+k-1 (inside the
                    world model's window), then the action at t0+k-1 and ONE predicted frame
    open_loop       from the context ending at t0, an autoregressive rollout along the true actions
                    a_t0..a_t0+k-1 (predictions fed back); one rollout of max(K) steps serves every k
and two baselines, scored on the same resized true frames:
    copy_last_frame       frame t0 for every k (the baseline of open_loop)
    copy_previous_frame   frame t0+k-1 (the baseline of single_step: the last frame that mode has seen)
Clips without actions (videos) are continued: the same modes with no action text.

Compute stays proportional to the budget: at most `max_trajectories` trajectories, `samples_per_trajectory`
windows each, `max_samples` in all; single-step predictions of all horizons of `batch_size` samples are
forked from one pass over the true history and predicted together (`predict_batch`); open-loop rollouts of
a batch advance in lockstep, one batched forward per step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from worldbagel.data.trajectory import Episode
from worldbagel.envs import decode_frame
from worldbagel.errors import bad_argument
from worldbagel.frame_metrics import FRAME_METRICS
from worldbagel.perceptual_metrics import PerceptualMetric
from worldbagel.world_model import WorldModel, WorldModelConfig, predict_batch

from .heldout import episode_instruction, evenly_spaced, gridworld_size, has_actions
from .horizons import COPY_LAST_FRAME, OPEN_LOOP, SINGLE_STEP, HorizonScores
from .symbolic import STATE_FIELDS, SymbolicAccuracy, symbolic_accuracy

__all__ = [
    "COPY_PREVIOUS_FRAME",
    "FramePredictionResult",
    "FrameSample",
    "evaluate_frame_prediction",
    "fresh_history",
    "make_samples",
    "resize_frame",
    "predict_samples",
    "score_samples",
    "window_starts",
]

logger = logging.getLogger(__name__)

COPY_PREVIOUS_FRAME = "copy_previous_frame"
MODEL_MODES = (SINGLE_STEP, OPEN_LOOP)
SYMBOLIC_CHOICES = ("auto", "on", "off")


@dataclass
class FrameSample:
    """One evaluation window of a trajectory (frames already at the model's size)."""

    episode_id: str
    start: int
    """Episode index of the first context frame."""
    context_end: int
    """Episode index t0 of the last context frame."""
    frames: np.ndarray
    """True frames start .. t0 + max(horizons): uint8 [F, H, W, 3]."""
    actions: list[str] | None
    """F - 1 action texts (action i leads from frames[i] to frames[i+1]); None for clips without actions."""
    horizons: tuple[int, ...]
    states: list[dict] | None = None
    """F symbolic states (GridWorld infos) when the frames can be decoded, else None."""
    grid_size: int | tuple[int, int] | None = None
    """Maze size for `worldbagel.envs.decode_frame` when `states` is set."""
    instruction: str | None = None
    """The episode's instruction; the history opens with it (as the training sequences do)."""

    @property
    def c(self) -> int:
        """Index of the context end t0 inside `frames`."""
        return self.context_end - self.start

    def target(self, k: int) -> np.ndarray:
        """True frame t0 + k."""
        return self.frames[self.c + k]


@dataclass
class FramePredictionResult:
    """Scores, symbolic accuracies, the samples and their predictions."""

    scores: HorizonScores
    samples: list[FrameSample]
    predictions: dict[str, list[dict[int, np.ndarray]]]
    """{mode: one {k: predicted frame [H, W, 3]} per sample} for the model modes and the baselines."""
    symbolic: dict[tuple[str, int], SymbolicAccuracy] = field(default_factory=dict)
    """(mode, k) -> symbolic accuracy over the samples (GridWorld data only)."""
    predicted_frames: int = 0
    """Frames the model generated (intermediate open-loop frames included)."""
    wall_s: float = 0.0
    """Seconds spent predicting (model time, scoring excluded)."""

    def summary(self) -> dict:
        """`HorizonScores.summary()` (the metrics.json "frame_prediction" section)."""
        return self.scores.summary()

    def symbolic_section(self) -> dict | None:
        """metrics.json "symbolic" section: next-frame accuracy (single-step predictions of every horizon
        pooled: each is one step from the true history) and the open-loop and copy-last-frame accuracy at
        k = 8 (or the largest horizon scored); None without symbolic states."""
        if not self.symbolic:
            return None
        out: dict = {"fields": list(STATE_FIELDS)}
        single = [acc for (mode, _), acc in self.symbolic.items() if mode == SINGLE_STEP]
        if single:
            out["next_frame"] = _pool(single).as_dict()
        ks = sorted({k for (mode, k) in self.symbolic if mode == OPEN_LOOP})
        if ks:
            k = 8 if 8 in ks else ks[-1]
            out[f"open_loop_k{k}"] = self.symbolic[(OPEN_LOOP, k)].as_dict()
            if (COPY_LAST_FRAME, k) in self.symbolic:
                out[f"copy_last_frame_k{k}"] = self.symbolic[(COPY_LAST_FRAME, k)].as_dict()
        return out


def _pool(parts: Sequence[SymbolicAccuracy]) -> SymbolicAccuracy:
    fields = dict.fromkeys(parts[0].field_correct, 0)
    for p in parts:
        for f, v in p.field_correct.items():
            fields[f] += v
    return SymbolicAccuracy(
        n=sum(p.n for p in parts),
        correct=sum(p.correct for p in parts),
        undecodable=sum(p.undecodable for p in parts),
        field_correct=fields,
    )


# ------------------------------------------------------------------------------------------- samples
def window_starts(
    num_frames: int, context: int, horizons: Sequence[int], count: int
) -> list[tuple[int, int]]:
    """(start, t0) of up to `count` windows of a clip with `num_frames` frames.

    Windows with the full context and every horizon inside the clip are spread evenly over the valid range
    of t0; when the clip is too short for that, one window keeps the full context (t0 = context - 1, or the
    last frame but one) and only the horizons that fit are scored.
    """
    hs = HorizonScores(horizons).horizons
    lo, hi = context - 1, num_frames - 1 - hs[-1]
    if num_frames < 2:
        return []
    if hi >= lo:
        t0s = [lo + i for i in evenly_spaced(hi - lo + 1, count)]
    else:
        t0s = [min(lo, num_frames - 1 - hs[0])]
        if t0s[0] < 0:
            return []
    return [(max(0, t0 - context + 1), t0) for t0 in t0s]


def make_samples(
    episodes: Sequence[Episode],
    frame_size: Callable[[int, int], tuple[int, int]] | None = None,
    horizons: Sequence[int] = (1, 2, 4, 8, 16),
    context: int = 4,
    max_trajectories: int | None = 8,
    samples_per_trajectory: int = 1,
    max_samples: int | None = 16,
    symbolic: str = "auto",
) -> list[FrameSample]:
    """Cut evaluation windows from episodes (see `window_starts`), loading only the frames they need.

    `frame_size(h, w) -> (H, W)` gives the model's frame size for a true frame size (e.g.
    `pipe.vae_transform.target_size`); frames are resized to it with the model's own resize rule.
    """
    hs = HorizonScores(horizons).horizons
    if not (isinstance(context, int) and context >= 1):
        raise bad_argument(
            "frames.context", context, "use an int >= 1 (true frames before the first prediction)"
        )
    if not (isinstance(samples_per_trajectory, int) and samples_per_trajectory >= 1):
        raise bad_argument("frames.samples_per_trajectory", samples_per_trajectory, "use an int >= 1")
    if max_samples is not None and max_samples < 1:
        raise bad_argument("frames.max_samples", max_samples, "use an int >= 1, or null for no cap")
    if symbolic not in SYMBOLIC_CHOICES:
        raise bad_argument("frames.symbolic", symbolic, f"use one of {SYMBOLIC_CHOICES}")
    chosen = [episodes[i] for i in evenly_spaced(len(episodes), max_trajectories)]
    plan = [
        (ep, s, t0)
        for ep in chosen
        for s, t0 in window_starts(ep.length + 1, context, hs, samples_per_trajectory)
    ]
    if max_samples is not None and len(plan) > max_samples:
        plan = [plan[i] for i in evenly_spaced(len(plan), max_samples)]
    samples = []
    for ep, start, t0 in plan:
        valid = tuple(k for k in hs if t0 + k <= ep.length)
        end = t0 + valid[-1]
        frames = np.stack([resize_frame(ep.load_frame(t), frame_size) for t in range(start, end + 1)])
        acts = [_action_text(ep, t) for t in range(start, end)] if has_actions(ep) else None
        size = gridworld_size(ep) if symbolic != "off" else None
        if symbolic == "on" and size is None:
            raise bad_argument(
                "frames.symbolic",
                symbolic,
                f"episode {ep.id} ({ep.env_id or 'no env id'}) is not top-down GridWorld data with agent/heading/goal "
                "infos; use symbolic=auto or off",
            )
        states = [dict(ep.infos[t]) for t in range(start, end + 1)] if size is not None else None
        samples.append(
            FrameSample(ep.id, start, t0, frames, acts, valid, states, size, episode_instruction(ep))
        )
    if not samples:
        raise bad_argument(
            "dataset",
            [ep.id for ep in chosen][:5],
            "no trajectory has 2 frames or more to evaluate frame prediction",
        )
    return samples


def _action_text(ep: Episode, t: int) -> str:
    text = ep.action_texts[t] if t < len(ep.action_texts) else ""
    if text:
        return text
    raise bad_argument(
        f"episode {ep.id} action_texts[{t}]",
        text,
        "the dataset stores no action text; re-collect it with a codec",
    )


def resize_frame(frame: np.ndarray, frame_size: Callable[[int, int], tuple[int, int]] | None) -> np.ndarray:
    """A true frame at the model's size (`frame_size(h, w) -> (H, W)`, bicubic; None keeps it)."""
    frame = np.asarray(frame, dtype=np.uint8)
    if frame_size is None:
        return frame
    h, w = frame_size(frame.shape[0], frame.shape[1])
    if (h, w) == frame.shape[:2]:
        return frame

    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))


# ------------------------------------------------------------------------------------------ prediction
def fresh_history(
    world_model: WorldModel, sample: FrameSample, upto: int, config: WorldModelConfig | None = None
) -> WorldModel:
    """A new history with the sample's true frames 0..upto (and the actions between them), opening with the
    sample's instruction; `config` replaces the world model's own (e.g. a shorter window)."""
    w = WorldModel(world_model.pipe, world_model.codec, config or world_model.config)
    w.reset(sample.frames[0], instruction=sample.instruction)
    for i in range(1, upto + 1):
        if sample.actions is not None:
            w.act(sample.actions[i - 1])
        w.observe(sample.frames[i])
    return w


def _single_step(world_model, batch, generator, chunk: int) -> tuple[list[dict[int, np.ndarray]], int]:
    forks, where = [], []
    for i, s in enumerate(batch):
        w = fresh_history(world_model, s, 0)
        seen = 0
        for k in s.horizons:
            last = s.c + k - 1  # the last true frame this prediction may see
            while seen < last:
                seen += 1
                if s.actions is not None:
                    w.act(s.actions[seen - 1])
                w.observe(s.frames[seen])
            f = w.fork()
            if s.actions is not None:
                f.act(s.actions[last])
            forks.append(f)
            where.append((i, k))
    out: list[dict[int, np.ndarray]] = [{} for _ in batch]
    for lo in range(0, len(forks), chunk):
        frames = predict_batch(forks[lo : lo + chunk], 1, None, generator, absorb=False)  # forks end here
        for (i, k), fs in zip(where[lo : lo + chunk], frames):
            out[i][k] = fs[0]
    return out, len(forks)


def _open_loop(world_model, batch, generator) -> tuple[list[dict[int, np.ndarray]], int]:
    worlds = [fresh_history(world_model, s, s.c) for s in batch]
    out: list[dict[int, np.ndarray]] = [{} for _ in batch]
    made = 0
    for j in range(max(s.horizons[-1] for s in batch)):
        active = [i for i, s in enumerate(batch) if j < s.horizons[-1]]
        acts = None
        if batch[0].actions is not None:
            acts = [[batch[i].actions[batch[i].c + j]] for i in active]
        go_on = any(j + 1 < batch[i].horizons[-1] for i in active)  # else no history needs this frame
        frames = predict_batch([worlds[i] for i in active], 1, acts, generator, absorb=go_on)
        made += len(active)
        for i, fs in zip(active, frames):
            if j + 1 in batch[i].horizons:
                out[i][j + 1] = fs[0]
    return out, made


def predict_samples(
    world_model: WorldModel,
    samples: Sequence[FrameSample],
    modes: Sequence[str] = MODEL_MODES,
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[dict[int, np.ndarray]]], int]:
    """Model predictions {mode: one {k: frame} per sample} and the number of frames generated."""
    bad = [m for m in modes if m not in MODEL_MODES]
    if bad or not modes:
        raise bad_argument("frames.modes", list(modes), f"use one or more of {MODEL_MODES}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise bad_argument("frames.batch_size", batch_size, "use an int >= 1")
    preds: dict[str, list] = {m: [None] * len(samples) for m in modes}
    # batches share a frame size and action/no-action kind (one predict_batch call needs both)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.frames.shape[1:3], s.actions is None), []).append(i)
    total = sum(
        (len(s.horizons) if SINGLE_STEP in modes else 0) + (s.horizons[-1] if OPEN_LOOP in modes else 0)
        for s in samples
    )
    done = made = 0
    for idx in groups.values():
        for lo in range(0, len(idx), batch_size):
            part = idx[lo : lo + batch_size]
            batch = [samples[i] for i in part]
            for mode in modes:
                if mode == SINGLE_STEP:
                    got, n = _single_step(world_model, batch, generator, batch_size * 4)
                else:
                    got, n = _open_loop(world_model, batch, generator)
                for i, g in zip(part, got):
                    preds[mode][i] = g
                made += n
                done += n
                if progress is not None:
                    progress(done, total)
    return preds, made


# --------------------------------------------------------------------------------------------- scoring
def _baselines(samples: Sequence[FrameSample], single_step: bool) -> dict[str, list[dict[int, np.ndarray]]]:
    out = {COPY_LAST_FRAME: [dict.fromkeys(s.horizons, s.frames[s.c]) for s in samples]}
    if single_step:
        out[COPY_PREVIOUS_FRAME] = [{k: s.frames[s.c + k - 1] for k in s.horizons} for s in samples]
    return out


def score_samples(
    samples: Sequence[FrameSample],
    predictions: dict[str, list[dict[int, np.ndarray]]],
    horizons: Sequence[int],
    metrics: Sequence[str] = ("psnr", "ssim"),
    perceptual: Sequence[PerceptualMetric] = (),
) -> tuple[HorizonScores, dict[tuple[str, int], SymbolicAccuracy]]:
    """Score predictions {mode: per-sample {k: frame}} against the samples' true frames.

    Returns the HorizonScores (one sample per frame; `symbolic_accuracy` as a 0/1 value per frame when the
    samples carry states) and the symbolic accuracy per (mode, k)."""
    bad = [m for m in metrics if m not in FRAME_METRICS]
    if bad or not metrics:
        raise bad_argument("frames.metrics", list(metrics), f"use one or more of {FRAME_METRICS}")
    scores = HorizonScores(horizons)
    symbolic: dict[tuple[str, int], SymbolicAccuracy] = {}
    for mode, per_sample in predictions.items():
        for k in scores.horizons:
            have = [i for i, p in enumerate(per_sample) if p is not None and k in p]
            if not have:
                continue
            pred = np.stack([per_sample[i][k] for i in have])
            real = np.stack([samples[i].target(k) for i in have])
            scores.add_frames(mode, k, pred, real, tuple(metrics), perceptual)
            with_states = [i for i in have if samples[i].states is not None]
            if with_states:
                parts = [
                    symbolic_accuracy(
                        [per_sample[i][k]],
                        [samples[i].states[samples[i].c + k]],
                        decode_frame,
                        size=samples[i].grid_size,
                    )
                    for i in with_states
                ]
                scores.add(mode, k, {"symbolic_accuracy": [float(p.correct) for p in parts]})
                symbolic[(mode, k)] = _pool(parts)
    return scores, symbolic


def evaluate_frame_prediction(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    horizons: Sequence[int] = (1, 2, 4, 8, 16),
    modes: Sequence[str] = MODEL_MODES,
    context: int = 4,
    max_trajectories: int | None = 8,
    samples_per_trajectory: int = 1,
    max_samples: int | None = 16,
    batch_size: int = 8,
    metrics: Sequence[str] = ("psnr", "ssim"),
    perceptual: Sequence[PerceptualMetric] = (),
    symbolic: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> FramePredictionResult:
    """Run the protocol (module docstring) and score it; the baselines are scored on the same frames."""
    hs = HorizonScores(horizons).horizons
    samples = make_samples(
        episodes,
        world_model.pipe.vae_transform.target_size,
        hs,
        context,
        max_trajectories,
        samples_per_trajectory,
        max_samples,
        symbolic,
    )
    logger.info(
        "frame prediction: %d samples from %d trajectories",
        len(samples),
        len({s.episode_id for s in samples}),
    )
    generator = torch.Generator().manual_seed(int(seed))
    t = time.perf_counter()
    preds, made = predict_samples(world_model, samples, list(modes), batch_size, generator, progress)
    wall = time.perf_counter() - t
    preds.update(_baselines(samples, SINGLE_STEP in modes))
    scores, sym = score_samples(samples, preds, hs, metrics, perceptual)
    return FramePredictionResult(scores, samples, preds, sym, made, wall)
