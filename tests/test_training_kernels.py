"""The fast paths of the decoder agree with plain reference code, values and gradients.

The decoder keeps its residual stream in expert order (`Routing.to_experts`), runs each expert on one slice,
stacks q/k/v and gate/up weights into one matmul, and masks attention with an additive bias in one `baddbmm`
(scripts/bench_train.py measures what each saves). The references here route every row with `torch.where` over
both experts' outputs and attend with torch's SDPA and a boolean mask.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from worldbagel.model.attention import SampleLayout, Split, _bmm_attention
from worldbagel.model.configuration import LLMConfig
from worldbagel.model.qwen2_mot import (
    Qwen2MoTDecoderLayer,
    Qwen2RotaryEmbedding,
    Routing,
    apply_rope,
    fused_linear,
)

LAYOUTS = [
    [Split(3, "causal"), Split(4, "full"), Split(2, "causal"), Split(4, "noise"), Split(1, "causal")],
    [Split(2, "causal"), Split(4, "full"), Split(3, "causal")],
]
"""Two samples of one pack: text, a clean image, text, a noisy image (first sample), text."""


def _gen_mask() -> torch.Tensor:
    rows = []
    for splits in LAYOUTS:
        for s in splits:
            rows += [s.mode != "causal"] * s.length  # image splits are VAE rows (generation expert)
    return torch.tensor(rows)


def _config(variant: str) -> LLMConfig:
    return LLMConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10_000.0,
        layer_module=variant,
    )


def test_expert_order_round_trips_and_its_gradient_is_the_inverse_gather():
    gen = _gen_mask()
    routing = Routing.from_mask(gen)
    x = torch.randn(gen.numel(), 5, requires_grad=True)
    sorted_x = routing.to_experts(x)
    assert torch.equal(sorted_x[: routing.n_und], x[~gen]) and torch.equal(sorted_x[routing.n_und :], x[gen])
    assert torch.equal(routing.to_packed(sorted_x), x)
    weight = torch.randn(gen.numel(), 5)
    (sorted_x * weight).sum().backward()
    assert torch.equal(x.grad, routing.to_packed(weight))  # d/dx of sum(x[order] * w) = w[inverse]


def test_run_applies_each_expert_to_its_rows_and_detaches_und_rows():
    gen = _gen_mask()
    routing = Routing.from_mask(gen)
    und, gen_lin = nn.Linear(5, 3), nn.Linear(5, 3)
    x = torch.randn(gen.numel(), 5, requires_grad=True)
    out = routing.to_packed(routing.run(routing.to_experts(x), und, gen_lin))
    torch.testing.assert_close(out, torch.where(gen[:, None], gen_lin(x), und(x)))
    out = routing.run(routing.to_experts(x), und, gen_lin, detach_und=True)
    out.sum().backward()
    assert und.weight.grad is None and gen_lin.weight.grad.abs().sum() > 0
    assert x.grad[~gen].abs().sum() == 0 and x.grad[gen].abs().sum() > 0


def _reference_attention(q, k, v, layouts):
    """Per sample: torch SDPA with the boolean mask, GQA by repeating keys. q [N, Hq, D], k/v [N, Hkv, D]."""
    outs, start = [], 0
    for lay in layouts:
        n = lay.length
        qs, ks, vs = (t[start : start + n].transpose(0, 1) for t in (q, k, v))
        groups = qs.shape[0] // ks.shape[0]
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=lay.mask("cpu")).transpose(0, 1))
        start += n
    return torch.cat(outs)


def _reference_layer(layer: Qwen2MoTDecoderLayer, x, gen, cos, sin, layouts):
    """The layer in packed order, every sub-block computed by both experts and picked per row."""
    at = layer.self_attn
    split, split_mlp = layer.split_all, layer.split_mlp

    def pick(module_und, module_gen, h):
        if module_gen is None:
            return module_und(h)
        return torch.where(gen.view(-1, *[1] * (h.dim() - 1)), module_gen(h), module_und(h))

    def twin(owner, name, has_twin):
        return getattr(owner, name), (getattr(owner, f"{name}_moe_gen") if has_twin else None)

    n, d = x.shape[0], at.head_dim
    h = pick(*twin(layer, "input_layernorm", split), x)
    q = pick(*twin(at, "q_proj", split), h).view(n, at.num_heads, d)
    k = pick(*twin(at, "k_proj", split), h).view(n, at.num_kv_heads, d)
    v = pick(*twin(at, "v_proj", split), h).view(n, at.num_kv_heads, d)
    q = apply_rope(pick(*twin(at, "q_norm", split), q), cos, sin)
    k = apply_rope(pick(*twin(at, "k_norm", split), k), cos, sin)
    attn = _reference_attention(q, k, v, layouts).reshape(n, -1)
    x = x + pick(*twin(at, "o_proj", split), attn)
    h = pick(*twin(layer, "post_attention_layernorm", split), x)
    return x + pick(*twin(layer, "mlp", split_mlp), h)


@pytest.mark.parametrize("variant", ["Qwen2MoTDecoderLayer", "Qwen2MoEDecoderLayer", "Qwen2DecoderLayer"])
def test_a_decoder_layer_equals_the_per_row_reference_with_gradients(variant):
    torch.manual_seed(0)
    layer = Qwen2MoTDecoderLayer(_config(variant), variant)
    for p in layer.parameters():  # norms start at 1 and biases at 0: make every weight count
        p.data.add_(0.1 * torch.randn_like(p))
    gen = _gen_mask()
    routing = Routing.from_mask(gen)
    layouts = [SampleLayout(splits) for splits in LAYOUTS]
    positions = torch.arange(gen.numel())
    cos, sin = Qwen2RotaryEmbedding(layer.self_attn.head_dim, 10_000.0)(positions, torch.float32)
    x = torch.randn(gen.numel(), 32, requires_grad=True)

    out, (k, v) = layer(routing.to_experts(x), cos, sin, routing, layouts, [None, None])
    out = routing.to_packed(out)
    ref = _reference_layer(layer, x, gen, cos, sin, layouts)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert k.shape == v.shape == (gen.numel(), 2, 8) and v.is_contiguous()

    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weight).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref * weight).sum(), [x, *layer.parameters()], allow_unused=True)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, torch.zeros_like(got) if want is None else want, atol=1e-5, rtol=1e-4)


def test_additive_bias_attention_equals_masked_sdpa_with_gradients():
    torch.manual_seed(1)
    layout = SampleLayout([Split(3, "causal"), Split(4, "noise"), Split(3, "causal")], past_len=2)
    lq, lk = layout.length, layout.length + 2
    q = torch.randn(4, lq, 8, requires_grad=True)  # [Hq, Lq, D]
    k = torch.randn(2, lk, 8, requires_grad=True)  # [Hkv, Lk, D]
    v = torch.randn(2, lk, 8, requires_grad=True)
    got = _bmm_attention(q, k, v, layout.bias("cpu", 2, torch.float32), None)
    want = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0), attn_mask=layout.mask("cpu")
    )
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    weight = torch.randn_like(want)
    for a, b in zip(
        torch.autograd.grad((got * weight).sum(), [q, k, v]),
        torch.autograd.grad((want * weight).sum(), [q, k, v]),
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert layout.bias("cpu", 2, torch.float32) is layout.bias(
        "cpu", 2, torch.float32
    )  # built once per sample


def test_fused_linear_equals_the_separate_projections_and_leaves_wrapped_ones_alone():
    torch.manual_seed(2)
    projections = [nn.Linear(6, 4), nn.Linear(6, 2, bias=False), nn.Linear(6, 3)]
    x = torch.randn(5, 6, requires_grad=True)
    fused = fused_linear(x, projections)
    separate = [p(x) for p in projections]
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b)
    params = [x, *(t for p in projections for t in p.parameters())]
    g_fused = torch.autograd.grad(sum((y**2).sum() for y in fused), params)
    g_separate = torch.autograd.grad(sum((y**2).sum() for y in separate), params)
    for a, b in zip(g_fused, g_separate):
        torch.testing.assert_close(a, b)

    class Wrapped(nn.Module):  # a LoRA-like wrapper: its own forward must run
        def __init__(self):
            super().__init__()
            self.base_layer = nn.Linear(6, 4)

        def forward(self, h):
            return self.base_layer(h) + 1.0

    wrapped = Wrapped()
    got = fused_linear(x, [wrapped, projections[0]])
    torch.testing.assert_close(got[0], wrapped(x))
