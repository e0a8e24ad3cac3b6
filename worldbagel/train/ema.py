"""Exponential moving average of the trainable weights (official: ema <- d ema + (1 - d) param after every
optimizer step, trainable parameters only; frozen weights equal the model's)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class EMA:
    """Shadow copies of trainable parameters, sharded like them under FSDP: each rank keeps the shadows of
    its own shards (DTensors), and nothing gathers them whole: sharded checkpoints save and load each rank's
    pieces (worldbagel.train.sharded_checkpoint) and the export gathers one tensor at a time."""

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in named_params if p.requires_grad}

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """ema <- decay * ema + (1 - decay) * param, i.e. ema += (1 - decay) * (param - ema), one foreach op."""
        pairs = [(self.shadow[name], p.detach()) for name, p in named_params if name in self.shadow]
        if pairs:
            shadows, params = zip(*pairs)
            torch._foreach_lerp_(list(shadows), list(params), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {missing[:3]}")
        for name, t in self.shadow.items():
            t.copy_(state[name])
