"""Inference benchmarks: KV-cache scaling, batched vs sequential CFG, forked candidates vs independent contexts.

    python scripts/bench_inference.py [--preset fixture|small|both] [--steps 4] [--repeats 3]

Every figure is measured in this one run on this machine; the printed ratios are what docs/benchmarks.md
records. `fixture` is tests/fixtures/bagel-tiny (hidden 64); `small` is a random-weight model of the same
architecture (hidden 256, 4 layers) at 128 px frames.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from worldbagel.inference.context import add_segment
from worldbagel.inference.generate import ImageRequest, generate_images
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.model.bagel import Bagel
from worldbagel.model.configuration import BagelConfig, LLMConfig, ViTConfig
from worldbagel.model.tokenizer import load_tokenizer
from worldbagel.model.transforms import ImageTransform
from worldbagel.model.vae import FluxVAE

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bagel-tiny"


def small_pipeline() -> BagelPipeline:
    base = BagelConfig.from_folder(FIXTURE)
    cfg = BagelConfig(
        llm=LLMConfig(
            vocab_size=base.llm.vocab_size,
            hidden_size=256,
            intermediate_size=704,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        vit=ViTConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=2),
        vae=base.vae,
    )
    torch.manual_seed(0)
    model = Bagel(cfg)
    model.init_weights()
    vae = FluxVAE.from_config(cfg.vae)
    return BagelPipeline(
        model, vae, load_tokenizer(FIXTURE), ImageTransform(128, 64, 16), ImageTransform(112, 56, 14)
    )


def fixture_pipeline() -> BagelPipeline:
    return BagelPipeline.from_pretrained(
        FIXTURE, vae_transform=ImageTransform(64, 32, 16), vit_transform=ImageTransform(56, 28, 14)
    )


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def history(pipe: BagelPipeline, frames: int, side: int):
    rng = np.random.RandomState(0)
    ctx = pipe.new_context()
    for i in range(frames):
        ctx.add_image((rng.rand(side, side, 3) * 255).astype(np.uint8)).add_text(f"move forward {i % 3}")
    return ctx


def predict_cached(pipe, ctx, grid, cfg):
    noise = torch.randn(
        grid[0] * grid[1], pipe.model.config.patch_latent_dim, generator=torch.Generator().manual_seed(0)
    )
    generate_images([ImageRequest(ctx, None, None, noise)], grid, cfg)


def predict_uncached(pipe, ctx, grid, cfg):
    """The same prediction when nothing is cached: every denoising step re-runs the whole prefix."""
    x = torch.randn(grid[0] * grid[1], pipe.model.config.patch_latent_dim)
    from worldbagel.inference.sampler import flow_schedule

    ts = flow_schedule(cfg.num_steps, cfg.shift)
    for i in range(cfg.num_steps - 1):
        b = pipe.builder()
        for seg in ctx.segments:
            add_segment(b, seg, 0)
        b.add_vae_image(x, grid, t=float(ts[i]), noisy=True)
        seq = b.build()
        with torch.no_grad():
            h, _ = pipe.model.forward_packed(seq)
            v = pipe.model.velocity(h[seq.noisy_vae_idx])
        x = x - v * (ts[i] - ts[i + 1])


def bench(
    name: str, pipe: BagelPipeline, side: int, steps: int, repeats: int, console: Console
) -> list[tuple]:
    grid = pipe.latent_grid(side, side)
    nocfg = SamplerConfig(num_steps=steps, cfg_text_scale=1.0, cfg_img_scale=1.0)
    rows = []
    cached, uncached = {}, {}
    for n in (1, 8, 32):
        ctx = history(pipe, n, side)
        cached[n] = timed(lambda ctx=ctx: predict_cached(pipe, ctx, grid, nocfg), repeats)
        uncached[n] = timed(lambda ctx=ctx: predict_uncached(pipe, ctx, grid, nocfg), max(1, repeats - 1))
        rows.append(
            (
                name,
                f"frame after {n} ctx frames",
                f"{cached[n] * 1e3:.1f} ms cached",
                f"{uncached[n] * 1e3:.1f} ms recomputed",
                f"{uncached[n] / cached[n]:.2f}x",
            )
        )
    rows.append(
        (
            name,
            "cache scaling step32/step1",
            f"{cached[32] / cached[1]:.2f} (goal <= 1.3)",
            f"{uncached[32] / uncached[1]:.2f} recomputed",
            "",
        )
    )

    ctx = history(pipe, 4, side)
    rng = np.random.RandomState(1)
    ic = pipe.interleave_contexts([(rng.rand(side, side, 3) * 255).astype(np.uint8), "turn left 30 degrees"])
    noise = torch.randn(grid[0] * grid[1], pipe.model.config.patch_latent_dim)
    req = ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, noise)
    cfg_b = SamplerConfig(num_steps=steps, cfg_interval=(0.0, 1.0), batch_cfg=True)
    cfg_s = SamplerConfig(num_steps=steps, cfg_interval=(0.0, 1.0), batch_cfg=False)
    tb = timed(lambda: generate_images([req], grid, cfg_b), repeats)
    ts_ = timed(lambda: generate_images([req], grid, cfg_s), repeats)
    rows.append(
        (
            name,
            "3-branch CFG",
            f"{tb * 1e3:.1f} ms batched",
            f"{ts_ * 1e3:.1f} ms sequential",
            f"{ts_ / tb:.2f}x (goal >= 1.5)",
        )
    )

    n_cand = 8
    actions = [f"move forward {i}" for i in range(n_cand)]

    def forked():
        branches = [ctx.fork().add_text(a) for a in actions]
        generate_images([ImageRequest(b, None, None, noise) for b in branches], grid, nocfg)

    def independent():
        for a in actions:
            c = history(pipe, 4, side).add_text(a)
            generate_images([ImageRequest(c, None, None, noise)], grid, nocfg)

    tf = timed(forked, repeats)
    ti = timed(independent, max(1, repeats - 1))
    rows.append(
        (
            name,
            f"{n_cand} candidates from one prefix",
            f"{tf * 1e3:.1f} ms forked+batched",
            f"{ti * 1e3:.1f} ms independent",
            f"{ti / tf:.2f}x",
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=["fixture", "small", "both"], default="both")
    ap.add_argument("--steps", type=int, default=4, help="flow grid points (steps - 1 model calls)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    console = Console()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    if args.preset in ("fixture", "both"):
        rows += bench("fixture (64 px)", fixture_pipeline(), 64, args.steps, args.repeats, console)
    if args.preset in ("small", "both"):
        rows += bench("small (128 px)", small_pipeline(), 128, args.steps, args.repeats, console)
    table = Table(
        title=f"inference, {args.steps - 1} model calls per frame, {torch.get_num_threads()} threads"
    )
    for col in ("model", "case", "A", "B", "ratio B/A"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)


if __name__ == "__main__":
    main()
