"""Which kernel computes the packed attention: `set_attention_backend` and the `attend_packed` dispatcher.

The two kernels compute the same masked attention (tests/test_block_mask.py checks them against each other):
`attend_packed_sdpa` (worldbagel/model/attention.py, per sample) and `attend_packed_flex`
(worldbagel/model/flex_backend.py, one FlexAttention call over the pack). The dispatcher lives apart from both
so that each kernel module depends only on the layouts (attention.py), never on the other kernel.
"""

from __future__ import annotations

import torch

from worldbagel.model.attention import SampleLayout, attend_packed_sdpa
from worldbagel.model.flex_backend import attend_packed_flex

__all__ = ["BACKENDS", "attend_packed", "set_attention_backend"]

BACKENDS = ("auto", "sdpa", "flex")
_backend = "auto"


def set_attention_backend(name: str) -> None:
    """Choose the LLM attention kernel: `sdpa` (per sample: an additive-mask `baddbmm` on CPU, masked SDPA on
    CUDA; the CPU default, supports backward everywhere), `flex` (one FlexAttention call over the whole pack;
    compiled on CUDA, eager and forward-only on CPU), or `auto` (flex on CUDA, sdpa on CPU)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"invalid attention backend={name!r}; expected one of {BACKENDS}")
    _backend = name


def attend_packed(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    layouts: list[SampleLayout],
    past: list[tuple[torch.Tensor, torch.Tensor] | None],
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over a pack of samples, each with its own cached prefix (see `attend_packed_sdpa`)."""
    backend = _backend
    if backend == "auto":
        backend = "flex" if q.is_cuda else "sdpa"
    if backend == "flex":
        return attend_packed_flex(q, k_new, v_new, layouts, past, scale)
    return attend_packed_sdpa(q, k_new, v_new, layouts, past, scale)
