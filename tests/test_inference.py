"""Contexts, forks, batching, windows, text and image generation on the tiny fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldbagel.inference.context import add_segment, extend_batch
from worldbagel.inference.generate import (
    ImageRequest,
    generate_images,
    generate_text,
    generate_text_batch,
)
from worldbagel.inference.sampler import SamplerConfig, flow_schedule
from worldbagel.think_text import split_think

FAST = SamplerConfig(num_steps=4, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_renorm_type="text_channel")


def _uncached_logits(pipe, ctx) -> torch.Tensor:
    """Logits after `<|im_start|>` computed by ONE forward over the whole history (no cache)."""
    b = pipe.builder()
    for seg in ctx.segments:
        add_segment(b, seg, 0)
    b.add_text([pipe.special.bos], framed=False)
    with torch.no_grad():
        h, _ = pipe.model.forward_packed(b.build())
    return pipe.model.logits(h)[-1]


def test_context_step_by_step_equals_one_full_forward(tiny_pipe, frame):
    ctx = tiny_pipe.new_context().add_image(frame).add_text("go left").add_image(frame[::-1].copy())
    ctx.add_text("then right")
    out = generate_text(ctx, max_new_tokens=3, return_logits=True)
    torch.testing.assert_close(out.logits[0], _uncached_logits(tiny_pipe, ctx), atol=1e-4, rtol=1e-4)
    # positions: each image = 2 segments (VAE + ViT) = 2 rope positions; text = bos + ids + eos
    n_text = len(tiny_pipe.tokenizer.encode("go left")) + len(tiny_pipe.tokenizer.encode("then right")) + 4
    assert ctx.rope == n_text + 4


def test_fork_shares_the_cache_and_is_isolated(tiny_pipe, frame):
    parent = tiny_pipe.new_context().add_image(frame)
    before = (parent.num_tokens, parent.rope, parent.cache)
    child = parent.fork()
    assert child.cache.layers[0][0] is parent.cache.layers[0][0]  # no copy at fork time
    ref = generate_text(parent, max_new_tokens=4, return_logits=True)
    child.add_text("turn right")
    assert (parent.num_tokens, parent.rope, parent.cache) == before
    again = generate_text(parent, max_new_tokens=4, return_logits=True)
    assert again.ids == ref.ids
    torch.testing.assert_close(again.logits[0], ref.logits[0])
    assert child.num_tokens > parent.num_tokens


def test_batched_contexts_equal_one_by_one(tiny_pipe, frame):
    def make():
        a = tiny_pipe.new_context().add_text("short")
        b = tiny_pipe.new_context().add_image(frame).add_text("a longer history here")
        return a, b

    a1, b1 = make()
    a2, b2 = make()
    seg_a = [s for s in tiny_pipe.new_context().add_text("next").segments]
    seg_b = [s for s in tiny_pipe.new_context().add_image(frame).segments]
    a1.extend(seg_a)
    b1.extend(seg_b)
    extend_batch([a2, b2], [seg_a, seg_b])
    for one, batched in ((a1, a2), (b1, b2)):
        assert one.rope == batched.rope and one.num_tokens == batched.num_tokens
        for (k1, v1), (k2, v2) in zip(one.cache.layers, batched.cache.layers):
            torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-5)
    singles = [generate_text(c, max_new_tokens=4, return_logits=True) for c in (a1, b1)]
    batch = generate_text_batch([a2, b2], max_new_tokens=4, return_logits=True)
    for s, b in zip(singles, batch):
        assert s.ids == b.ids
        torch.testing.assert_close(s.logits[-1], b.logits[-1], atol=1e-4, rtol=1e-4)


def test_sampled_text_is_seeded_and_top_k_one_is_greedy(tiny_pipe, frame):
    ctx = tiny_pipe.new_context().add_image(frame)
    greedy = generate_text(ctx, max_new_tokens=5)
    topk1 = generate_text(ctx, max_new_tokens=5, do_sample=True, temperature=1.0, top_k=1)
    assert topk1.ids == greedy.ids
    s1 = generate_text(ctx, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(3))
    s2 = generate_text(ctx, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(3))
    assert s1.ids == s2.ids


def test_window_bounds_memory_and_matches_a_fresh_context(tiny_pipe, frame):
    ctx = tiny_pipe.new_context().add_text("instruction")
    sizes = []
    for step in range(12):
        ctx.add_image(frame if step % 2 else frame[:, ::-1].copy(), vit=False).add_text(f"step {step % 2}")
        ctx.window(max_groups=5, keep_first=1)
        sizes.append(ctx.cache.nbytes())
    assert ctx.num_groups == 5
    assert max(sizes[4:]) == min(sizes[4:])  # bounded: every windowed state holds the same amount
    fresh = tiny_pipe.new_context().extend(list(ctx.segments))
    torch.testing.assert_close(
        generate_text(ctx, max_new_tokens=1, return_logits=True).logits[0],
        generate_text(fresh, max_new_tokens=1, return_logits=True).logits[0],
    )
    with pytest.raises(ValueError, match="max_groups"):
        ctx.window(max_groups=1, keep_first=1)


def test_noise_never_enters_the_cache(tiny_pipe, frame):
    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    before = (ic.context.num_tokens, ic.context.rope)
    tiny_pipe.generate_image(ic, config=FAST, generator=torch.Generator().manual_seed(0), decode=False)
    assert (ic.context.num_tokens, ic.context.rope) == before


def test_official_context_layout_for_edit(tiny_pipe, frame):
    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    assert [s.kind for s in ic.context.segments] == ["vae", "vit", "text"]
    assert [s.kind for s in ic.cfg_text_context.segments] == ["vae", "vit"]
    assert [s.kind for s in ic.cfg_img_context.segments] == ["text"]
    assert ic.image_size == (64, 64)
    think = tiny_pipe.interleave_contexts(["a prompt"], think=True)
    assert [s.kind for s in think.context.segments] == ["text", "text"]
    # T2I think (spec 5.3 table): main [sys, prompt], cfg_text [sys] (forked before the prompt), cfg_img [sys, prompt]
    assert len(think.cfg_text_context.segments) == 1
    assert think.cfg_text_context.segments[0] is think.context.segments[0]
    assert think.cfg_img_context.num_tokens == think.context.num_tokens


def test_same_seed_same_image_and_noise_layouts_agree(tiny_pipe, frame):
    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    a = tiny_pipe.generate_image(ic, config=FAST, generator=torch.Generator().manual_seed(1))
    b = tiny_pipe.generate_image(ic, config=FAST, generator=torch.Generator().manual_seed(1))
    c = tiny_pipe.generate_image(ic, config=FAST, generator=torch.Generator().manual_seed(2))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    packed = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))  # [h*w, 64], h = w = 4
    spatial = tiny_pipe.vae.unpatchify(packed[None], 4, 4)[0]  # [16, 8, 8]
    out_p = tiny_pipe.generate_image(ic, config=FAST, latents=packed, decode=False)
    out_s = tiny_pipe.generate_image(ic, config=FAST, latents=spatial, decode=False)
    torch.testing.assert_close(out_p.latents, out_s.latents)


def test_batched_cfg_equals_sequential_and_batch_of_requests(tiny_pipe, frame):
    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    noise = torch.randn(16, 64, generator=torch.Generator().manual_seed(7))
    req = ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise)
    for kind in ("global", "text_channel", "channel"):
        cfg = SamplerConfig(num_steps=4, cfg_renorm_type=kind, cfg_interval=(0.0, 1.0))
        batched = generate_images([req], (4, 4), cfg)[0].latents
        seq = generate_images([req], (4, 4), SamplerConfig(**{**cfg.__dict__, "batch_cfg": False}))[0].latents
        torch.testing.assert_close(batched, seq, atol=1e-5, rtol=1e-5)
    other = tiny_pipe.interleave_contexts([frame[::-1].copy(), "move down the long corridor"])
    req2 = ImageRequest(other.context, other.cfg_text_context, other.cfg_img_context, noise.flip(0))
    both = generate_images([req, req2], (4, 4), FAST)
    alone = [generate_images([r], (4, 4), FAST)[0] for r in (req, req2)]
    for x, y in zip(both, alone):
        torch.testing.assert_close(x.latents, y.latents, atol=1e-5, rtol=1e-5)


def test_cfg_scale_one_equals_no_cfg_contexts(tiny_pipe, frame):
    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    noise = torch.randn(16, 64, generator=torch.Generator().manual_seed(9))
    off = SamplerConfig(num_steps=4, cfg_text_scale=1.0, cfg_img_scale=1.0)
    with_ctx = generate_images(
        [ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise)], (4, 4), off
    )
    no_ctx = generate_images([ImageRequest(ic.context, None, None, noise)], (4, 4), off)
    torch.testing.assert_close(with_ctx[0].latents, no_ctx[0].latents)
    on = generate_images(
        [ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise)], (4, 4), FAST
    )
    assert not torch.allclose(on[0].latents, no_ctx[0].latents)
    # an interval that excludes every step also disables guidance
    outside = SamplerConfig(**{**FAST.__dict__, "cfg_interval": (0.999, 1.0)})
    t_first_only = generate_images(
        [ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise)], (4, 4), outside
    )
    assert not torch.allclose(t_first_only[0].latents, on[0].latents)
    with pytest.raises(ValueError, match="cfg_text_context"):
        generate_images([ImageRequest(ic.context, None, None, noise)], (4, 4), FAST)


def test_generate_images_steps_with_the_samplers_euler_step(tiny_pipe, frame, monkeypatch):
    """Production sampling moves every request with `sampler.euler_step` (the integrator tests/test_sampler.py
    checks), once per request and step, with the schedule's dt; its result is what generate_images returns."""
    import worldbagel.inference.generate as generate_module

    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    noise = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    reqs = [
        ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise),
        ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise.flip(0)),
    ]
    expected = generate_images(reqs, (4, 4), FAST)
    real_step, dts = generate_module.euler_step, []

    def counting_step(x, v, dt):
        dts.append(float(dt))
        return real_step(x, v, dt)

    monkeypatch.setattr(generate_module, "euler_step", counting_step)
    got = generate_images(reqs, (4, 4), FAST)
    ts = flow_schedule(FAST.num_steps, FAST.shift)
    assert dts == [float(ts[i] - ts[i + 1]) for i in range(FAST.num_steps - 1) for _ in reqs]
    for x, y in zip(got, expected):
        assert torch.equal(x.latents, y.latents)
    monkeypatch.setattr(generate_module, "euler_step", lambda x, v, dt: real_step(x, v, 2 * dt))
    doubled = generate_images(reqs, (4, 4), FAST)
    assert not torch.allclose(doubled[0].latents, expected[0].latents)  # the returned state is the step's


