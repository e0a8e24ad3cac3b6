"""Context: an interleaved history (text, clean VAE images, ViT images) held in a KV cache.

Shape legend
    T   tokens of one segment        Z   latent token features        P   ViT patch features
    h, w  latent-token grid of a VAE image        nh, nw  patch grid of a ViT image

Adding a segment runs the LLM over the new tokens only (the cache supplies the prefix). `fork()` returns a
branch that shares the cache tensors; appends to either side never touch the other. `window()` drops the
oldest segment groups and re-prefills what is left (positions restart at 0), which keeps memory bounded in long
rollouts. Several contexts advance together in one packed forward with `extend_batch`. Every append is checked
against the pipeline's `context_limit` (position limit and `max_context_tokens`, `context_limit.py`) before any
of its tensors is built: a too-long input raises `ContextTooLong` and leaves the context as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from worldbagel.inference.cache import KVCache
from worldbagel.inference.context_limit import segments_extent, text_extent
from worldbagel.inference.value_checks import require_finite, require_finite_image
from worldbagel.model.sequence import SequenceBuilder

if TYPE_CHECKING:
    from worldbagel.inference.pipeline import BagelPipeline

SegmentKind = Literal["text", "vae", "vit"]


@dataclass(frozen=True)
class Segment:
    """One cached item: text ids, clean latent tokens [h*w, Z] or ViT patches [nh*nw, P]."""

    kind: SegmentKind
    data: torch.Tensor
    grid: tuple[int, int] | None = None
    framed: bool = True
    """Text only: wrap in <|im_start|> ... <|im_end|>."""
    group: int = 0
    """Segments of one logical item (an image's VAE + ViT views) share a group; windows drop whole groups."""

    @property
    def num_tokens(self) -> int:
        if self.kind == "text":
            return int(self.data.numel()) + (2 if self.framed else 0)
        return int(self.data.shape[0]) + 2


def add_segment(builder: SequenceBuilder, seg: Segment, sample: int) -> None:
    if seg.kind == "text":
        builder.add_text(seg.data.tolist(), sample=sample, framed=seg.framed)
    elif seg.kind == "vae":
        builder.add_vae_image(seg.data, seg.grid, sample=sample)
    elif seg.kind == "vit":
        builder.add_vit_image(seg.data, seg.grid, sample=sample)
    else:  # pragma: no cover - Segment.kind is a Literal
        raise ValueError(f"unknown segment kind {seg.kind!r}")


@dataclass
class Context:
    """An interleaved history in a KV cache. Create with `BagelPipeline.new_context()`."""

    pipe: BagelPipeline
    cache: KVCache = field(default_factory=KVCache)
    rope: int = 0
    """Rope position the next segment starts at."""
    segments: tuple[Segment, ...] = ()
    _next_group: int = 0

    # ------------------------------------------------------------------ basic properties
    @property
    def num_tokens(self) -> int:
        """Tokens in the cache."""
        return self.cache.length

    @property
    def num_groups(self) -> int:
        return len({s.group for s in self.segments})

    def fork(self) -> Context:
        """A branch sharing this context's cache (no tensor is copied)."""
        return Context(self.pipe, self.cache, self.rope, self.segments, self._next_group)

    # ------------------------------------------------------------------ appends
    def add_text(self, text: str | list[int], framed: bool = True) -> Context:
        """Append a causal text segment (`<|im_start|> text <|im_end|>` unless framed=False). Returns self."""
        return self.extend([self.text_segment(text, framed)])

    def text_segment(self, text: str | list[int], framed: bool = True) -> Segment:
        """A text segment in this context's next group, to append with `extend` / `extend_batch`."""
        ids = self.pipe.tokenizer.encode(text) if isinstance(text, str) else list(text)
        n = text_extent(len(ids), framed)
        self.pipe.context_limit.check(self.describe(n), self.num_tokens + n, self.rope + n)
        return Segment("text", torch.tensor(ids, dtype=torch.long), framed=framed, group=self._take_group())

    def describe(self, new_tokens: int) -> str:
        """How a limit error names this context plus `new_tokens` appended tokens."""
        return f"a context of {self.num_tokens:,} tokens plus {new_tokens:,} new ones"

    def add_image(
        self, image, vae: bool = True, vit: bool = True, sample: bool | torch.Generator = False
    ) -> Context:
        """Append an image as clean VAE latents and/or ViT tokens (official order: VAE first, then ViT).

        `image`: PIL image, HWC uint8 array or CHW tensor in [0, 1]/uint8. It is first resized with the VAE
        transform's rule (as the official inferencer does), then fed to both encoders. `sample` draws the VAE
        posterior (official behaviour) instead of taking its mean.
        """
        return self.extend(self.image_segments(image, vae, vit, sample))

    def image_segments(
        self, image, vae: bool = True, vit: bool = True, sample: bool | torch.Generator = False
    ) -> list[Segment]:
        """`add_image`'s segments (one new group), to append with `extend` / `extend_batch`."""
        if not (vae or vit):
            raise ValueError("add_image needs vae=True and/or vit=True")
        require_finite_image("image", image)
        group = self._take_group()
        segs = []
        resized = self.pipe.vae_transform.resize(image)
        if vae:
            tokens, grid = self.pipe.encode_vae(resized, sample=sample)
            segs.append(Segment("vae", tokens, grid, group=group))
        if vit:
            patches, grid = self.pipe.encode_vit(resized)
            segs.append(Segment("vit", patches, grid, group=group))
        return segs

    def add_latents(self, tokens: torch.Tensor, grid: tuple[int, int], vit_image=None) -> Context:
        """Append already-encoded clean latent tokens [h*w, Z] (and optionally the image's ViT view)."""
        return self.extend(self.latent_segments(tokens, grid, vit_image))

    def latent_segments(self, tokens: torch.Tensor, grid: tuple[int, int], vit_image=None) -> list[Segment]:
        """`add_latents`' segments (one new group), to append with `extend` / `extend_batch`."""
        require_finite("latents", tokens)
        group = self._take_group()
        segs = [Segment("vae", tokens.detach(), grid, group=group)]
        if vit_image is not None:
            patches, vgrid = self.pipe.encode_vit(self.pipe.vae_transform.resize(vit_image))
            segs.append(Segment("vit", patches, vgrid, group=group))
        return segs

    def extend(self, segments: list[Segment]) -> Context:
        """Append segments with one forward pass over their tokens. Returns self."""
        extend_batch([self], [segments])
        return self

    def _take_group(self) -> int:
        g = self._next_group
        self._next_group += 1
        return g

    # ------------------------------------------------------------------ window
    def window(self, max_groups: int, keep_first: int = 0) -> Context:
        """Keep the first `keep_first` groups (e.g. an instruction) and the newest groups up to `max_groups`
        in all; if anything is dropped, re-prefill the kept segments from rope 0. Returns self."""
        return self.extend(self.drop_groups(max_groups, keep_first))

    def drop_groups(
        self, max_groups: int, keep_first: int = 0, incoming: Sequence[Segment] = ()
    ) -> list[Segment]:
        """The windowing half of `window`, for appending `incoming` (new groups) in the same forward: if this
        context's groups plus the incoming ones exceed `max_groups`, the cache is emptied (rope restarts at 0)
        and the kept old segments followed by `incoming` are returned, to be prefilled together; otherwise
        `incoming` is returned as it is."""
        if max_groups < keep_first + 1:
            raise ValueError(f"invalid max_groups={max_groups}: must exceed keep_first={keep_first}")
        everything = list(self.segments) + list(incoming)
        groups = list(dict.fromkeys(s.group for s in everything))
        if len(groups) <= max_groups:
            return list(incoming)
        kept = set(groups[:keep_first]) | set(groups[len(groups) - (max_groups - keep_first) :])
        prefill = [s for s in everything if s.group in kept]
        tokens, positions = segments_extent(prefill)
        self.pipe.context_limit.check(f"a window re-prefill of {tokens:,} tokens", tokens, positions)
        self.cache, self.rope, self.segments = KVCache(), 0, ()
        return prefill


def window_batch(contexts: list[Context], max_groups: int, keep_first: int = 0) -> None:
    """`Context.window` for several contexts, with ONE packed re-prefill for all that drop something."""
    extend_batch(contexts, [c.drop_groups(max_groups, keep_first) for c in contexts])


def extend_batch(contexts: list[Context], segments: list[list[Segment]]) -> None:
    """Append each context's segments, all contexts in ONE packed forward (contexts may differ in length)."""
    if len(contexts) != len(segments):
        raise ValueError(f"got {len(contexts)} contexts but {len(segments)} segment lists")
    work = [(c, s) for c, s in zip(contexts, segments) if s]
    if not work:
        return
    pipe = work[0][0].pipe
    for ctx, segs in work:  # before any tensor of the forward is built
        tokens, positions = segments_extent(segs)
        pipe.context_limit.check(ctx.describe(tokens), ctx.num_tokens + tokens, ctx.rope + positions)
    builder = pipe.builder(ropes=[c.rope for c, _ in work], past_lens=[c.num_tokens for c, _ in work])
    for i, (_, segs) in enumerate(work):
        for seg in segs:
            add_segment(builder, seg, i)
    seq = builder.build(pipe.device)
    with torch.no_grad():
        _, new_kv = pipe.model.forward_packed(seq, past=[c.cache or None for c, _ in work], return_kv=True)
    start = 0
    for i, (ctx, segs) in enumerate(work):
        n = seq.sample_lengths[i]
        ctx.cache = ctx.cache.append([(k[start : start + n], v[start : start + n]) for k, v in new_kv])
        ctx.rope = builder.rope(i)
        ctx.segments = ctx.segments + tuple(segs)
        start += n
