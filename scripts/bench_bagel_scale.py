"""BAGEL-scale timings: a random-weight model of the real 7B-MoT config predicting frames and text.

    python scripts/bench_bagel_scale.py                          # CUDA, bf16, the release config (~28 GB)
    python scripts/bench_bagel_scale.py --device cuda --sizes 256,512 --context-frames 4 --repeats 2 --json out.json
    python scripts/bench_bagel_scale.py --tiny --device cpu      # the CPU twin: same code path, small shapes

Every figure is measured in this one run (docs/benchmarks.md, "BAGEL scale", records them). The model is
`Bagel(BagelConfig())`, i.e. the release's shapes (Qwen2.5-7B MoT: hidden 3584, 28 layers, both experts;
SigLIP 26 layers; the FLUX autoencoder), with random weights (`init_weights`), in `--dtype` on `--device`;
the tokenizer is the test fixture's (only its special ids and byte-level text matter here). The model is
built on the meta device, cast, and only then allocated on the device (29 GB in bf16, never 58 GB of fp32).

Per frame size S (a square S x S frame): a `WorldModel` history of `--context-frames` frames (clean VAE +
ViT tokens) with an action text between them, then `predict(1, [action])` with the release sampler (50
flow steps, text CFG 4 and image CFG 2), timed with CUDA synchronisation, with the three CFG branches
batched in one forward per step (`batch_cfg`, worldbagel's default) and/or one forward per branch (the
official inferencer's way): `--batch-cfg both|on|off`. A 2-step prediction first warms kernels (and compiles
FlexAttention on CUDA). Peak memory is `torch.cuda.max_memory_allocated` around the batched prediction (CPU:
the process's peak resident set); on CUDA the row also gives the memory plan's figure for the setting
(`worldbagel.model.memory_plan`, bf16 weights + KV cache + one step's activations). Text: `generate_text` of
`--text-tokens` greedy tokens after the history (no guessed tokens, one forward per token), in tokens/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
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


def build_model(config, device: str, dtype: torch.dtype):
    """A random-weight Bagel of `config` in `dtype` on `device`: built on the meta device, cast, then allocated
    (so a 7B model never exists in fp32 on the device) and initialised there."""
    from worldbagel.model.bagel import Bagel

    torch.manual_seed(0)
    with torch.device("meta"):
        model = Bagel(config)
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    return model


def build_pipeline(tiny: bool, device: str, dtype: torch.dtype):
    """A BagelPipeline of random weights (its transforms are set per frame size by `set_size`)."""
    from worldbagel.inference.pipeline import BagelPipeline
    from worldbagel.model.configuration import BagelConfig
    from worldbagel.model.tokenizer import load_tokenizer
    from worldbagel.model.vae import FluxVAE, build_vae

    cfg = tiny_config() if tiny else BagelConfig()
    model = build_model(cfg, device, dtype)
    with torch.device(device):
        vae = FluxVAE(build_vae(cfg.vae), cfg.vae, cfg.latent_patch_size)
    return BagelPipeline(model.eval(), vae.to(dtype).eval(), load_tokenizer(FIXTURE))


def set_size(pipe, size: int) -> None:
    """S x S frames: the VAE transform keeps S, the ViT transform S rounded down to its patch size."""
    from worldbagel.model.transforms import ImageTransform

    cfg = pipe.model.config
    vit = size // cfg.vit.patch_size * cfg.vit.patch_size
    pipe.vae_transform = ImageTransform(size, size, cfg.latent_downsample)
    pipe.vit_transform = ImageTransform(vit, vit, cfg.vit.patch_size)


def planned_gib(pipe, size: int, args) -> float:
    """The memory plan's total for this setting (bf16 weights, autoencoder, KV cache, one step)."""
    from worldbagel.model.memory_plan import PlanOptions, memory_plan

    vit = pipe.vit_transform.max_image_size
    action = len(pipe.tokenizer.encode(ACTION))
    options = PlanOptions(
        height=size,
        width=size,
        context_frames=args.context_frames,
        text_tokens=action,
        vit_image_size=[vit, vit, pipe.model.config.vit.patch_size],
        tensor_parallel=1,
        gpus=1,
    )
    return memory_plan(pipe.model.config, options).setting("bf16").total / 2**30


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


