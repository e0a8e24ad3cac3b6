"""FlexAttention backend of the packed generalized-causal attention (the CUDA path).

Shape legend
    N    new (query) tokens of all samples        K   keys of all samples: per sample [cache | new]
    Hq, Hkv  query / key-value heads              D   head dim
    B    block size (`BLOCK_SIZE`)                Nq, Nk  query / key blocks: ceil(N / B), ceil(K / B)

The whole pack is one FlexAttention call. Keys are laid out sample by sample as [cached keys, new keys];
a `mask_mod` built from per-token tensors (sample id, split id, split mode, position inside the sample's
new tokens, cached-or-new flag) reproduces `build_mask` exactly: same sample only, cached keys always visible,
new keys visible if not after the query or in the query's own full/noise split, never a foreign noise split.

The `BlockMask` (which B x B tiles are empty, full, or partial) is built from the segments of the layout, not
by evaluating `mask_mod` over all N x K pairs as `create_block_mask` does (about 10 bytes per pair: the
booleans and `mask_mod`'s temporaries, 14 GiB at a 38k-token pack; docs/benchmarks.md): every tile is cut
into pieces by the segment boundaries, each piece pair's allowed-pair count has a closed form (none, all, or
a causal triangle), and the counts are summed per tile.
Work and memory are O((Nq + segments) x (Nk + segments)) at worst, in chunks; the result equals
`create_block_mask`'s tile for tile, and partial tiles still apply the exact `mask_mod`. The mask of the
latest layout is kept and reused, so the layers of a forward (and the steps of a denoising loop) share it.

On CUDA the kernel is compiled (and supports backward); on CPU it runs eagerly, forward-only, and exists
so that the CPU test suite can check it against the SDPA path.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from worldbagel.model.attention import MODES, SampleLayout

BLOCK_SIZE = 128
"""Query and key rows per FlexAttention tile: the kernel's default sparse block size, as in the official
`create_sparse_mask` (spec 4.3)."""

PAIR_CHUNK = 1 << 20
"""Most (query piece, key piece) pairs classified at once while building a block mask: bounds its temporary
memory to a few tens of MB whatever the number of segments."""

_CAUSAL, _NOISE = MODES.index("causal"), MODES.index("noise")

_compiled = None
_last_mask: tuple[tuple, BlockMask] | None = None


def _flex():
    global _compiled

    if _compiled is None:
        _compiled = (
            torch.compile(flex_attention, dynamic=True) if torch.cuda.is_available() else flex_attention
        )
    return _compiled


def _segments(layouts: list[SampleLayout]) -> tuple[dict, dict]:
    """The pack as runs of tokens, CPU long tensors of one entry per non-empty run.

    query: start row, length, sample, global split id, mode, position of its first token among its sample's
    new tokens, and `kseg` / `kfirst`: the key segment of the same split / the sample's first key segment.
    key: start row, length, sample, split id (-1 for a cache), mode (-1 for a cache), first position (0 for a
    cache, whose tokens are always visible)."""
    q_rows: list[tuple[int, ...]] = []
    k_rows: list[tuple[int, ...]] = []
    q_at = k_at = split_base = 0
    for doc, lay in enumerate(layouts):
        kfirst = len(k_rows)
        if lay.past_len:
            k_rows.append((k_at, lay.past_len, doc, -1, -1, 0))
            k_at += lay.past_len
        pos = 0
        for j, sp in enumerate(lay.splits):
            if sp.length:
                mode = MODES.index(sp.mode)
                q_rows.append((q_at, sp.length, doc, split_base + j, mode, pos, len(k_rows), kfirst))
                k_rows.append((k_at, sp.length, doc, split_base + j, mode, pos))
                q_at, k_at, pos = q_at + sp.length, k_at + sp.length, pos + sp.length
        split_base += len(lay.splits)
    q_names = ("start", "length", "doc", "split", "mode", "pos", "kseg", "kfirst")
    k_names = ("start", "length", "doc", "split", "mode", "pos")

    def table(rows, names):
        t = torch.tensor(rows, dtype=torch.long).view(-1, len(names))
        return {name: t[:, i] for i, name in enumerate(names)}

    return table(q_rows, q_names), table(k_rows, k_names)


def _token_tables(q_seg: dict, k_seg: dict, device) -> list[torch.Tensor]:
    """Per-query (sample, split, mode, position) and per-key (sample, split, mode, position, cached) tables
    that `mask_mod` indexes; a cached key has split -1, mode 0 and position 0."""

    def per_token(seg, field):
        return torch.repeat_interleave(seg[field], seg["length"])

    def positions(seg):  # a token's position among its sample's new tokens
        rows = torch.arange(int(seg["length"].sum()))
        return rows - per_token(seg, "start") + per_token(seg, "pos")

    q = [per_token(q_seg, f) for f in ("doc", "split", "mode")] + [positions(q_seg)]
    k_past = per_token(k_seg, "split") < 0
    k_mode = per_token(k_seg, "mode").clamp(min=0)
    k_pos = positions(k_seg).masked_fill(k_past, 0)
    k = [per_token(k_seg, "doc"), per_token(k_seg, "split"), k_mode, k_pos, k_past.long()]
    return [t.to(device) for t in q + k]


def _pieces(seg: dict, block: int) -> dict:
    """Each segment cut at the tile boundaries: per piece its segment, its block, and rows [lo, hi)."""
    start, stop = seg["start"], seg["start"] + seg["length"]
    first = start // block
    count = (stop - 1) // block - first + 1
    segment = torch.repeat_interleave(torch.arange(start.shape[0]), count)
    offset = torch.arange(segment.shape[0]) - torch.repeat_interleave(count.cumsum(0) - count, count)
    blk = first[segment] + offset
    lo = torch.maximum(start[segment], blk * block)
    hi = torch.minimum(stop[segment], (blk + 1) * block)
    return {"segment": segment, "block": blk, "lo": lo, "hi": hi, "count": count}


def _causal_pairs(a, b, c, d, delta):
    """Pairs (q, k) with q in [a, b), k in [c, d) and k - q <= delta (a causal split seen from itself): per
    q, clamp(q + t, 0, w) keys with t = delta + 1 - c and w = d - c, summed in closed form."""
    w, t = d - c, delta + 1 - c

    def below(n):  # sum of clamp(x, 0, w) over the integers x < n
        n = n.clamp(min=0)
        m = torch.minimum(n, w + 1)
        return m * (m - 1) // 2 + (n - m) * w

    return below(b + t) - below(a + t)


def _tile_counts(q_seg: dict, k_seg: dict, nq: int, nk: int, block: int) -> torch.Tensor:
    """Allowed (query, key) pairs per tile, [nq * nk] long.

    A query piece (a run of one split inside one query block) can only see key pieces of its own sample up to
    its own split (cache, earlier splits, its split): those pairs are enumerated, every other pair is masked.
    A pair is all visible (a cache, an earlier non-noise split, its own full/noise split), none (an earlier
    noise split), or a causal triangle (its own causal split)."""
    counts = torch.zeros(nq * nk, dtype=torch.long)
    if q_seg["start"].numel() == 0:
        return counts
    qp, kp = _pieces(q_seg, block), _pieces(k_seg, block)
    k_first = kp["count"].cumsum(0) - kp["count"]  # first piece of each key segment
    k_lo = k_first[q_seg["kfirst"]][qp["segment"]]  # per query piece: its key piece range [k_lo, k_hi)
    k_hi = (k_first + kp["count"])[q_seg["kseg"]][qp["segment"]]
    reach = k_hi - k_lo
    ends = reach.cumsum(0)
    start = 0
    while start < reach.shape[0]:
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + PAIR_CHUNK, right=True)))
        n = reach[start:stop]
        qi = torch.repeat_interleave(torch.arange(start, stop), n)
        excl = torch.repeat_interleave(n.cumsum(0) - n, n)
        ki = torch.repeat_interleave(k_lo[start:stop], n) + torch.arange(qi.shape[0]) - excl
        counts.index_add_(
            0, qp["block"][qi] * nk + kp["block"][ki], _piece_pairs(q_seg, k_seg, qp, kp, qi, ki)
        )
        start = stop
    return counts


def _piece_pairs(q_seg, k_seg, qp, kp, qi, ki) -> torch.Tensor:
    """Allowed pairs of each (query piece qi, key piece ki) of one sample, the key's segment not after
    the query's."""
    qs, ks = qp["segment"][qi], kp["segment"][ki]
    a, b, c, d = qp["lo"][qi], qp["hi"][qi], kp["lo"][ki], kp["hi"][ki]
    same = k_seg["split"][ks] == q_seg["split"][qs]
    k_mode = k_seg["mode"][ks]
    triangle = same & (k_mode == _CAUSAL)
    delta = k_seg["start"][ks] - q_seg["start"][qs]  # same split: key row - query row of one token
    pairs = torch.where(triangle, _causal_pairs(a, b, c, d, delta), (b - a) * (d - c))
    return torch.where((k_mode == _NOISE) & ~same, 0, pairs)


