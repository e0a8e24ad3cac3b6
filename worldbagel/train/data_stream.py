"""The training data stream: episodes -> sequence plans -> token-budget packs, addressed by one integer cursor.

Every pack is a pure function of (seed, cursor): epoch e shuffles the plans with a generator seeded by
(seed, e) and packs them greedily (`pack_by_budget`); the dropout and posterior draws of a plan are seeded by
(seed, e, plan index) and the flow noise of a pack by (seed, cursor). Resuming at a cursor therefore
reproduces the stream exactly, whatever the number of ranks or accumulation steps that consume it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from worldbagel.data.packing import (
    EpisodeFeatures,
    PackedBatch,
    TextIds,
    build_batch,
    pack_by_budget,
    plan_tokens,
)
from worldbagel.data.sequence_plan import (
    DropoutConfig,
    PackingConfig,
    PlanConfig,
    SequencePlan,
    episode_plans,
)
from worldbagel.errors import bad_argument
from worldbagel.model.sequence import SpecialIds
from worldbagel.train.latent_cache import FrameEncoder

logger = logging.getLogger(__name__)


def _frame_size(episode: Any) -> tuple[int, int]:
    """(H, W) of the episode's frames; a video episode (`ClipEpisode.frame_hw`) knows it without decoding."""
    known = getattr(episode, "frame_hw", None)
    if known is not None:
        return int(known[0]), int(known[1])
    frame = episode.load_frame(0) if hasattr(episode, "load_frame") else episode.frames[0]
    return int(frame.shape[0]), int(frame.shape[1])


def _episode_frames(episode: Any) -> np.ndarray:
    """uint8 [T+1, H, W, 3], not cached in the episode: a video episode (`ClipEpisode.read_frames`) is decoded
    in one pass, a trajectory `Episode` is read frame by frame."""
    if hasattr(episode, "read_frames"):
        return np.asarray(episode.read_frames())
    if hasattr(episode, "load_frame") and hasattr(episode, "length"):
        return np.stack([episode.load_frame(t) for t in range(episode.length + 1)])
    return np.asarray(episode.frames)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, platform independent)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


class TrainingData:
    """Deterministic, resumable packs of training samples from a sequence of episodes.

    `episodes[i]` is a `worldbagel.data.trajectory.Episode` from any episode source
    (`worldbagel.data.episode_source`: trajectory folders, NWM, videos, LeRobot), or anything with `frames`
    uint8 [T+1, H, W, 3], `action_texts` (T strings; empty for clips without actions) and optional per-step
    `annotations`, see `worldbagel.data.sequence_plan`).
    """

    def __init__(
        self,
        episodes: Sequence[Any],
        encoder: FrameEncoder,
        encode_text: Callable[[str], list[int]],
        special: SpecialIds,
        plan: PlanConfig | None = None,
        dropout: DropoutConfig | None = None,
        packing: PackingConfig | None = None,
        seed: int = 0,
        shuffle: bool = True,
        vit_max_side: int = 70,
        latent_max_side: int = 64,
    ):
        self.episodes = episodes
        self.encoder = encoder
        self.text_ids = TextIds(encode_text)
        self.special = special
        self.plan_cfg = plan or PlanConfig()
        self.dropout = dropout or DropoutConfig()
        self.packing = packing or PackingConfig()
        self.seed = seed
        self.shuffle = shuffle
        self.vit_max_side = vit_max_side
        self.latent_max_side = latent_max_side
        if self.plan_cfg.vit and encoder.vit_transform is None:
            raise bad_argument("plan.vit", True, "the frame encoder has no ViT transform; set plan.vit=false")
        self.plans: list[SequencePlan] = []
        self.lengths: list[int] = []
        for i, ep in enumerate(episodes):
            plans = episode_plans(i, ep, self.plan_cfg)
            height, width = _frame_size(ep)
            vae_grid, vit_grid = encoder.grids(height, width)
            vit_tokens = vit_grid[0] * vit_grid[1] if vit_grid else 0
            for p in plans:
                self.plans.append(p)
                self.lengths.append(plan_tokens(p, self.text_ids, vae_grid[0] * vae_grid[1], vit_tokens))
        if not self.plans:
            c = self.plan_cfg
            raise bad_argument(
                "data",
                f"{len(episodes)} episodes",
                f"no training window fits: each needs (context_frames + horizon - 1) * frame_skip + 1 = "
                f"{(c.context_frames + c.horizon - 1) * c.frame_skip + 1} frames; use longer episodes or a "
                "smaller plan",
            )
        self._epochs: list[list[list[int]]] = []
        self._features: dict[int, EpisodeFeatures] = {}
        logger.info(
            "%d episodes -> %d samples (%.0f tokens each on average)",
            len(episodes),
            len(self.plans),
            float(np.mean(self.lengths)),
        )

    # ------------------------------------------------------------------ addressing
    def epoch_packs(self, epoch: int) -> list[list[int]]:
        """Plan indices of every pack of `epoch` (computed once, cheap: no encoding)."""
        while len(self._epochs) <= epoch:
            e = len(self._epochs)
            order = np.arange(len(self.plans))
            if self.shuffle:
                order = np.random.default_rng(derive_seed(self.seed, e)).permutation(order)
            packs = pack_by_budget([self.lengths[i] for i in order], self.packing)
            self._epochs.append([[int(order[j]) for j in pack] for pack in packs])
        return self._epochs[epoch]

    def locate(self, cursor: int) -> tuple[int, int]:
        """Global pack counter -> (epoch, pack index inside the epoch)."""
        epoch = 0
        while cursor >= len(self.epoch_packs(epoch)):
            cursor -= len(self.epoch_packs(epoch))
            epoch += 1
        return epoch, cursor

    def pack_tokens(self, cursor: int) -> int:
        epoch, k = self.locate(cursor)
        return sum(self.lengths[i] for i in self.epoch_packs(epoch)[k])

    def noise_generator(self, cursor: int) -> torch.Generator:
        """The generator of the flow noise (timesteps and eps) of pack `cursor`."""
        return torch.Generator().manual_seed(derive_seed(self.seed, 1_000_003, cursor))

    # ------------------------------------------------------------------ batches
    def features(self, episode: int) -> EpisodeFeatures:
        """Encoded frames of one episode (encoded once; frames are read without being kept in memory)."""
        feats = self._features.get(episode)
        if feats is None:
            feats = self._features[episode] = self.encoder.features(_episode_frames(self.episodes[episode]))
        return feats

    def batch(self, cursor: int, device: torch.device | str = "cpu") -> PackedBatch:
        """The packed batch at global pack counter `cursor`."""
        epoch, k = self.locate(cursor)
        idx = self.epoch_packs(epoch)[k]
        plans = [self.plans[i] for i in idx]
        feats = [self.features(p.episode) for p in plans]
        seeds = [derive_seed(self.seed, epoch, i) for i in idx]
        return build_batch(
            plans,
            feats,
            self.text_ids,
            self.special,
            self.dropout,
            seeds,
            vit_max_side=self.vit_max_side,
            latent_max_side=self.latent_max_side,
            device=device,
            keep_one_vit=self.plan_cfg.vit,
        )
