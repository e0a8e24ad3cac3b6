"""KV cache with shared prefixes: forking copies nothing, appending never changes a parent.

Shape legend: L cached tokens of one context, Hkv key/value heads, D head dim.

A `KVCache` is immutable: per LLM layer it holds the keys (after qk-norm and RoPE) and values of every cached
token, `[L, Hkv, D]`. `append` returns a *new* cache (the old tensors concatenated with the new tokens'), so a
fork of a context is just another reference to the same cache object, and whatever one branch appends never
reaches its parent or siblings. Only clean tokens (text, clean VAE, ViT) ever enter a cache; noisy
generation tokens never do (spec 5.8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]  # k, v: [L, Hkv, D]


@dataclass(frozen=True)
class KVCache(Sequence):
    """Per-layer (k, v) of the cached tokens; index by layer. The empty cache has no layers."""

    layers: tuple[LayerKV, ...] = ()

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[0]) if self.layers else 0

    def append(self, new: Sequence[LayerKV]) -> KVCache:
        """A new cache holding this one's tokens followed by the new tokens' per-layer (k, v) [Lnew, Hkv, D]."""
        new = tuple((k.detach(), v.detach()) for k, v in new)
        if not self.layers:
            return KVCache(new)
        if len(new) != len(self.layers):
            raise ValueError(f"cannot append {len(new)} layers to a cache of {len(self.layers)} layers")
        return KVCache(
            tuple((torch.cat([k0, k1]), torch.cat([v0, v1])) for (k0, v0), (k1, v1) in zip(self.layers, new))
        )

    def __getitem__(self, layer: int) -> LayerKV:  # type: ignore[override]
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    def __bool__(self) -> bool:
        return bool(self.layers)

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)
