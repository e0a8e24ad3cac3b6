"""Sequence plans -> packed training batches: conditioning dropout, rows, splits, rope, and token budgets.

Shape legend
    F    frames of an episode          T  latent tokens per frame (h*w)      Z  latent token features
    Np   ViT patches per frame (nh*nw) P  ViT patch features                 Nn noisy VAE rows of a batch

A batch is one `PackedSequence` holding several samples (`ropes=[0]*k`, one sample per plan; samples never
see each other) plus what the objective needs: which VAE rows are noisy targets and which noise group (one
timestep per group) each belongs to. The noisy rows hold the clean latents x0 here; the objective noises them.

Conditioning dropout (spec 6.2, per item with `cfg=True`, independently): text with `dropout.text`, ViT
images with `dropout.vit`, clean VAE images with `dropout.vae`; with `dropout.annotations`, all
question/answer/thought texts of a sample together (one draw per sample). A dropped text adds nothing; a dropped image
adds no tokens but advances its sample's rope by 1 (as the official packer). Targets are never dropped.

Token-budget packing (spec 6.3): plans are taken in order; a pack is closed when it reaches
`expected_tokens` or when the next plan would overflow `max_tokens`; plans longer than
`max_tokens_per_sample` are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanItem, SequencePlan
from worldbagel.errors import bad_argument
from worldbagel.model.sequence import PackedSequence, SequenceBuilder, SpecialIds

logger = logging.getLogger(__name__)


@dataclass
class EpisodeFeatures:
    """Encoded frames of one episode (what the frozen encoders produce; cached across epochs)."""

    latents: torch.Tensor
    """[F, T, Z] scaled VAE posterior means, patchified."""
    grid: tuple[int, int]
    """Latent token grid (h, w) of every frame."""
    latent_std: torch.Tensor | None = None
    """[F, T, Z] scaled posterior standard deviations; given = draw posterior samples, None = use the means."""
    vit: torch.Tensor | None = None
    """[F, Np, P] ViT patches (None when the plan has no ViT copies): uint8 pixel values (4x smaller to cache;
    mapped to [-1, 1] by `vit_patches`) or float values already in [-1, 1]."""
    vit_grid: tuple[int, int] | None = None
    """Patch grid (nh, nw) of every frame."""

    def latent(self, frame: int, generator: torch.Generator | None) -> torch.Tensor:
        """x0 of one frame [T, Z]: the mean, or a posterior sample when stds are present."""
        mean = self.latents[frame]
        if self.latent_std is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + self.latent_std[frame] * noise

    def vit_patches(self, frame: int) -> torch.Tensor:
        """ViT patches of one frame [Np, P] as float in [-1, 1] (the official normalisation, mean = std = 0.5)."""
        patches = self.vit[frame]
        if patches.dtype == torch.uint8:
            return (patches.float() / 255.0 - 0.5) / 0.5  # exactly ImageTransform's arithmetic
        return patches


@dataclass
class PackedBatch:
    """One packed training batch."""

    seq: PackedSequence
    noisy_rows: torch.Tensor
    """[Nn] long: rows of `seq.vae_tokens` that are noisy targets (same order as `seq.noisy_vae_idx`)."""
    noise_group: torch.Tensor
    """[Nn] long: noise group (0 .. num_groups-1) of each noisy row; one timestep per group."""
    num_groups: int
    plans: list[SequencePlan] = field(default_factory=list)
    dropped: list[list[bool]] = field(default_factory=list)
    """Per sample, per plan item: removed by conditioning dropout."""
    change: torch.Tensor | None = None
    """[Nn] float: how much each noisy row's token changes from the same token of the frame before it in its
    sample (`frame_change`; mean 1 over a target frame that changes at all, 0 where nothing changes). The
    objective's `change_weight` uses it to weight the flow-matching MSE toward what moves."""

    @property
    def num_samples(self) -> int:
        return len(self.seq.sample_lengths)

    @property
    def num_tokens(self) -> int:
        return self.seq.num_tokens

    @property
    def num_ce(self) -> int:
        return int(self.seq.ce_idx.numel())

    @property
    def num_mse(self) -> int:
        return int(self.noisy_rows.numel())


