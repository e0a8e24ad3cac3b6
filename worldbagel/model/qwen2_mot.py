"""Qwen2 language model with Mixture-of-Transformers layers (BAGEL's LLM), for one device.

Shape legend
    N    packed tokens (all samples back to back)          H   hidden size
    Hq   query heads     Hkv  key/value heads              D   head dim (H / Hq)
    F    SwiGLU inner width                                V   vocabulary rows

Every token is routed to one of two experts (spec 1.2): text tokens (vision start/end markers included) and
ViT tokens use the *understanding* weights, VAE-latent tokens (clean or noisy) use the *generation* weights
(`*_moe_gen`). All tokens share one softmax attention. Module and parameter names are exactly the official
ones, so `ema.safetensors` loads without renaming.

Layer variants (config.layer_module):
    Qwen2MoTDecoderLayer  every projection, qk-norm, layer norm and MLP has a `_moe_gen` twin (the release)
    Qwen2MoEDecoderLayer  shared attention and norms, MLP twins
    Qwen2DecoderLayer     dense, no twins
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldbagel.model.attention import SampleLayout, attend_packed
from worldbagel.model.configuration import LLMConfig

LAYER_VARIANTS = ("Qwen2MoTDecoderLayer", "Qwen2MoEDecoderLayer", "Qwen2DecoderLayer")

# Past keys/values of one sample: indexable by layer -> (k [Lp, Hkv, D], v [Lp, Hkv, D]).
PastKV = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Routing:
    """Which rows of the packed sequence go to which expert."""

    gen_idx: torch.Tensor
    """Long indexes of generation-expert (VAE) rows."""
    und_idx: torch.Tensor
    """Long indexes of understanding-expert (text + ViT) rows."""
    n: int

    @classmethod
    def from_mask(cls, gen_mask: torch.Tensor) -> Routing:
        gen_mask = gen_mask.bool()
        return cls(
            gen_idx=gen_mask.nonzero().squeeze(1),
            und_idx=(~gen_mask).nonzero().squeeze(1),
            n=gen_mask.numel(),
        )

    @property
    def all_und(self) -> bool:
        return self.gen_idx.numel() == 0

    @property
    def all_gen(self) -> bool:
        return self.und_idx.numel() == 0

    def apply(
        self,
        x: torch.Tensor,
        f_und: Callable[[torch.Tensor], torch.Tensor],
        f_gen: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Apply f_und to und rows and f_gen to gen rows of x [N, ...]; f_gen None means shared weights."""
        if f_gen is None or self.all_und:
            return f_und(x)
        if self.all_gen:
            return f_gen(x)
        yu = f_und(x[self.und_idx])
        yg = f_gen(x[self.gen_idx])
        out = yu.new_empty((self.n, *yu.shape[1:]))
        out[self.und_idx] = yu
        out[self.gen_idx] = yg.to(yu.dtype)
        return out

    def detach_und(self, x: torch.Tensor) -> torch.Tensor:
        """Detach understanding rows (freeze_und training): gen rows keep their gradient."""
        if self.all_gen:
            return x
        keep = torch.zeros(self.n, dtype=torch.bool, device=x.device)
        keep[self.gen_idx] = True
        shape = (self.n,) + (1,) * (x.dim() - 1)
        return torch.where(keep.view(shape), x, x.detach())