def test_generated_image_can_be_reencoded_into_the_context(tiny_pipe, frame):
    ic = tiny_pipe.interleave_contexts([frame, "move up"])
    out = tiny_pipe.generate_image(ic, config=FAST, generator=torch.Generator().manual_seed(0), decode=False)
    n = ic.context.num_tokens
    ic.context.add_latents(out.latents, out.grid, vit_image=tiny_pipe.decode(out))
    assert ic.context.num_tokens == n + (16 + 2) + (16 + 2)  # clean VAE (4x4) + ViT (4x4 patches of 14 px)


def test_split_think():
    assert split_think("<think> go around the wall </think> move up") == ("go around the wall", "move up")
    assert split_think("move up") == ("", "move up")


def test_memory_stays_bounded_over_1000_appended_frames(tiny_pipe):
    ctx = tiny_pipe.new_context().add_text("instruction")
    latents = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))  # a 2x2-token frame
    sizes, ropes = [], []
    for step in range(1000):
        ctx.add_latents(latents * (1 + step % 3), (2, 2))
        if ctx.num_groups > 9:  # window with slack: re-prefill once every 4 frames
            ctx.window(max_groups=5, keep_first=1)
        sizes.append(ctx.cache.nbytes())
        ropes.append(ctx.rope)
    assert ctx.num_groups <= 9
    assert max(sizes[50:]) <= max(sizes[:50])  # the bound is reached early and never exceeded
    assert max(ropes[50:]) <= max(ropes[:50])  # positions restart on every window: no unbounded growth
