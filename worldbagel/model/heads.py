"""The small modules that glue the ViT and the VAE latents to the LLM (spec 1.4, 3.4, 3.5).

Shape legend
    N   tokens     H   LLM hidden size     S   side of a 2-D position grid     E   ViT width
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from worldbagel.model.siglip_navit import activation


class MLPconnector(nn.Module):
    """fc1 -> activation -> fc2: ViT features [N, E] -> LLM embeddings [N, H]."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.act)(self.fc1(x)))


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid of the raw flow time t in [0, 1] (not x1000), cos first: t [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """timestep_embedding -> Linear(256, H) -> SiLU -> Linear(H, H)."""

    def __init__(self, hidden: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-k / (dim/2)), float64: pos [M] -> [M, dim]."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, side: int) -> np.ndarray:
    """DiT/MAE 2-D table [side*side, dim]; row n = r*side + c; first half encodes the column, second the row."""
    rows, cols = np.meshgrid(
        np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64), indexing="ij"
    )
    emb_col = sincos_1d(dim // 2, cols)  # [S*S, dim/2]
    emb_row = sincos_1d(dim // 2, rows)
    return np.concatenate([emb_col, emb_row], axis=1)


class PositionEmbedding(nn.Module):
    """A frozen 2-D sin-cos table stored as a parameter (it is in the official state dict), looked up by id."""

    def __init__(self, max_num_patch_per_side: int, hidden: int):
        super().__init__()
        self.max_num_patch_per_side = max_num_patch_per_side
        self.hidden_size = hidden
        self.pos_embed = nn.Parameter(torch.zeros(max_num_patch_per_side**2, hidden), requires_grad=False)
        self.reset_table()

    def reset_table(self) -> None:
        """Fill the table with the deterministic sin-cos values (skipped on the meta device)."""
        if self.pos_embed.device.type == "meta":
            return
        table = torch.from_numpy(sincos_2d(self.hidden_size, self.max_num_patch_per_side)).float()
        with torch.no_grad():
            self.pos_embed.copy_(table.to(self.pos_embed.dtype))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]