# ------------------------------------------------------------------------------------------------ tokens
class TextIds:
    """Tokenizes plan texts once (action vocabularies repeat a lot)."""

    def __init__(self, encode: Callable[[str], list[int]]):
        self._encode = encode
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = list(self._encode(text))
        return ids


def plan_tokens(plan: SequencePlan, text_ids: TextIds, vae_tokens: int, vit_tokens: int) -> int:
    """Tokens of a plan with nothing dropped: texts n+2 (framed), images T+2 (markers)."""
    total = 0
    for item in plan.items:
        if item.kind == "text":
            total += len(text_ids(item.text or "")) + 2
        elif item.kind == "vae":
            total += vae_tokens + 2
        else:
            total += vit_tokens + 2
    return total


def pack_by_budget(lengths: Sequence[int], cfg: PackingConfig) -> list[list[int]]:
    """Greedy in-order packing of samples with `lengths` tokens into lists of sample indices."""
    packs: list[list[int]] = []
    current: list[int] = []
    size = skipped = 0
    for i, n in enumerate(lengths):
        if n > cfg.max_tokens_per_sample:
            skipped += 1
            continue
        if current and size + n > cfg.max_tokens:
            packs.append(current)
            current, size = [], 0
        current.append(i)
        size += n
        if size >= cfg.expected_tokens:
            packs.append(current)
            current, size = [], 0
    if current:
        packs.append(current)
    if skipped:
        logger.warning(
            "skipped %d samples longer than max_tokens_per_sample=%d", skipped, cfg.max_tokens_per_sample
        )
    return packs


# ------------------------------------------------------------------------------------------------ dropout
ANNOTATION_ROLES = ("system", "question", "answer", "thought")


def draw_dropout(plan: SequencePlan, cfg: DropoutConfig, rng: np.random.Generator) -> list[bool]:
    """Which items of `plan` conditioning dropout removes (one uniform draw per item, in order)."""
    probs = {"text": cfg.text, "vit": cfg.vit, "vae": cfg.vae}
    # one extra draw per sample, only when enabled (keeps the draws of runs without it unchanged)
    drop_notes = cfg.annotations > 0 and rng.random() < cfg.annotations
    # ... and never in a sample without a frame target (a think sample): its texts are all it has
    drop_notes = drop_notes and bool(plan.targets)
    out = []
    for item in plan.items:
        u = rng.random()
        note = item.kind == "text" and item.role in ANNOTATION_ROLES
        out.append(bool((item.cfg and not item.loss and u < probs[item.kind]) or (drop_notes and note)))
    return out


def _keep_one_vit(plans: Sequence[SequencePlan], dropped: list[list[bool]]) -> None:
    first = None
    for s, plan in enumerate(plans):
        for j, item in enumerate(plan.items):
            if item.kind == "vit":
                if not dropped[s][j]:
                    return
                first = first or (s, j)
    if first is not None:
        dropped[first[0]][first[1]] = False


