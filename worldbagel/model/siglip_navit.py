"""SigLIP vision tower over packed patches of several images (NaViT style), BAGEL's understanding encoder.

Shape legend
    N    packed patches of all images          P   features per patch = Pv * Pv * C (588 for Pv=14, C=3)
    E    ViT width                             Hh  heads, Dh = E / Hh
    S    position table side (vit_max_num_patch_per_side, 70 for the release)

Each image attends only within itself (bidirectional). The patch embedding is a Linear on (dy, dx, channel)
ordered patch vectors, the learned position embedding is indexed by row * S + col (spec 1.3, 3.3, 3.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worldbagel.model.attention import sdpa_attention
from worldbagel.model.configuration import ViTConfig


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """image [C, H, W] (H, W multiples of patch) -> patches [(H/p)*(W/p), p*p*C], rows then cols, (dy, dx, c)."""
    c, h, w = image.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}; resize it first")
    x = image.reshape(c, h // patch, patch, w // patch, patch)  # [C, nh, p, nw, p]
    x = x.permute(1, 3, 2, 4, 0)  # [nh, nw, p(dy), p(dx), C]
    return x.reshape((h // patch) * (w // patch), patch * patch * c)


def flattened_position_ids(nh: int, nw: int, max_side: int, interpolate: bool = False) -> torch.Tensor:
    """2-D patch grid -> flat ids row * max_side + col (extrapolate) or bucketized fractions (interpolate)."""
    if not interpolate:
        rows = torch.arange(nh)[:, None]
        cols = torch.arange(nw)[None, :]
        return (rows * max_side + cols).flatten()
    boundaries = torch.arange(1 / max_side, 1.0, 1 / max_side)
    frac_h = torch.arange(0, 1 - 1e-6, 1 / nh)[:nh]
    frac_w = torch.arange(0, 1 - 1e-6, 1 / nw)[:nw]
    bh = torch.bucketize(frac_h, boundaries, right=True)
    bw = torch.bucketize(frac_w, boundaries, right=True)
    return (bh[:, None] * max_side + bw[None, :]).flatten()


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        dim = cfg.patch_size * cfg.patch_size * cfg.num_channels
        self.patch_embedding = nn.Linear(dim, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """patches [N, P], position_ids [N] -> [N, E]."""
        x = self.patch_embedding(patches.to(self.patch_embedding.weight.dtype))
        return x + self.position_embedding(position_ids)


class SiglipAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        e = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = e // self.num_heads
        self.q_proj = nn.Linear(e, e)
        self.k_proj = nn.Linear(e, e)
        self.v_proj = nn.Linear(e, e)
        self.out_proj = nn.Linear(e, e)

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """x [N, E]; lengths: patches per image (sum N); each image attends within itself."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)  # [N, Hh, Dh]
        k = self.k_proj(x).view(n, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_heads, self.head_dim)
        scale = 1.0 / math.sqrt(self.head_dim)
        outs = [
            sdpa_attention(qi, ki, vi, None, scale)
            for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths))
        ]
        return self.out_proj(torch.cat(outs).reshape(n, -1))  # [N, E]


class SiglipMLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = cfg.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.act)(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), lengths)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, lengths)
        return x


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = SiglipVisionEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """patches [N, P], position_ids [N], lengths per image -> features [N, E]."""
        x = self.embeddings(patches, position_ids)
        x = self.encoder(x, lengths)
        return self.post_layernorm(x)


class SiglipVisionModel(nn.Module):
    """Wrapper so parameter names start with `vision_model.` as in the official checkpoint."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        return self.vision_model(patches, position_ids, lengths)


def activation(name: str):
    """The activation functions BAGEL's configs name."""
    if name in ("gelu_pytorch_tanh", "gelu_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "silu":
        return F.silu
    raise ValueError(f"unsupported activation {name!r}; expected gelu_pytorch_tanh, gelu or silu")
