"""Packed generalized-causal attention: split layouts, mask building, and the attention backends.

Shape legend
    N    tokens of the packed query sequence (all samples back to back)
    Lq   query tokens of one sample,   Lp  cached (past) tokens of that sample,   Lk = Lp + Lq
    Hq   query heads,  Hkv  key/value heads (grouped-query attention: Hq % Hkv == 0),  D  head dim

A *sample* is one independent sequence; samples in a pack never see each other. Each sample's new tokens are
a list of *splits* (segments) with a mode (spec section 4):

    causal  text: a token sees every earlier token of the sample (cache included) and itself
    full    a clean image (ViT or VAE, markers included): bidirectional inside the split, sees everything before
    noise   a noisy VAE image being denoised: like `full`, but no token outside the split ever sees it

The cache never holds noisy tokens, so every cached key is visible to every query of its sample. Causal queries
appended after a cache therefore follow the *bottom-right* convention: new token i sees all Lp cached keys and
new tokens <= i.

Memory on CPU: a sample whose scores (Hq x Lq x Lk) fit in `BLOCK_SCORES` runs in one block with its additive
mask built once for every layer; a longer one (a long prompt, a long history) runs in blocks of query rows,
each with only its own mask rows, so attention memory grows as O(rows x Lk), never as O(Lq x Lk).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Mode = Literal["causal", "full", "noise"]
MODES: tuple[str, ...] = ("causal", "full", "noise")

BLOCK_SCORES = 1 << 24
"""Most attention scores (query heads x query rows x keys) one CPU attention block holds: 2**24, 64 MiB in
fp32 (the scores, their softmax and the block's additive mask are each about that size)."""


def block_rows(query_heads: int, keys: int) -> int:
    """Query rows per CPU attention block (at least 1) for `query_heads` heads attending to `keys` keys."""
    return max(1, BLOCK_SCORES // max(1, query_heads * keys))


@dataclass
class Split:
    """A run of tokens that share an attention mode."""

    length: int
    mode: Mode

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"invalid split mode={self.mode!r}; expected one of {MODES}")
        if self.length < 0:
            raise ValueError(f"invalid split length={self.length}; must be >= 0")


@dataclass
class SampleLayout:
    """The new (query) tokens of one sample and the size of its cached prefix."""

    splits: list[Split]
    past_len: int = 0
    """Number of cached tokens this sample's queries attend to (all visible)."""
    _mask: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _bias: dict = field(default_factory=dict, repr=False, compare=False)
    _tokens: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def length(self) -> int:
        return sum(s.length for s in self.splits)

    def mask_rows(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean mask rows [stop - start, Lp + K] of queries start..stop-1 against the keys they can reach:
        the cached ones and the first K new ones (K = `reach(stop)`); the same rows as `mask()`, cut there."""
        key = torch.device(device)
        if key not in self._tokens:
            self._tokens[key] = _token_splits(self.splits, key)
        split_id, mode = self._tokens[key]
        keys = self.reach(stop)
        q = torch.arange(start, stop, device=key)
        k = torch.arange(keys, device=key)
        return _allowed(q, k, split_id, mode, self.past_len)

    def reach(self, stop: int) -> int:
        """New keys visible to the queries before `stop`: up to `stop` itself, or to the end of the full / noise
        split holding query stop - 1 (a causal query sees no later key; a bidirectional one its whole split)."""
        if stop <= 0:
            return 0
        ends = list(_cumulative(s.length for s in self.splits))
        split = self.splits[bisect_right(ends, stop - 1)]
        return stop if split.mode == "causal" else ends[bisect_right(ends, stop - 1)]

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean [Lq, Lp + Lq] mask, True where a query may attend to a key."""
        if self._mask is None or self._mask.device != torch.device(device):
            self._mask = build_mask(self.splits, self.past_len, device)
        return self._mask

    def bias(self, device: torch.device | str, groups: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [groups * Lq, Lp + Lq]: 0 where a query may attend, -inf where not, stacked once per
        query head of a key/value group (the row order of `_bmm_attention`'s grouped queries). Built once per
        sample and reused by every layer."""
        key = (torch.device(device), groups, dtype)
        if key not in self._bias:
            self._bias[key] = additive_mask(self.mask(device), groups, dtype)
        return self._bias[key]


def additive_mask(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask [Lq, Lk] (True = may attend) -> additive bias [groups * Lq, Lk] (0 or -inf), repeated once
    per query head of a key/value group (the row order of `_bmm_attention`'s grouped queries)."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias.repeat(groups, 1)  # [G*Lq, Lk]


def build_mask(splits: list[Split], past_len: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean attention mask [Lq, past_len + Lq] of one sample (True = may attend).

    Rules (spec 4.2): allowed if the key is not after the query, or both lie in the same full/noise split;
    then forbidden if the key lies in a noise split that the query is not in. Cached keys are always visible.
    """
    split_id, mode = _token_splits(splits, device)
    idx = torch.arange(split_id.shape[0], device=device)
    return _allowed(idx, idx, split_id, mode, past_len)


def _cumulative(lengths) -> list[int]:
    out, total = [], 0
    for n in lengths:
        total += n
        out.append(total)
    return out


def _token_splits(splits: list[Split], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per new token: the index of its split and its mode (0 causal, 1 full, 2 noise), both [Lq] long."""
    lengths = torch.tensor([s.length for s in splits], dtype=torch.long)
    split_id = torch.repeat_interleave(torch.arange(len(splits)), lengths).to(device)
    modes = torch.tensor([MODES.index(s.mode) for s in splits], dtype=torch.long)
    return split_id, torch.repeat_interleave(modes, lengths).to(device)


def _allowed(
    q: torch.Tensor, k: torch.Tensor, split_id: torch.Tensor, mode: torch.Tensor, past_len: int
) -> torch.Tensor:
    """The mask rules of `build_mask` for new-token queries `q` [r] against new-token keys `k` [c], after
    `past_len` always-visible cached keys: [r, past_len + c]."""
    causal = k[None, :] <= q[:, None]  # key <= query
    same = split_id[q][:, None] == split_id[k][None, :]
    key_mode = mode[k][None, :]
    allowed = (causal | (same & (key_mode != 0))) & ~((key_mode == 2) & ~same)
    past = torch.ones(q.shape[0], past_len, dtype=torch.bool, device=q.device)
    return torch.cat([past, allowed], dim=1)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """Masked attention of one sample.

    q [Lq, Hq, D], k/v [Lk, Hkv, D], mask bool [Lq, Lk] or None (all visible) -> [Lq, Hq, D].
    Works on CPU (batched matmuls) and CUDA (torch SDPA kernels) and supports backward.
    """
    qh = q.transpose(0, 1)  # [Hq, Lq, D]
    kh = k.transpose(0, 1)  # [Hkv, Lk, D]; query head i uses kv head i // (Hq / Hkv)
    vh = v.transpose(0, 1)
    if q.device.type == "cpu":  # in blocks of query rows when the scores exceed BLOCK_SCORES
        g, rows = q.shape[1] // k.shape[1], block_rows(q.shape[1], k.shape[0])
        outs = []
        for start in range(0, q.shape[0], rows):
            stop = min(start + rows, q.shape[0])
            bias = None if mask is None else additive_mask(mask[start:stop], g, q.dtype)
            outs.append(_bmm_attention(qh[:, start:stop], kh, vh, bias, scale))
        return (torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]).transpose(0, 1)
    gqa = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=gqa
    )  # [Hq, Lq, D]
    return out.transpose(0, 1)


def _bmm_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float | None
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with plain batched matmuls: q [Hq, Lq, D], k/v [Hkv, Lk, D], bias the
    additive mask [G*Lq, Lk] (`SampleLayout.bias`) or None.

    On CPU this is faster than torch's SDPA kernel for small models, in training and in the short query blocks
    of cached inference (scripts/bench_train_kernels.py; figures in docs/benchmarks.md). Query heads are
    grouped per key/value head instead of repeating keys (grouped-query attention); the mask enters as the
    additive input of one `baddbmm`, so backward has no masking op to undo.
    """
    hq, lq, d = q.shape
    hkv = k.shape[0]
    g = hq // hkv
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(hkv, g * lq, d)  # [Hkv, G*Lq, D]: the G query heads sharing one kv head, stacked
    if bias is None:
        scores = torch.bmm(qg, k.transpose(1, 2)) * scale  # [Hkv, G*Lq, Lk]
    else:
        scores = torch.baddbmm(bias, qg, k.transpose(1, 2), alpha=scale)  # bias broadcast over Hkv
    probs = scores.softmax(-1)
    return torch.bmm(probs, v).view(hq, lq, d)  # [Hq, Lq, D]


def attend_packed_sdpa(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    layouts: list[SampleLayout],
    past: list[tuple[torch.Tensor, torch.Tensor] | None],
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over a pack of samples, each with its own cached prefix.

    q [N, Hq, D]; k_new/v_new [N, Hkv, D] (the new tokens' keys/values, already normed and rotated);
    past[i] = (k [Lp_i, Hkv, D], v [Lp_i, Hkv, D]) or None; returns [N, Hq, D].
    Samples are processed one by one (a per-sample loop was the fastest CPU variant measured here and keeps
    the dense mask at Lq x Lk per sample instead of N x N). On CPU a sample whose scores fit in `BLOCK_SCORES`
    uses an additive bias built once and shared by every layer (`SampleLayout.bias`); a longer one runs in
    blocks of query rows (`_blocked_attention`), never holding a mask over the whole sample. On CUDA the
    boolean mask goes to torch's SDPA.
    """
    outs = []
    start = 0
    for layout, kv in zip(layouts, past):
        n = layout.length
        qs = q[start : start + n]
        ks, vs = k_new[start : start + n], v_new[start : start + n]
        if kv is not None:
            ks = torch.cat([kv[0], ks], dim=0)  # [Lp + Lq, Hkv, D]
            vs = torch.cat([kv[1], vs], dim=0)
        if q.device.type == "cpu":
            rows = block_rows(q.shape[1], ks.shape[0])
            qh, kh, vh = qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1)
            if rows >= n:  # one block: the additive mask, built once per sample for every layer
                bias = (
                    None
                    if _all_visible(layout)
                    else layout.bias(q.device, q.shape[1] // ks.shape[1], q.dtype)
                )
                out = _bmm_attention(qh, kh, vh, bias, scale)
            else:
                out = _blocked_attention(qh, kh, vh, None if _all_visible(layout) else layout, rows, scale)
            outs.append(out.transpose(0, 1))  # [Lq, Hq, D]
        else:
            outs.append(
                sdpa_attention(qs, ks, vs, None if _all_visible(layout) else layout.mask(q.device), scale)
            )
        start += n
    return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]


def _blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SampleLayout | None,
    rows: int,
    scale: float | None,
) -> torch.Tensor:
    """`_bmm_attention` of one sample, `rows` query rows at a time: q [Hq, Lq, D], k/v [Hkv, Lp + Lq, D] ->
    [Hq, Lq, D]. Each block builds its own mask rows (`SampleLayout.mask_rows`) and reads only the keys they
    reach, so memory is O(rows x Lk); `layout` None means every query sees every key (no mask)."""
    g = q.shape[0] // k.shape[0]
    outs = []
    for start in range(0, q.shape[1], rows):
        stop = min(start + rows, q.shape[1])
        if layout is None:
            bias, keys = None, k.shape[1]
        else:
            mask = layout.mask_rows(start, stop, q.device)  # [rows, Lp + reach]
            bias, keys = additive_mask(mask, g, q.dtype), mask.shape[1]
        outs.append(_bmm_attention(q[:, start:stop], k[:, :keys], v[:, :keys], bias, scale))
    return torch.cat(outs, dim=1)


def _all_visible(layout: SampleLayout) -> bool:
    """Every query sees every key (a single full split): no mask, and SDPA picks its fastest kernel."""
    return len(layout.splits) == 1 and layout.splits[0].mode != "causal"
