"""`worldbagel eval tasks=[controllability]`: the next frame under every action, from held-out histories.

For each history (a window of a held-out episode ending at t0, `probe_samples`), the world model predicts
the next frame once per action of the env (forks of one history, predicted in one batched forward), and
the env gives the true next frame of every action (`EnvReplay`: the episode replayed to t0, then the
action). `controllability.controllability` scores them; copy-last-frame (frame t0 for every action) is
scored the same way beside the model, with the chance level of a guess among the distinct true frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from worldbagel.data.trajectory import Episode
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.world_model import WorldModel, predict_batch

from .controllability import controllability
from .env_replay import EnvReplay
from .probe_samples import probe_samples
from .protocol import fresh_history, resize_frame

__all__ = ["evaluate_controllability"]

logger = logging.getLogger(__name__)


def evaluate_controllability(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    context: int | None = None,
    max_trajectories: int | None = 8,
    samples_per_trajectory: int = 2,
    max_samples: int | None = 16,
    batch_size: int = 8,
    exclude: Sequence[str] = ("stop",),
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict | None, str | None]:
    """(metrics.json "controllability" section, None), or (None, why it cannot run on these episodes)."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise bad_argument("controllability.batch_size", batch_size, "use an int >= 1")
    with EnvReplay() as replay:
        samples, by_id, why = probe_samples(
            "controllability",
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
        size = world_model.pipe.vae_transform.target_size
        kept, truths, names, skipped = [], [], [], []
        for s in samples:
            ep = by_id[s.episode_id]
            texts = replay.action_texts(ep)
            acts = [i for i, text in enumerate(texts) if text not in set(exclude)]
            if len(acts) < 2:
                return None, f"fewer than 2 actions left after excluding {list(exclude)} from {list(texts)}"
            try:
                branches = replay.branch(ep, s.context_end, [[a] for a in acts])
            except WorldBagelError as exc:
                skipped.append(str(exc))
                continue
            kept.append(s)
            truths.append(np.stack([resize_frame(b[0], size) for b in branches]))
            names.append([texts[a] for a in acts])
    if skipped:
        logger.warning("controllability: %d histories skipped: %s", len(skipped), skipped[0])
    if not kept:
        return None, skipped[0]
    generator = torch.Generator().manual_seed(int(seed))
    total = sum(len(n) for n in names)
    predicted: list[np.ndarray] = []
    t = time.perf_counter()
    for lo in range(0, len(kept), batch_size):
        part = range(lo, min(lo + batch_size, len(kept)))
        forks, actions = [], []
        for i in part:
            world = fresh_history(world_model, kept[i], kept[i].c)
            for text in names[i]:
                forks.append(world.fork())
                actions.append([text])
        frames = predict_batch(forks, 1, actions, generator, absorb=False)  # forks end here
        at = 0
        for i in part:
            predicted.append(np.stack([f[0] for f in frames[at : at + len(names[i])]]))
            at += len(names[i])
        if progress is not None:
            progress(sum(len(names[i]) for i in range(part.stop)), total)
    wall = time.perf_counter() - t
    result = controllability(predicted, truths, names)
    copies = [np.stack([s.frames[s.c]] * len(n)) for s, n in zip(kept, names)]
    baseline = controllability(copies, truths, names).as_dict()
    baseline.pop("per_action")
    return {
        **result.as_dict(),
        "copy_last_frame": baseline,
        "histories": len(kept),
        "trajectories": len({s.episode_id for s in kept}),
        "context": context or world_model.config.max_history_frames,
        "excluded_actions": list(exclude),
        "skipped_histories": len(skipped),
        "predicted_frames": total,
        "predict_s": round(wall, 3),
    }, None
