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

from worldbagel.model.attention import SampleLayout
from worldbagel.model.attention_backend import attend_packed
from worldbagel.model.configuration import LLMConfig

LAYER_VARIANTS = ("Qwen2MoTDecoderLayer", "Qwen2MoEDecoderLayer", "Qwen2DecoderLayer")

# Past keys/values of one sample: indexable by layer -> (k [Lp, Hkv, D], v [Lp, Hkv, D]).
PastKV = Sequence[tuple[torch.Tensor, torch.Tensor]]


class _RowPermute(torch.autograd.Function):
    """x.index_select(0, order) for a permutation `order`; backward gathers with its inverse (an index_select
    too, where autograd's own backward of a gather is a scatter-add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


@dataclass
class Routing:
    """Which rows of the packed sequence go to which expert.

    Inside the decoder the residual stream is kept in *expert order* (`to_experts`): understanding rows first,
    generation rows after, each in packed order. Each expert's weights then apply to one contiguous slice, and
    only attention, which needs each sample's tokens in sequence, sees the packed order (`to_packed`).
    """

    gen_idx: torch.Tensor
    """Long indexes of generation-expert (VAE) rows."""
    und_idx: torch.Tensor
    """Long indexes of understanding-expert (text + ViT) rows."""
    n: int
    order: torch.Tensor
    """Packed row of each expert-order row: cat(und_idx, gen_idx)."""
    inverse: torch.Tensor
    """Expert-order row of each packed row (the inverse permutation)."""

    @classmethod
    def from_mask(cls, gen_mask: torch.Tensor) -> Routing:
        gen_mask = gen_mask.bool()
        gen_idx = gen_mask.nonzero().squeeze(1)
        und_idx = (~gen_mask).nonzero().squeeze(1)
        order = torch.cat([und_idx, gen_idx])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return cls(gen_idx=gen_idx, und_idx=und_idx, n=gen_mask.numel(), order=order, inverse=inverse)

    @property
    def all_und(self) -> bool:
        return self.gen_idx.numel() == 0

    @property
    def all_gen(self) -> bool:
        return self.und_idx.numel() == 0

    @property
    def n_und(self) -> int:
        return self.und_idx.numel()

    def to_experts(self, x: torch.Tensor) -> torch.Tensor:
        """Packed order [N, ...] -> expert order [N, ...]."""
        if self.all_und or self.all_gen:
            return x
        return _RowPermute.apply(x, self.order, self.inverse)

    def to_packed(self, x: torch.Tensor) -> torch.Tensor:
        """Expert order [N, ...] -> packed order [N, ...]."""
        if self.all_und or self.all_gen:
            return x
        return _RowPermute.apply(x, self.inverse, self.order)

    def run(
        self,
        x: torch.Tensor,
        f_und: Callable[..., torch.Tensor],
        f_gen: Callable[..., torch.Tensor] | None,
        *extra: torch.Tensor,
        detach_und: bool = False,
    ) -> torch.Tensor:
        """Rows of x [N, ...] in expert order through their expert: f_und(und rows, *extra und rows), f_gen
        likewise (None: shared weights, f_und on all rows). `detach_und` cuts the gradient of the und rows'
        outputs (freeze_und training: the understanding expert and its tokens stay as they are)."""
        if f_gen is None or self.all_und:
            y = f_und(x, *extra)
            return self.detach_und(y) if detach_und else y
        if self.all_gen:
            return f_gen(x, *extra)
        nu = self.n_und
        yu = f_und(x[:nu], *(e[:nu] for e in extra))
        yg = f_gen(x[nu:], *(e[nu:] for e in extra))
        if detach_und:
            yu = yu.detach()
        return torch.cat([yu, yg.to(yu.dtype)])

    def detach_und(self, x: torch.Tensor) -> torch.Tensor:
        """Detach the und rows of x [N, ...] in expert order (freeze_und training): gen rows keep their gradient."""
        if self.all_gen:
            return x
        if self.all_und:
            return x.detach()
        nu = self.n_und
        return torch.cat([x[:nu].detach(), x[nu:]])


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
        gate, up = fused_linear(x, [self.gate_proj, self.up_proj])
        return self.down_proj(F.silu(gate) * up)


def fused_linear(x: torch.Tensor, projections: Sequence[nn.Module]) -> list[torch.Tensor]:
    """[p(x) for p in projections] with one matmul when every projection is a plain nn.Linear with plain
    weights (stacked; on CPU the small model's step is bound by per-op cost). Wrapped ones (LoRA) and weights
    held as tensor subclasses (quantised weights, tensor-parallel DTensor shards) run their own forward."""
    if not all(type(p) is nn.Linear and type(p.weight) in (nn.Parameter, torch.Tensor) for p in projections):
        return [p(x) for p in projections]
    weight = torch.cat([p.weight for p in projections])  # [sum(out), in]
    biases = [p.bias for p in projections]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [b if b is not None else p.weight.new_zeros(p.out_features) for p, b in zip(projections, biases)]
        )
    y = F.linear(x, weight, bias)  # [n, sum(out)]
    return list(y.split([p.out_features for p in projections], dim=-1))


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

    def _part(self, name: str, gen: bool) -> nn.Module:
        return getattr(self, f"{name}_moe_gen" if gen and self.split else name)

    def qkv(self, h: torch.Tensor, gen: bool) -> torch.Tensor:
        """One expert's rows: normed hidden h [n, H] -> queries, keys (qk-normed) and values side by side,
        [n, (Hq + 2 Hkv) * D]."""
        n, d = h.shape[0], self.head_dim
        q, k, v = fused_linear(h, [self._part(name, gen) for name in ("q_proj", "k_proj", "v_proj")])
        q = self._part("q_norm", gen)(q.reshape(n, self.num_heads, d))  # [n, Hq, D]
        k = self._part("k_norm", gen)(k.reshape(n, self.num_kv_heads, d))  # [n, Hkv, D]
        return torch.cat([q.flatten(1), k.flatten(1), v], dim=-1)  # v [n, Hkv*D]

    def out(self, attn: torch.Tensor, gen: bool) -> torch.Tensor:
        """One expert's rows of the attention output [n, Hq*D] -> o_proj [n, H]."""
        return self._part("o_proj", gen)(attn)

    def forward(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layouts: list[SampleLayout],
        past: list[tuple[torch.Tensor, torch.Tensor] | None],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention over the packed order: qkv [N, (Hq + 2 Hkv) * D] (`qkv` rows, packed) -> (attention output
        [N, Hq*D] before o_proj, (k, v) of the new tokens [N, Hkv, D], k normed and rotated)."""
        n, d = qkv.shape[0], self.head_dim
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        q = apply_rope(q.view(n, self.num_heads, d), cos, sin)  # [N, Hq, D]
        k = apply_rope(k.view(n, self.num_kv_heads, d), cos, sin)  # [N, Hkv, D]
        v = v.reshape(n, self.num_kv_heads, d).contiguous()  # its own storage: caches keep k, v, not qkv
        attn = attend_packed(q, k, v, layouts, past, scale=1.0 / math.sqrt(d))  # [N, Hq, D]
        return attn.reshape(n, self.num_heads * d), (k, v)  # [N, Hq*D]


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

    def _head(self, x: torch.Tensor, gen: bool) -> torch.Tensor:
        """One expert's rows [n, H] -> input norm -> q, k, v [n, (Hq + 2 Hkv) * D]."""
        norm = self.input_layernorm_moe_gen if gen and self.split_all else self.input_layernorm
        return self.self_attn.qkv(norm(x), gen)

    def _tail(self, x: torch.Tensor, attn: torch.Tensor, gen: bool) -> torch.Tensor:
        """One expert's rows: residual + o_proj(attention), then residual + MLP(post-attention norm)."""
        x = x + self.self_attn.out(attn, gen)
        norm = (
            self.post_attention_layernorm_moe_gen if gen and self.split_all else self.post_attention_layernorm
        )
        mlp = self.mlp_moe_gen if gen and self.split_mlp else self.mlp
        return x + mlp(norm(x))

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
        """x [N, H] in expert order (`Routing.to_experts`) -> (x [N, H] in expert order, (k, v) [N, Hkv, D] of
        the new tokens in packed order). cos/sin [N, D] are in packed order."""
        head_gen = (lambda h: self._head(h, True)) if self.split_all else None
        qkv = routing.run(x, lambda h: self._head(h, False), head_gen, detach_und=detach_und)
        attn, kv = self.self_attn(routing.to_packed(qkv), cos, sin, layouts, past)  # packed order
        attn = routing.to_experts(attn)  # [N, Hq*D], expert order
        tail_gen = (lambda h, a: self._tail(h, a, True)) if self.split_mlp else None
        x = routing.run(x, lambda h, a: self._tail(h, a, False), tail_gen, attn, detach_und=detach_und)
        return x, kv


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
        new_kv = [] if return_kv else None
        x = routing.to_experts(hidden)  # [N, H], expert order until the final norm
        if detach_und:
            x = routing.detach_und(x)
        for i, layer in enumerate(self.layers):
            layer_past = [p[i] if p is not None else None for p in past]
            x, kv = layer(x, cos, sin, routing, layouts, layer_past, detach_und)
            if new_kv is not None:
                new_kv.append(kv)
        norm_gen = self.norm_moe_gen if self.config.use_moe else None
        out = routing.run(x, self.norm, norm_gen, detach_und=detach_und)
        return routing.to_packed(out), new_kv


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
