"""`worldbagel eval tasks=[lookback]`: turn away and back open loop, with and without the model's memory.

From each held-out history (a window of an episode ending at t0, `probe_samples`), the world model rolls out
"turn left" k times then "turn right" k times open loop, for every k of `turns`; the env gives the true
frames along the same actions (`EnvReplay`), the last of which is the start frame again. The same rollouts
run twice: with the model's own window (its WorldModelConfig), and keeping `one_frame_history` frames (no
window slack), which shows what memory adds. `lookback.lookback_scores` scores each run; copy-last-frame
(the start frame at every step) is scored beside them. Both runs draw the same flow noise (one seed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from worldbagel.data.trajectory import Episode
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.world_model import WorldModel, WorldModelConfig, predict_batch

from .env_replay import EnvReplay, turn_actions
from .lookback import lookback_actions, lookback_scores, memory_gain_db
from .probe_samples import probe_samples
from .protocol import FrameSample, fresh_history, resize_frame

__all__ = ["evaluate_lookback"]

logger = logging.getLogger(__name__)


def _rollouts(
    world_model: WorldModel,
    config: WorldModelConfig,
    samples: Sequence[FrameSample],
    texts: list[str],
    batch_size: int,
    seed: int,
) -> np.ndarray:
    """(S, L, H, W, 3) open-loop frames along `texts` from each sample's history, under `config`."""
    generator = torch.Generator().manual_seed(int(seed))
    out = []
    for lo in range(0, len(samples), batch_size):
        worlds = [fresh_history(world_model, s, s.c, config) for s in samples[lo : lo + batch_size]]
        frames = predict_batch(worlds, len(texts), [list(texts)] * len(worlds), generator, absorb=False)
        out.extend(np.stack(f) for f in frames)
    return np.stack(out)


def evaluate_lookback(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    turns: Sequence[int] = (3, 4),
    context: int | None = None,
    max_trajectories: int | None = 8,
    samples_per_trajectory: int = 1,
    max_samples: int | None = 8,
    batch_size: int = 8,
    one_frame_history: int = 1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict | None, str | None]:
    """(metrics.json "lookback" section, None), or (None, why it cannot run on these episodes)."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise bad_argument("lookback.batch_size", batch_size, "use an int >= 1")
    if not (isinstance(one_frame_history, int) and one_frame_history >= 1):
        raise bad_argument("lookback.one_frame_history", one_frame_history, "use an int >= 1")
    ks = list(dict.fromkeys(turns))
    if not ks:
        raise bad_argument("lookback.turns", list(turns), "give at least one turn count, e.g. [3, 4]")
    for k in ks:
        lookback_actions(0, 1, k)  # checks k
    with EnvReplay() as replay:
        samples, by_id, why = probe_samples(
            "lookback",
            world_model,
            episodes,
            replay,
            context,
            max_trajectories,
            samples_per_trajectory,
            max_samples,
        )
        if why is not None:
            return None, why
        first = by_id[samples[0].episode_id]
        texts = replay.action_texts(first)
        pair = turn_actions(texts)
        if pair is None:
            return None, f"{first.env_id} has no turn left / turn right actions (its actions: {list(texts)})"
        size = world_model.pipe.vae_transform.target_size
        truths: dict[int, list[np.ndarray]] = {k: [] for k in ks}
        kept, skipped = [], []
        for s in samples:
            ep = by_id[s.episode_id]
            try:
                paths = replay.branch(ep, s.context_end, [lookback_actions(*pair, k) for k in ks])
            except WorldBagelError as exc:
                skipped.append(str(exc))
                continue
            kept.append(s)
            for k, path in zip(ks, paths):
                truths[k].append(np.stack([resize_frame(f, size) for f in path]))
    if skipped:
        logger.warning("lookback: %d start states skipped: %s", len(skipped), skipped[0])
    if not kept:
        return None, skipped[0]
    configs = {
        "window": world_model.config,
        "one_frame": replace(world_model.config, max_history_frames=one_frame_history, window_slack=0),
    }
    starts = np.stack([s.frames[s.c] for s in kept])
    total = len(configs) * len(kept) * sum(2 * k for k in ks)
    done, section, t = 0, {}, time.perf_counter()
    for k in ks:
        real = np.stack(truths[k])
        action_texts = [texts[a] for a in lookback_actions(*pair, k)]
        cell = {}
        for name, config in configs.items():
            pred = _rollouts(world_model, config, kept, action_texts, batch_size, seed)
            cell[name] = lookback_scores(pred, real, starts)
            done += pred.shape[0] * pred.shape[1]
            if progress is not None:
                progress(done, total)
        cell["copy_last_frame"] = lookback_scores(np.repeat(starts[:, None], 2 * k, axis=1), real, starts)
        cell["memory_gain_db"] = memory_gain_db(cell["window"], cell["one_frame"])
        section[f"k{k}"] = cell
    return {
        "turns": section,
        "actions": [texts[pair[0]], texts[pair[1]]],
        "histories": len(kept),
        "trajectories": len({s.episode_id for s in kept}),
        "context": context or world_model.config.max_history_frames,
        "window": world_model.config.max_history_frames,
        "one_frame_history": one_frame_history,
        "skipped_histories": len(skipped),
        "predicted_frames": total,
        "predict_s": round(time.perf_counter() - t, 3),
    }, None