# ------------------------------------------------------------------------------------------------ change
def frame_change(target: torch.Tensor, previous: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-token change of a target frame against the frame before it, both [T, Z] latents -> [T].

    d_i = mean_z (target - previous)^2, divided by the frame's mean d: the changed tokens of a frame share a
    total of T (one per token of the frame, as the unchanged ones), however few they are. A frame identical
    to the previous one (an agent bumping into a wall) gives zeros.
    """
    d = (target.float() - previous.float()).pow(2).mean(-1)  # [T]
    mean = d.mean()
    if mean <= eps:
        return torch.zeros_like(d)
    return d / mean


def _plan_changes(plan: SequencePlan, feats: EpisodeFeatures) -> list[torch.Tensor]:
    """frame_change of each noisy target of a plan (in item order) against the previous VAE frame of the plan
    (the last context frame, or the previous target), from the posterior means; zeros when none precedes."""
    out = []
    previous = None
    for item in plan.items:
        if item.kind != "vae":
            continue
        if item.loss:
            target = feats.latents[item.frame]
            out.append(torch.zeros(target.shape[0]) if previous is None else frame_change(target, previous))
        previous = feats.latents[item.frame]
    return out


# ------------------------------------------------------------------------------------------------ emission
def emit_plan(
    builder: SequenceBuilder,
    sample: int,
    plan: SequencePlan,
    feats: EpisodeFeatures,
    text_ids: TextIds,
    dropped: list[bool],
    generator: torch.Generator | None,
) -> list[int]:
    """Append a plan's items to `sample` of `builder`; returns the noisy-row count of each noise group."""
    group_frames: dict[int, int] = {}
    for item in plan.items:
        if item.group is not None:
            group_frames[item.group] = group_frames.get(item.group, 0) + 1
    group_rows = [0] * len(group_frames)
    for item, drop in zip(plan.items, dropped):
        _emit_item(builder, sample, item, feats, text_ids, drop, generator, group_frames)
        if item.group is not None:
            group_rows[item.group] += feats.grid[0] * feats.grid[1]
    return group_rows


def _emit_item(
    builder: SequenceBuilder,
    sample: int,
    item: PlanItem,
    feats: EpisodeFeatures,
    text_ids: TextIds,
    drop: bool,
    generator: torch.Generator | None,
    group_frames: dict[int, int],
) -> None:
    if item.kind == "text":
        if not drop:
            builder.add_text(text_ids(item.text or ""), sample=sample, loss=item.loss)
        return
    if drop:
        builder.skip_positions(sample=sample, n=1)
        return
    if item.kind == "vit":
        if feats.vit is None or feats.vit_grid is None:
            raise bad_argument(
                "plan.vit", True, "the episode features have no ViT patches; set plan.vit=false"
            )
        builder.add_vit_image(feats.vit_patches(item.frame), feats.vit_grid, sample=sample)
        return
    x0 = feats.latent(item.frame, generator)
    if not item.loss:
        builder.add_vae_image(x0, feats.grid, sample=sample)
        return
    multi = group_frames.get(item.group, 1) > 1
    builder.add_vae_image(
        x0, feats.grid, sample=sample, noisy=True, advance=item.advance, split="full" if multi else None
    )
    if item.join:
        builder.join_last_splits(sample)


def build_batch(
    plans: Sequence[SequencePlan],
    features: Sequence[EpisodeFeatures],
    text_ids: TextIds,
    special: SpecialIds,
    dropout: DropoutConfig,
    seeds: Sequence[int],
    vit_max_side: int = 70,
    latent_max_side: int = 64,
    device: torch.device | str = "cpu",
    keep_one_vit: bool = False,
) -> PackedBatch:
    """Pack plans (with their episodes' features) into one batch; `seeds[i]` drives sample i's dropout and
    posterior draws, so a batch is a pure function of its inputs.

    `keep_one_vit`: when dropout removed every ViT image of the pack, keep the first one (the official
    trainer requires a ViT image in every pack; under FSDP every rank must run the ViT's sharded layers).
    """
    builder = SequenceBuilder(
        special, ropes=[0] * len(plans), vit_max_side=vit_max_side, latent_max_side=latent_max_side
    )
    group_rows: list[int] = []
    changes: list[torch.Tensor] = []
    dropped_all = []
    gens = []
    for plan, seed in zip(plans, seeds):
        rng = np.random.default_rng(seed)
        dropped_all.append(draw_dropout(plan, dropout, rng))
        gens.append(torch.Generator().manual_seed(int(rng.integers(2**62))))
    if keep_one_vit:
        _keep_one_vit(plans, dropped_all)
    for s, (plan, feats, dropped, gen) in enumerate(zip(plans, features, dropped_all, gens)):
        group_rows.extend(emit_plan(builder, s, plan, feats, text_ids, dropped, gen))
        changes.extend(_plan_changes(plan, feats))
    seq = builder.build(device)
    noisy_rows = torch.isin(seq.vae_idx, seq.noisy_vae_idx).nonzero().squeeze(1)
    noise_group = torch.repeat_interleave(
        torch.arange(len(group_rows), device=seq.vae_idx.device),
        torch.tensor(group_rows, dtype=torch.long, device=seq.vae_idx.device),
    )
    if noise_group.numel() != noisy_rows.numel():  # pragma: no cover - internal consistency
        raise RuntimeError(f"{noisy_rows.numel()} noisy rows but noise groups cover {noise_group.numel()}")
    change = (
        torch.cat(changes).to(seq.vae_idx.device) if changes else torch.zeros(0, device=seq.vae_idx.device)
    )
    return PackedBatch(seq, noisy_rows, noise_group, len(group_rows), list(plans), dropped_all, change)