ACTION = "move forward 0.25 m"


def time_prediction(wm, sampler, device: str, seed: int) -> float:
    """Seconds of one `predict(1, [action])` on a fork of `wm` with `sampler`."""
    wm.config.sampler = sampler
    branch = wm.fork()
    sync(device)
    t = time.perf_counter()
    branch.predict(1, ["turn left 30 degrees"], generator=torch.Generator().manual_seed(seed))
    sync(device)
    return time.perf_counter() - t


def measure(pipe, size: int, args, device: str) -> dict:
    """Seconds per predicted frame (release sampler, CFG branches batched and/or not), peak memory and greedy
    text tokens/s at one frame size."""
    from worldbagel.inference.generate import GenerationConfig, generate_text
    from worldbagel.world_model import WorldModel, WorldModelConfig

    set_size(pipe, size)
    release = GenerationConfig(num_steps=args.steps, cfg_text_scale=4.0, cfg_img_scale=2.0)
    config = WorldModelConfig(sampler=release, max_history_frames=args.context_frames + 1)
    wm = WorldModel(pipe, None, config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(args.context_frames)]
    wm.reset(frames[0], instruction="navigate to the kitchen")
    for f in frames[1:]:
        wm.act(ACTION).observe(f)
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.batch_cfg]
    row: dict = {}
    for batched in modes:
        sampler = replace(release, batch_cfg=batched)
        time_prediction(wm, replace(sampler, num_steps=2), device, 0)  # warm-up: kernels, allocator, compile
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds = min(time_prediction(wm, sampler, device, r + 1) for r in range(args.repeats))
        suffix = "" if batched else "_unbatched"
        row[f"seconds_per_frame{suffix}"] = seconds
        row[f"seconds_per_flow_step{suffix}"] = seconds / max(args.steps - 1, 1)
        if batched or "peak_memory_gib" not in row:
            row["peak_memory_gib"] = peak_bytes(device) / 2**30
    ctx = wm.context.fork()
    ctx.add_text("Describe what you see.")
    generate_text(ctx.fork(), max_new_tokens=4, draft=0)  # warm-up
    sync(device)
    t = time.perf_counter()
    out = generate_text(ctx, max_new_tokens=args.text_tokens, draft=0)
    sync(device)
    text_s = time.perf_counter() - t
    tokens = len(out.ids) + int(out.stopped)
    row.update(
        size=size,
        context_frames=args.context_frames,
        context_tokens=wm.context.num_tokens,
        latent_tokens=(size // pipe.model.config.latent_downsample) ** 2,
        text_tokens_per_s=tokens / text_s,
    )
    if device.startswith("cuda"):
        row["plan_gib"] = planned_gib(pipe, size, args)
    return row


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
        "--batch-cfg",
        choices=("both", "on", "off"),
        default="both",
        help="time the CFG branches batched in one forward (on), one forward each (off), or both",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="the CPU twin's small shapes instead of the release's"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --tiny --device cpu for the CPU twin)")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    rows = []
    pipe = build_pipeline(args.tiny, args.device, dtype)
    for size in [int(s) for s in args.sizes.split(",")]:
        with torch.no_grad():
            rows.append(
                {**measure(pipe, size, args, args.device), "dtype": str(dtype), "device": args.device}
            )
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BAGEL {'twin (tiny)' if args.tiny else '7B-MoT'} on {args.device}, {dtype}")
    cols = (
        "frame",
        "context tokens",
        "s / frame batched",
        "s / frame per branch",
        "peak GiB",
        "text tokens/s",
    )
    for col in cols:
        table.add_column(col, justify="right")

    def seconds(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "-"

    for r in rows:
        table.add_row(
            f"{r['size']}x{r['size']}",
            str(r["context_tokens"]),
            seconds(r, "seconds_per_frame"),
            seconds(r, "seconds_per_frame_unbatched"),
            f"{r['peak_memory_gib']:.2f}",
            f"{r['text_tokens_per_s']:.1f}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
