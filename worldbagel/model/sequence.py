"""Packed interleaved sequences: the one input format of the Bagel forward pass (inference and training).

Shape legend
    N    packed tokens of all samples           Nt text rows   Nv ViT rows   Nz VAE-latent rows
    P    ViT patch features (Pv*Pv*C)           Z  latent token features (p*p*Cz, 64 for the release)

A `SequenceBuilder` appends segments to one or more samples and tracks the 1-D rope counter of each sample
exactly as the official `prepare_*` helpers and `pack_sequence` do (spec 3.2):

    text      <|im_start|> ids <|im_end|>    positions r .. r+n-1, then r += n          split `causal`
    ViT image <|vision_start|> k <|vision_end|>  all at r, then r += 1                 split `full`
    clean VAE image (t = 0)                 all at r, then r += 1                       split `full`
    noisy VAE image (being denoised)        all at r, r unchanged (advance= to change)  split `noise`

Markers are text tokens (understanding expert); ViT rows are understanding; VAE rows are generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldbagel.model.attention import SampleLayout, Split
from worldbagel.model.siglip_navit import flattened_position_ids


@dataclass
class SpecialIds:
    """Ids of the four special tokens BAGEL frames segments with."""

    bos: int
    """<|im_start|>"""
    eos: int
    """<|im_end|>"""
    start_of_image: int
    """<|vision_start|>"""
    end_of_image: int
    """<|vision_end|>"""


@dataclass
class PackedSequence:
    """Everything `Bagel.forward_packed` needs; index tensors address rows of the packed sequence."""

    position_ids: torch.Tensor  # [N] long
    gen_mask: torch.Tensor  # [N] bool (True = VAE row, generation expert)
    layouts: list[SampleLayout]
    text_ids: torch.Tensor  # [Nt] long
    text_idx: torch.Tensor  # [Nt] long
    vit_patches: torch.Tensor | None  # [Nv, P]
    vit_pos_ids: torch.Tensor  # [Nv] long
    vit_lengths: list[int]
    vit_idx: torch.Tensor  # [Nv] long
    vae_tokens: torch.Tensor | None  # [Nz, Z]
    vae_t: torch.Tensor  # [Nz] float, flow time of each VAE row (0 = clean)
    vae_pos_ids: torch.Tensor  # [Nz] long
    vae_idx: torch.Tensor  # [Nz] long
    noisy_vae_idx: torch.Tensor  # [Nnoisy] long: VAE rows in noise splits (rows whose velocity is read)
    ce_idx: torch.Tensor  # [Nce] long: rows that predict a label
    ce_labels: torch.Tensor  # [Nce] long
    sample_lengths: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.position_ids.shape[0])


@dataclass
class _Sample:
    rope: int
    splits: list[Split] = field(default_factory=list)
    start: int = 0


class SequenceBuilder:
    """Append segments sample by sample; `build()` returns a PackedSequence.

    `ropes[i]` is the rope counter of sample i before its first new segment (for a context with a cache,
    the context's counter); `past_lens[i]` the number of cached tokens its queries see.
    """

    def __init__(
        self,
        special: SpecialIds,
        ropes: list[int] | None = None,
        past_lens: list[int] | None = None,
        vit_max_side: int = 70,
        latent_max_side: int = 64,
    ):
        self.special = special
        ropes = ropes if ropes is not None else [0]
        self.past_lens = past_lens if past_lens is not None else [0] * len(ropes)
        if len(self.past_lens) != len(ropes):
            raise ValueError(
                f"ropes ({len(ropes)}) and past_lens ({len(self.past_lens)}) must have one entry per sample"
            )
        self.samples = [_Sample(rope=r) for r in ropes]
        self.vit_max_side = vit_max_side
        self.latent_max_side = latent_max_side
        self._positions: list[list[int]] = [[] for _ in ropes]
        self._gen: list[list[bool]] = [[] for _ in ropes]
        # per-sample item records, turned into packed rows in build()
        self._text: list[list[tuple[int, int]]] = [[] for _ in ropes]  # (local row, id)
        self._vit: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in ropes]
        self._vae: list[list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, bool]]] = [
            [] for _ in ropes
        ]
        self._ce: list[list[tuple[int, int]]] = [[] for _ in ropes]

    # ------------------------------------------------------------------ helpers
    def _len(self, s: int) -> int:
        return len(self._positions[s])

    def rope(self, sample: int = 0) -> int:
        """Current rope counter of a sample (what the next segment starts at)."""
        return self.samples[sample].rope

    def _push_text_tokens(self, s: int, ids: list[int], positions: list[int]) -> int:
        start = self._len(s)
        for i, (tok, pos) in enumerate(zip(ids, positions)):
            self._text[s].append((start + i, tok))
            self._positions[s].append(pos)
            self._gen[s].append(False)
        return start

    # ------------------------------------------------------------------ segments
    def add_text(self, ids: list[int], sample: int = 0, loss: bool = False, framed: bool = True) -> range:
        """A causal text segment; `framed` wraps ids in <|im_start|> ... <|im_end|>.

        With loss, the rows bos..t_n predict t_1..t_n, eos (next-token CE; the eos row has no label).
        Returns the local row range of the segment inside this sample's new tokens.
        """
        smp = self.samples[sample]
        toks = [self.special.bos, *ids, self.special.eos] if framed else list(ids)
        start = self._push_text_tokens(sample, toks, list(range(smp.rope, smp.rope + len(toks))))
        smp.rope += len(toks)
        smp.splits.append(Split(len(toks), "causal"))
        if loss:
            for i in range(len(toks) - 1):
                self._ce[sample].append((start + i, toks[i + 1]))
        return range(start, start + len(toks))

    def add_vit_image(self, patches: torch.Tensor, grid: tuple[int, int], sample: int = 0) -> range:
        """A ViT image: patches [nh*nw, P] on a grid (nh, nw); bidirectional, one rope position."""
        nh, nw = grid
        if patches.shape[0] != nh * nw:
            raise ValueError(f"patches has {patches.shape[0]} rows but grid {grid} needs {nh * nw}")
        if max(nh, nw) > self.vit_max_side:
            raise ValueError(
                f"ViT grid {grid} exceeds vit_max_num_patch_per_side={self.vit_max_side}; resize the image"
            )

        smp = self.samples[sample]
        start = self._push_text_tokens(sample, [self.special.start_of_image], [smp.rope])
        self._vit[sample].append(
            (self._len(sample), patches, flattened_position_ids(nh, nw, self.vit_max_side))
        )
        self._positions[sample].extend([smp.rope] * (nh * nw))
        self._gen[sample].extend([False] * (nh * nw))
        self._push_text_tokens(sample, [self.special.end_of_image], [smp.rope])
        smp.rope += 1
        smp.splits.append(Split(nh * nw + 2, "full"))
        return range(start, start + nh * nw + 2)

    def add_vae_image(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        sample: int = 0,
        t: float | torch.Tensor = 0.0,
        noisy: bool = False,
        advance: int | None = None,
        split: str | None = None,
    ) -> range:
        """A VAE-latent image: tokens [h*w, Z] on a latent-token grid (h, w) at flow time t.

        noisy=False: a clean context image (t = 0), split `full`, rope += 1.
        noisy=True: an image being denoised, split `noise` (invisible to later tokens), rope unchanged unless
        `advance` is given (video frames advance by their frame delta). `split` overrides the mode (a multi-frame
        noisy group uses `full`, spec 4.1).
        """
        h, w = grid
        if tokens.shape[0] != h * w:
            raise ValueError(f"tokens has {tokens.shape[0]} rows but grid {grid} needs {h * w}")
        if max(h, w) > self.latent_max_side:
            raise ValueError(
                f"latent grid {grid} exceeds max_latent_size={self.latent_max_side}; use a smaller image"
            )

        smp = self.samples[sample]
        tt = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
        if tt.numel() == 1:
            tt = tt.expand(h * w)
        start = self._push_text_tokens(sample, [self.special.start_of_image], [smp.rope])
        self._vae[sample].append(
            (self._len(sample), tokens, tt.clone(), flattened_position_ids(h, w, self.latent_max_side), noisy)
        )
        self._positions[sample].extend([smp.rope] * (h * w))
        self._gen[sample].extend([True] * (h * w))
        self._push_text_tokens(sample, [self.special.end_of_image], [smp.rope])
        smp.rope += (1 if not noisy else 0) if advance is None else advance
        mode = split or ("noise" if noisy else "full")
        smp.splits.append(Split(h * w + 2, mode))  # type: ignore[arg-type]
        return range(start, start + h * w + 2)

    def skip_positions(self, n: int, sample: int = 0) -> None:
        """Advance a sample's rope counter without tokens (an image dropped by CFG dropout keeps its slot)."""
        self.samples[sample].rope += n

    def join_last_splits(self, sample: int = 0, mode: str = "full") -> None:
        """Merge a sample's last two splits into one (the frames of a multi-frame noisy group, spec 6.5)."""
        splits = self.samples[sample].splits
        if len(splits) < 2:
            raise ValueError(f"sample {sample} has {len(splits)} split(s); joining needs two")
        b, a = splits.pop(), splits.pop()
        splits.append(Split(a.length + b.length, mode))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ build
    def build(self, device: torch.device | str = "cpu") -> PackedSequence:
        offsets, total = [], 0
        for s in range(len(self.samples)):
            offsets.append(total)
            total += self._len(s)
        position_ids = torch.tensor([p for ps in self._positions for p in ps], dtype=torch.long)
        gen_mask = torch.tensor([g for gs in self._gen for g in gs], dtype=torch.bool)
        layouts = [
            SampleLayout(list(smp.splits), past_len=pl) for smp, pl in zip(self.samples, self.past_lens)
        ]

        text_rows = [off + r for off, items in zip(offsets, self._text) for r, _ in items]
        text_ids = [tok for items in self._text for _, tok in items]
        vit_rows, vit_patches, vit_pos, vit_lengths = [], [], [], []
        for off, items in zip(offsets, self._vit):
            for row, patches, pos in items:
                vit_rows.append(torch.arange(off + row, off + row + patches.shape[0]))
                vit_patches.append(patches)
                vit_pos.append(pos)
                vit_lengths.append(int(patches.shape[0]))
        vae_rows, vae_tokens, vae_t, vae_pos, noisy_rows = [], [], [], [], []
        for off, items in zip(offsets, self._vae):
            for row, tokens, tt, pos, noisy in items:
                rows = torch.arange(off + row, off + row + tokens.shape[0])
                vae_rows.append(rows)
                vae_tokens.append(tokens)
                vae_t.append(tt)
                vae_pos.append(pos)
                if noisy:
                    noisy_rows.append(rows)
        ce_rows = [off + r for off, items in zip(offsets, self._ce) for r, _ in items]
        ce_labels = [lab for items in self._ce for _, lab in items]

        def cat_long(parts: list[torch.Tensor]) -> torch.Tensor:
            return (
                torch.cat(parts).long().to(device)
                if parts
                else torch.zeros(0, dtype=torch.long, device=device)
            )

        return PackedSequence(
            position_ids=position_ids.to(device),
            gen_mask=gen_mask.to(device),
            layouts=layouts,
            text_ids=torch.tensor(text_ids, dtype=torch.long, device=device),
            text_idx=torch.tensor(text_rows, dtype=torch.long, device=device),
            vit_patches=torch.cat(vit_patches).to(device) if vit_patches else None,
            vit_pos_ids=cat_long(vit_pos),
            vit_lengths=vit_lengths,
            vit_idx=cat_long(vit_rows),
            vae_tokens=torch.cat(vae_tokens).to(device) if vae_tokens else None,
            vae_t=torch.cat(vae_t).to(device) if vae_t else torch.zeros(0, device=device),
            vae_pos_ids=cat_long(vae_pos),
            vae_idx=cat_long(vae_rows),
            noisy_vae_idx=cat_long(noisy_rows),
            ce_idx=torch.tensor(ce_rows, dtype=torch.long, device=device),
            ce_labels=torch.tensor(ce_labels, dtype=torch.long, device=device),
            sample_lengths=[self._len(s) for s in range(len(self.samples))],
        )