class Qwen2RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), computed in fp32, cast back, times the weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class Qwen2MLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inner: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)
        if act != "silu":
            raise ValueError(f"unsupported hidden_act={act!r}; BAGEL's Qwen2 uses 'silu'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2RotaryEmbedding(nn.Module):
    """1-D RoPE tables: inv_freq_i = theta^(-2i/D); cos/sin of pos * inv_freq duplicated to D."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.theta**exponent)

    def reset_buffers(self) -> None:
        """Re-create inv_freq (needed after building on the meta device)."""
        device = self.inv_freq.device if self.inv_freq.device.type != "meta" else torch.device("cpu")
        self.inv_freq = self._inv_freq(device)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [N] -> cos, sin [N, D]."""
        angles = position_ids.float()[:, None] * self.inv_freq.float()[None, :].to(
            position_ids.device
        )  # [N, D/2]
        emb = torch.cat([angles, angles], dim=-1)  # [N, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D], cos/sin [N, D] (non-interleaved rotate_half convention)."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class PackedAttentionMoT(nn.Module):
    """Self-attention with q/k/v/o projections and qk-norms per expert (twins only when `split`)."""

    def __init__(self, cfg: LLMConfig, split: bool):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = d
        self.split = split
        suffixes = ["", "_moe_gen"] if split else [""]
        for s in suffixes:
            self.add_module(f"q_proj{s}", nn.Linear(h, self.num_heads * d, bias=True))
            self.add_module(f"k_proj{s}", nn.Linear(h, self.num_kv_heads * d, bias=True))
            self.add_module(f"v_proj{s}", nn.Linear(h, self.num_kv_heads * d, bias=True))
            self.add_module(f"o_proj{s}", nn.Linear(self.num_heads * d, h, bias=False))
            norm = (lambda: Qwen2RMSNorm(d, cfg.rms_norm_eps)) if cfg.qk_norm else nn.Identity
            self.add_module(f"q_norm{s}", norm())
            self.add_module(f"k_norm{s}", norm())

    def _proj(self, x: torch.Tensor, routing: Routing, name: str, heads: int) -> torch.Tensor:
        gen = getattr(self, f"{name}_moe_gen") if self.split else None
        y = routing.apply(x, getattr(self, name), gen)
        return y.view(x.shape[0], heads, self.head_dim)  # [N, heads, D]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        routing: Routing,
        layouts: list[SampleLayout],
        past: list[tuple[torch.Tensor, torch.Tensor] | None],
        detach_und: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [N, H] -> (out [N, H], (k, v) of the new tokens [N, Hkv, D], k normed and rotated)."""
        q = self._proj(x, routing, "q_proj", self.num_heads)
        k = self._proj(x, routing, "k_proj", self.num_kv_heads)
        v = self._proj(x, routing, "v_proj", self.num_kv_heads)
        q_gen = self.q_norm_moe_gen if self.split else None
        k_gen = self.k_norm_moe_gen if self.split else None
        q = routing.apply(q, self.q_norm, q_gen)
        k = routing.apply(k, self.k_norm, k_gen)
        if detach_und:
            q, k, v = routing.detach_und(q), routing.detach_und(k), routing.detach_und(v)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        attn = attend_packed(q, k, v, layouts, past, scale=1.0 / math.sqrt(self.head_dim))  # [N, Hq, D]
        attn = attn.reshape(x.shape[0], self.num_heads * self.head_dim)  # [N, Hq*D]
        o_gen = self.o_proj_moe_gen if self.split else None
        return routing.apply(attn, self.o_proj, o_gen), (k, v)


class Qwen2MoTDecoderLayer(nn.Module):
    """Pre-norm decoder layer; `variant` decides which sub-blocks have generation twins."""

    def __init__(self, cfg: LLMConfig, variant: str = "Qwen2MoTDecoderLayer"):
        super().__init__()
        if variant not in LAYER_VARIANTS:
            raise ValueError(f"invalid layer_module={variant!r}; expected one of {LAYER_VARIANTS}")
        self.split_all = variant == "Qwen2MoTDecoderLayer"
        self.split_mlp = variant != "Qwen2DecoderLayer"
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = PackedAttentionMoT(cfg, split=self.split_all)
        self.mlp = Qwen2MLP(h, cfg.intermediate_size, cfg.hidden_act)
        if self.split_mlp:
            self.mlp_moe_gen = Qwen2MLP(h, cfg.intermediate_size, cfg.hidden_act)
        self.input_layernorm = Qwen2RMSNorm(h, eps)
        self.post_attention_layernorm = Qwen2RMSNorm(h, eps)
        if self.split_all:
            self.input_layernorm_moe_gen = Qwen2RMSNorm(h, eps)
            self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(h, eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        routing: Routing,
        layouts: list[SampleLayout],
        past: list[tuple[torch.Tensor, torch.Tensor] | None],
        detach_und: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        norm_gen = self.input_layernorm_moe_gen if self.split_all else None
        h = routing.apply(x, self.input_layernorm, norm_gen)
        attn, kv = self.self_attn(h, cos, sin, routing, layouts, past, detach_und)
        if detach_und:
            attn = routing.detach_und(attn)
        x = x + attn
        norm_gen = self.post_attention_layernorm_moe_gen if self.split_all else None
        h = routing.apply(x, self.post_attention_layernorm, norm_gen)
        mlp = routing.apply(h, self.mlp, self.mlp_moe_gen if self.split_mlp else None)
        if detach_und:
            mlp = routing.detach_und(mlp)
        return x + mlp, kv


class Qwen2Model(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.config = cfg
        self.padding_idx = cfg.pad_token_id
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(
            [Qwen2MoTDecoderLayer(cfg, cfg.layer_module) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = Qwen2RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.use_moe:
            self.norm_moe_gen = Qwen2RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        routing: Routing,
        layouts: list[SampleLayout],
        past: list[PastKV | None] | None = None,
        return_kv: bool = False,
        detach_und: bool = False,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Run the decoder over a packed sequence.

        hidden [N, H] input embeddings; position_ids [N] rope positions; layouts one per sample (their
        lengths sum to N); past[i] the cached keys/values of sample i (indexable by layer) or None.
        Returns the final-normed hidden states [N, H] and, if return_kv, per layer (k, v) [N, Hkv, D] of the
        new tokens (what a cache appends).
        """
        n = sum(lay.length for lay in layouts)
        if hidden.shape[0] != n or position_ids.shape[0] != n:
            raise ValueError(
                f"packed sizes disagree: hidden has {hidden.shape[0]} rows, position_ids {position_ids.shape[0]}, "
                f"layouts sum to {n}"
            )
        past = past if past is not None else [None] * len(layouts)
        cos, sin = self.rotary_emb(position_ids, hidden.dtype)
        if detach_und:
            hidden = routing.detach_und(hidden)
        new_kv = [] if return_kv else None
        x = hidden
        for i, layer in enumerate(self.layers):
            layer_past = [p[i] if p is not None else None for p in past]
            x, kv = layer(x, cos, sin, routing, layouts, layer_past, detach_und)
            if new_kv is not None:
                new_kv.append(kv)
        norm_gen = self.norm_moe_gen if self.config.use_moe else None
        out = routing.apply(x, self.norm, norm_gen)
        if detach_und:
            out = routing.detach_und(out)
        return out, new_kv


class Qwen2ForCausalLM(nn.Module):
    """`.model` (decoder) + untied `.lm_head`."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_moe(self) -> None:
        """Copy every understanding weight into its `_moe_gen` twin (how BAGEL starts training from Qwen2.5)."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if "moe_gen" in name:
                    p.copy_(params[name.replace("_moe_gen", "")])
