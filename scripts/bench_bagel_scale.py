"""BAGEL-scale timings: a random-weight model of the real 7B-MoT config predicting frames and text.

    python scripts/bench_bagel_scale.py                          # CUDA, bf16, the release config (~28 GB)
    python scripts/bench_bagel_scale.py --sizes 256,512 --context-frames 4 --repeats 2 --json out.json
    python scripts/bench_bagel_scale.py --tiny --device cpu      # the CPU twin: same code path, small shapes

Every figure is measured in this one run (docs/benchmarks.md, "BAGEL scale", records them). The model is
`Bagel(BagelConfig())`, i.e. the release's shapes (Qwen2.5-7B MoT: hidden 3584, 28 layers, both experts;
SigLIP 26 layers; the FLUX autoencoder), with random weights (`init_weights`), in `--dtype` on `--device`;
the tokenizer is the test fixture's (only its special ids and byte-level text matter here).

Per frame size S (a square S x S frame): a `WorldModel` history of `--context-frames` frames (clean VAE +
ViT tokens) with an action text between them, then `predict(1, [action])` with the release sampler (50
flow steps, text CFG 4 and image CFG 2: three branches batched in one forward per step), timed with CUDA
synchronisation; peak memory is `torch.cuda.max_memory_allocated` around the prediction (CPU: the process's
peak resident set). Text: `generate_text` of `--text-tokens` greedy tokens after the history (no guessed
tokens, one forward per token), in tokens/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"


def tiny_config():
    """The CPU twin's shapes: the release config shrunk (same modules, same code path)."""
    from worldbagel.model.configuration import BagelConfig, LLMConfig, VAEConfig, ViTConfig

    llm = LLMConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    vit = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vae = VAEConfig(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)
    return BagelConfig(llm=llm, vit=vit, vae=vae)


def build_pipeline(tiny: bool, device: str, dtype: torch.dtype, size: int):
    """A BagelPipeline of random weights for S x S frames (VAE side S, ViT side S rounded to 14)."""
    from worldbagel.inference.pipeline import BagelPipeline
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig
    from worldbagel.model.tokenizer import load_tokenizer
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.model.vae import FluxVAE, build_vae

    cfg = tiny_config() if tiny else BagelConfig()
    torch.manual_seed(0)
    with torch.device(device):
        model = Bagel(cfg)
        model.init_weights()
        vae = FluxVAE(build_vae(cfg.vae), cfg.vae, cfg.latent_patch_size)
    model, vae = model.to(dtype).eval(), vae.to(dtype).eval()
    stride = cfg.latent_downsample
    vit = cfg.vit.patch_size
    return BagelPipeline(
        model,
        vae,
        load_tokenizer(FIXTURE),
        vae_transform=ImageTransform(size, size, stride),
        vit_transform=ImageTransform(size // vit * vit, size // vit * vit, vit),
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure(pipe, size: int, args, device: str) -> dict:
    """Seconds per predicted frame (release sampler), peak memory and greedy text tokens/s at one frame size."""
    from worldbagel.inference.generate import GenerationConfig, generate_text
    from worldbagel.world_model import WorldModel, WorldModelConfig

    sampler = GenerationConfig(num_steps=args.steps, cfg_text_scale=4.0, cfg_img_scale=2.0)
    config = WorldModelConfig(sampler=sampler, max_history_frames=args.context_frames + 1)
    wm = WorldModel(pipe, None, config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(args.context_frames)]
    wm.reset(frames[0], instruction="navigate to the kitchen")
    for f in frames[1:]:
        wm.act("move forward 0.25 m").observe(f)
    gen = torch.Generator().manual_seed(0)
    seconds = []
    for r in range(args.repeats + 1):  # round 0 warms up kernels and allocator
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        branch = wm.fork()
        sync(device)
        t = time.perf_counter()
        branch.predict(1, ["turn left 30 degrees"], generator=gen)
        sync(device)
        if r:
            seconds.append(time.perf_counter() - t)
    peak = peak_bytes(device)
    ctx = wm.context.fork()
    ctx.add_text("Describe what you see.")
    generate_text(ctx.fork(), max_new_tokens=4, draft=0)  # warm-up
    sync(device)
    t = time.perf_counter()
    out = generate_text(ctx, max_new_tokens=args.text_tokens, draft=0)
    sync(device)
    text_s = time.perf_counter() - t
    tokens = len(out.ids) + int(out.stopped)
    return {
        "size": size,
        "context_frames": args.context_frames,
        "context_tokens": wm.context.num_tokens,
        "latent_tokens": (size // pipe.model.config.latent_downsample) ** 2,
        "seconds_per_frame": min(seconds),
        "seconds_per_flow_step": min(seconds) / max(args.steps - 1, 1),
        "peak_memory_gib": peak / 2**30,
        "text_tokens_per_s": tokens / text_s,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32 (CPU default)")
    ap.add_argument("--sizes", default="256,512", help="square frame sizes in pixels")
    ap.add_argument(
        "--context-frames", type=int, default=4, help="frames in the history before the prediction"
    )
    ap.add_argument("--steps", type=int, default=50, help="flow grid points (release: 50)")
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--tiny", action="store_true", help="the CPU twin's small shapes instead of the release's"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --tiny --device cpu for the CPU twin)")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        pipe = build_pipeline(args.tiny, args.device, dtype, size)
        with torch.no_grad():
            rows.append(
                {**measure(pipe, size, args, args.device), "dtype": str(dtype), "device": args.device}
            )
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BAGEL {'twin (tiny)' if args.tiny else '7B-MoT'} on {args.device}, {dtype}")
    for col in ("frame", "context tokens", "s / frame", "s / flow step", "peak GiB", "text tokens/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['size']}x{r['size']}",
            str(r["context_tokens"]),
            f"{r['seconds_per_frame']:.3f}",
            f"{r['seconds_per_flow_step']:.4f}",
            f"{r['peak_memory_gib']:.2f}",
            f"{r['text_tokens_per_s']:.1f}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