def _ordered(tiles: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[nq, nk] 0/1 tiles -> (per query block the number of set tiles [1, 1, nq], every key-block index
    with the set ones first, ascending [1, 1, nq, nk]), int32: `BlockMask`'s layout, in
    `create_block_mask`'s order."""
    tiles = tiles.to(torch.int32)[None, None]
    order = torch.argsort(tiles, dim=-1, descending=True, stable=True)
    return tiles.sum(-1).to(torch.int32).to(device), order.to(torch.int32).to(device)


def packed_block_mask(layouts: list[SampleLayout], device, block: int = BLOCK_SIZE) -> BlockMask:
    """The FlexAttention `BlockMask` of a pack (queries: every sample's new tokens; keys: per sample [cache |
    new]) with the `mask_mod` of the module docstring, built from the layout's segments without any N x K
    evaluation; equal to `create_block_mask(mask_mod, None, None, N, K, BLOCK_SIZE=block)`."""

    q_seg, k_seg = _segments(layouts)
    n, kk = int(q_seg["length"].sum()), int(k_seg["length"].sum())
    nq, nk = -(-n // block), -(-kk // block)
    counts = _tile_counts(q_seg, k_seg, nq, nk, block).view(nq, nk)
    full = counts == block * block  # tiles cut by the end of the pack are never full (as create_block_mask)
    partial = (counts > 0) & ~full
    return BlockMask.from_kv_blocks(
        *_ordered(partial, device),
        *_ordered(full, device),
        BLOCK_SIZE=block,
        mask_mod=_mask_mod(_token_tables(q_seg, k_seg, device)),
        seq_lengths=(n, kk),
    )


def _mask_mod(tables: list[torch.Tensor]):
    """The rules of the module docstring over the `_token_tables`, for FlexAttention's index tensors."""
    q_doc, q_split, q_mode, q_pos, k_doc, k_split, k_mode, k_pos, k_past = tables

    def mask_mod(b, h, qi, ki):
        same_doc = q_doc[qi] == k_doc[ki]
        same_split = q_split[qi] == k_split[ki]
        new_ok = (k_pos[ki] <= q_pos[qi]) | (same_split & (k_mode[ki] != 0))
        new_ok = new_ok & ~((k_mode[ki] == 2) & ~same_split)
        return same_doc & ((k_past[ki] == 1) | new_ok)

    return mask_mod


def packed_mask_mod(layouts: list[SampleLayout], device):
    """The token-level `mask_mod(b, h, q_idx, kv_idx)` of a pack (what partial tiles evaluate)."""
    return _mask_mod(_token_tables(*_segments(layouts), device))


def _block_mask(layouts: list[SampleLayout], device) -> BlockMask:
    """`packed_block_mask`, reused while consecutive calls (the layers of a forward, the steps of a denoising
    loop) have the same layout structure on the same device."""
    global _last_mask
    key = (
        str(torch.device(device)),
        tuple((lay.past_len, tuple((s.length, s.mode) for s in lay.splits)) for lay in layouts),
    )
    if _last_mask is None or _last_mask[0] != key:
        _last_mask = (key, packed_block_mask(layouts, device))
    return _last_mask[1]


def attend_packed_flex(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    layouts: list[SampleLayout],
    past: list[tuple[torch.Tensor, torch.Tensor] | None],
    scale: float | None = None,
) -> torch.Tensor:
    """Same contract as `attention.attend_packed_sdpa`: q [N, Hq, D], k/v new [N, Hkv, D] -> [N, Hq, D]."""
    ks, vs, start = [], [], 0
    for lay, kv in zip(layouts, past):
        if kv is not None:
            ks.append(kv[0])
            vs.append(kv[1])
        ks.append(k_new[start : start + lay.length])
        vs.append(v_new[start : start + lay.length])
        start += lay.length
    k = torch.cat(ks)  # [K, Hkv, D]
    v = torch.cat(vs)
    block = _block_mask(layouts, q.device)
    out = _flex()(
        q.transpose(0, 1)[None],  # [1, Hq, N, D]
        k.transpose(0, 1)[None],  # [1, Hkv, K, D]
        v.transpose(0, 1)[None],
        block_mask=block,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)  # [N, Hq, D]
