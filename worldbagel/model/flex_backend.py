"""FlexAttention backend of the packed generalized-causal attention (the CUDA path).

Shape legend
    N    new (query) tokens of all samples        K   keys of all samples: per sample [cache | new]
    Hq, Hkv  query / key-value heads              D   head dim

The whole pack is one FlexAttention call. Keys are laid out sample by sample as [cached keys, new keys];
a `mask_mod` built from per-token tensors (sample id, split id, split mode, position inside the sample's
new tokens, cached-or-new flag) reproduces `build_mask` exactly: same sample only, cached keys always visible,
new keys visible if not after the query or in the query's own full/noise split, never a foreign noise split.
On CUDA the kernel is compiled (and supports backward); on CPU it runs eagerly, forward-only, and exists
so that the CPU test suite can check it against the SDPA path.
"""

from __future__ import annotations

import torch

from worldbagel.model.attention import MODES, SampleLayout

_compiled = None


def _flex():
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled is None:
        _compiled = (
            torch.compile(flex_attention, dynamic=True) if torch.cuda.is_available() else flex_attention
        )
    return _compiled


def _token_tables(layouts: list[SampleLayout], device):
    """Per-query and per-key integer tables describing the packed layout."""
    q_doc, q_split, q_mode, q_pos = [], [], [], []
    k_doc, k_split, k_mode, k_pos, k_past = [], [], [], [], []
    split_base = 0
    for doc, lay in enumerate(layouts):
        k_doc += [doc] * lay.past_len
        k_split += [-1] * lay.past_len
        k_mode += [0] * lay.past_len
        k_pos += [0] * lay.past_len
        k_past += [1] * lay.past_len
        pos = 0
        for j, sp in enumerate(lay.splits):
            mode = MODES.index(sp.mode)
            for _ in range(sp.length):
                for lst, val in ((q_doc, doc), (q_split, split_base + j), (q_mode, mode), (q_pos, pos)):
                    lst.append(val)
                for lst, val in (
                    (k_doc, doc),
                    (k_split, split_base + j),
                    (k_mode, mode),
                    (k_pos, pos),
                    (k_past, 0),
                ):
                    lst.append(val)
                pos += 1
        split_base += len(lay.splits)

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    return [t(x) for x in (q_doc, q_split, q_mode, q_pos, k_doc, k_split, k_mode, k_pos, k_past)]


def attend_packed_flex(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    layouts: list[SampleLayout],
    past: list[tuple[torch.Tensor, torch.Tensor] | None],
    scale: float | None = None,
) -> torch.Tensor:
    """Same contract as `attention.attend_packed_sdpa`: q [N, Hq, D], k/v new [N, Hkv, D] -> [N, Hq, D]."""
    from torch.nn.attention.flex_attention import create_block_mask

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
    q_doc, q_split, q_mode, q_pos, k_doc, k_split, k_mode, k_pos, k_past = _token_tables(layouts, q.device)

    def mask_mod(b, h, qi, ki):
        same_doc = q_doc[qi] == k_doc[ki]
        same_split = q_split[qi] == k_split[ki]
        new_ok = (k_pos[ki] <= q_pos[qi]) | (same_split & (k_mode[ki] != 0))
        new_ok = new_ok & ~((k_mode[ki] == 2) & ~same_split)
        return same_doc & ((k_past[ki] == 1) | new_ok)

    n, kk = q.shape[0], k.shape[0]
    block = create_block_mask(mask_mod, None, None, n, kk, device=q.device)
    out = _flex()(
        q.transpose(0, 1)[None],  # [1, Hq, N, D]
        k.transpose(0, 1)[None],  # [1, Hkv, K, D]
        v.transpose(0, 1)[None],
        block_mask=block,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)  # [N, Hq, D]
