"""The training step's kernels on CPU: the previous implementation beside the current one, in one run.

    python scripts/bench_train_kernels.py [--repeats 30] [--samples 4] [--length 411]

Shapes are the gridworld recipe's (scratch-deep: hidden 128, 4 query heads and 2 key/value heads of 32, packs
of ~4 samples of ~411 tokens, about a sixth of them VAE rows). Each row times forward + backward (median of
`--repeats`) and prints the ratio previous / current:

- attention of one sample: boolean mask + `masked_fill` + softmax (previous) vs the additive mask as the input
  of one `baddbmm` (current); torch's SDPA kernel for reference;
- one decoder layer: expert routing by gathering and scattering rows around every sub-block (previous: 9
  gathers and 9 `index_put` scatters per layer, whose backward is a scatter-add) vs the residual stream kept in
  expert order (current: one permutation each way around attention), with the previous attention inside;
- AdamW over the preset's parameters: `foreach` (previous) vs `fused` (current).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from worldbagel.model.attention import SampleLayout, Split, _bmm_attention
from worldbagel.model.qwen2_mot import Qwen2MoTDecoderLayer, Routing, apply_rope
from worldbagel.train.presets import build_preset


def timed(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def masked_fill_attention(q, k, v, mask, scale):
    """The previous CPU kernel: q [Hq, Lq, D], k/v [Hkv, Lk, D], mask bool [Lq, Lk]."""
    hq, lq, d = q.shape
    hkv = k.shape[0]
    g = hq // hkv
    scores = torch.bmm(q.reshape(hkv, g * lq, d), k.transpose(1, 2)) * scale
    scores = scores.view(hkv, g, lq, -1).masked_fill(~mask, float("-inf")).view(hkv, g * lq, -1)
    return torch.bmm(scores.softmax(-1), v).view(hq, lq, d)


def scatter_apply(x, f_und, f_gen, routing: Routing):
    """The previous routing of one sub-block: gather each expert's rows, scatter the outputs back."""
    yu, yg = f_und(x[routing.und_idx]), f_gen(x[routing.gen_idx])
    out = yu.new_empty((routing.n, *yu.shape[1:]))
    out[routing.und_idx] = yu
    out[routing.gen_idx] = yg
    return out


def previous_layer(layer: Qwen2MoTDecoderLayer, x, cos, sin, routing: Routing, layouts):
    """The previous layer forward in packed order (every sub-block routed by `scatter_apply`)."""
    at, n, d = layer.self_attn, x.shape[0], layer.self_attn.head_dim
    h = scatter_apply(x, layer.input_layernorm, layer.input_layernorm_moe_gen, routing)
    q = scatter_apply(h, at.q_proj, at.q_proj_moe_gen, routing).view(n, at.num_heads, d)
    k = scatter_apply(h, at.k_proj, at.k_proj_moe_gen, routing).view(n, at.num_kv_heads, d)
    v = scatter_apply(h, at.v_proj, at.v_proj_moe_gen, routing).view(n, at.num_kv_heads, d)
    q = apply_rope(scatter_apply(q, at.q_norm, at.q_norm_moe_gen, routing), cos, sin)
    k = apply_rope(scatter_apply(k, at.k_norm, at.k_norm_moe_gen, routing), cos, sin)
    outs, start = [], 0
    for lay in layouts:
        sl = slice(start, start + lay.length)
        qs, ks, vs = (t[sl].transpose(0, 1) for t in (q, k, v))
        outs.append(masked_fill_attention(qs, ks, vs, lay.mask("cpu"), d**-0.5).transpose(0, 1))
        start += lay.length
    attn = torch.cat(outs).reshape(n, -1)
    x = x + scatter_apply(attn, at.o_proj, at.o_proj_moe_gen, routing)
    h = scatter_apply(x, layer.post_attention_layernorm, layer.post_attention_layernorm_moe_gen, routing)
    return x + scatter_apply(h, layer.mlp, layer.mlp_moe_gen, routing)


def sample_layout(length: int) -> list[Split]:
    """A recipe-like sample: instruction text, clean ViT + VAE frame, action/outcome text, noisy target."""
    text = length - 16 - 2 * 66
    return [
        Split(text // 2, "causal"),
        Split(16, "full"),
        Split(66, "full"),
        Split(text - text // 2, "causal"),
        Split(66, "noise"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--length", type=int, default=411)
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_preset("scratch-deep", seed=0).model
    layer = model.language_model.model.layers[0]
    cfg = model.config.llm
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rows = []

    # attention of one sample
    lay = SampleLayout(sample_layout(args.length))
    q = torch.randn(hq, lay.length, d, requires_grad=True)
    k = torch.randn(hkv, lay.length, d, requires_grad=True)
    v = torch.randn(hkv, lay.length, d, requires_grad=True)
    mask, bias = lay.mask("cpu"), lay.bias("cpu", hq // hkv, torch.float32)
    old = timed(lambda: masked_fill_attention(q, k, v, mask, d**-0.5).sum().backward(), args.repeats)
    new = timed(lambda: _bmm_attention(q, k, v, bias, None).sum().backward(), args.repeats)
    kr, vr = k.repeat_interleave(hq // hkv, 0), v.repeat_interleave(hq // hkv, 0)
    ref = timed(
        lambda: F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask).sum().backward(), args.repeats
    )
    rows.append((f"attention, one sample of {lay.length} tokens", old, new, f"torch SDPA {ref * 1e3:.2f} ms"))

    # one decoder layer over a pack
    layouts = [SampleLayout(sample_layout(args.length)) for _ in range(args.samples)]
    # the two 66-token splits of each sample (the clean and the noisy frame) are VAE rows
    gen = torch.cat([torch.full((s.length,), s.length == 66) for lay in layouts for s in lay.splits])
    routing = Routing.from_mask(gen)
    n = gen.numel()
    x = torch.randn(n, cfg.hidden_size, requires_grad=True)
    cos, sin = model.language_model.model.rotary_emb(torch.arange(n), torch.float32)
    old = timed(lambda: previous_layer(layer, x, cos, sin, routing, layouts).sum().backward(), args.repeats)

    def current() -> None:
        out, _ = layer(routing.to_experts(x), cos, sin, routing, layouts, [None] * len(layouts))
        routing.to_packed(out).sum().backward()

    new = timed(current, args.repeats)
    rows.append((f"decoder layer, {len(layouts)} samples, {n} tokens ({int(gen.sum())} VAE)", old, new, ""))

    # AdamW over the preset's parameters
    params = [t for t in model.parameters() if t.requires_grad]
    for t in params:
        t.grad = torch.randn_like(t)
    foreach = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    old, new = timed(foreach.step, args.repeats), timed(fused.step, args.repeats)
    rows.append(
        (f"AdamW step, {len(params)} tensors, {sum(t.numel() for t in params) / 1e6:.2f} M", old, new, "")
    )

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward, median of {args.repeats}"
    )
    print("| kernel | previous ms | current ms | previous / current | note |")
    print("|---|---|---|---|---|")
    for name, old, new, note in rows:
        print(f"| {name} | {old * 1e3:.2f} | {new * 1e3:.2f} | {old / new:.2f} | {note} |")


if __name__ == "__main__":
    main()
