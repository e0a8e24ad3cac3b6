"""BAGEL-scale timings: a random-weight model of the real 7B-MoT config predicting frames and text.

    rows = measure_scale(ScaleOptions(device="cuda", sizes=(256, 512)), tokenizer_dir)
    rows = measure_scale(ScaleOptions(tiny=True, device="cpu"), tokenizer_dir)   # the CPU twin

scripts/bench_bagel_scale.py runs it from the command line (docs/benchmarks.md records its figures). The model
is `Bagel(BagelConfig())`, i.e. the release's shapes (Qwen2.5-7B MoT: hidden 3584, 28 layers, both experts;
SigLIP 26 layers; the FLUX autoencoder), with random weights (`init_weights`), in the options' dtype on their
device; the tokenizer comes from `tokenizer_dir` (only its special ids and byte-level text matter here). The
model is built on the meta device, cast, and only then allocated on the device (29 GB in bf16, never 58 GB of
fp32). `tiny=True` shrinks the config (same modules, same code path), so the timing path runs on a CPU.

Per frame size S (a square S x S frame): a `WorldModel` history of `context_frames` frames (clean VAE + ViT
tokens) with an action text between them, then `predict(1, [action])` with the release sampler (`steps` flow
grid points, text CFG 4 and image CFG 2), timed with CUDA synchronisation, with the three CFG branches batched
in one forward per step (`batch_cfg`, worldbagel's default) and/or one forward per branch (the official
inferencer's way). A 2-step prediction first warms kernels (and compiles FlexAttention on CUDA). Peak memory
is `torch.cuda.max_memory_allocated` around the batched prediction (CPU: the process's peak resident set); on
CUDA the row also gives the memory plan's figure for the setting (`worldbagel.model.memory_plan`, bf16
weights + KV cache + one step's activations). Text: `generate_text` of `text_tokens` greedy tokens after the
history (no guessed tokens, one forward per token), in tokens/s.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from worldbagel.errors import bad_argument
from worldbagel.inference.generate import generate_text
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.model.bagel import Bagel
from worldbagel.model.configuration import BagelConfig, LLMConfig, VAEConfig, ViTConfig
from worldbagel.model.memory_plan import PlanOptions, memory_plan
from worldbagel.model.tokenizer import load_tokenizer
from worldbagel.model.transforms import ImageTransform
from worldbagel.model.vae import FluxVAE, build_vae
from worldbagel.world_model import WorldModel, WorldModelConfig

ACTION = "move forward 0.25 m"
"""The action text between the history's frames."""


@dataclass
class ScaleOptions:
    """What `measure_scale` times (scripts/bench_bagel_scale.py's flags of the same names)."""

    device: str = "cuda"
    dtype: str | None = None
    """bfloat16 (the CUDA default) or float32 (the CPU default)."""
    sizes: tuple[int, ...] = (256, 512)
    """Square frame sizes in pixels."""
    context_frames: int = 4
    """Frames in the history before the prediction."""
    steps: int = 50
    """Flow grid points (release: 50)."""
    text_tokens: int = 64
    repeats: int = 2
    """Timed predictions per setting; the row keeps the fastest."""
    batch_cfg: Literal["both", "on", "off"] = "both"
    """Time the CFG branches batched in one forward (on), one forward each (off), or both."""
    tiny: bool = False
    """The CPU twin's small shapes instead of the release's."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32"))


def tiny_config():
    """The CPU twin's shapes: the release config shrunk (same modules, same code path)."""
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
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Bagel(config)
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    return model


def build_pipeline(tiny: bool, device: str, dtype: torch.dtype, tokenizer_dir: Path):
    """A BagelPipeline of random weights (its transforms are set per frame size by `set_size`)."""
    cfg = tiny_config() if tiny else BagelConfig()
    model = build_model(cfg, device, dtype)
    with torch.device(device):
        vae = FluxVAE(build_vae(cfg.vae), cfg.vae, cfg.latent_patch_size)
    return BagelPipeline(model.eval(), vae.to(dtype).eval(), load_tokenizer(tokenizer_dir))


def set_size(pipe, size: int) -> None:
    """S x S frames: the VAE transform keeps S, the ViT transform S rounded down to its patch size."""
    cfg = pipe.model.config
    vit = size // cfg.vit.patch_size * cfg.vit.patch_size
    pipe.vae_transform = ImageTransform(size, size, cfg.latent_downsample)
    pipe.vit_transform = ImageTransform(vit, vit, cfg.vit.patch_size)


def planned_gib(pipe, size: int, opts: ScaleOptions) -> float:
    """The memory plan's total for this setting (bf16 weights, autoencoder, KV cache, one step)."""
    vit = pipe.vit_transform.max_image_size
    action = len(pipe.tokenizer.encode(ACTION))
    options = PlanOptions(
        height=size,
        width=size,
        context_frames=opts.context_frames,
        text_tokens=action,
        vit_image_size=[vit, vit, pipe.model.config.vit.patch_size],
        tensor_parallel=1,
        gpus=1,
    )
    return memory_plan(pipe.model.config, options).setting("bf16").total / 2**30


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA), so a timer reads the work's time, not its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    """Peak memory so far: allocated CUDA memory, or the process's peak resident set on a CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def time_prediction(wm, sampler, device: str, seed: int) -> float:
    """Seconds of one `predict(1, [action])` on a fork of `wm` with `sampler`."""
    wm.config.sampler = sampler
    branch = wm.fork()
    sync(device)
    t = time.perf_counter()
    branch.predict(1, ["turn left 30 degrees"], generator=torch.Generator().manual_seed(seed))
    sync(device)
    return time.perf_counter() - t


def measure(pipe, size: int, opts: ScaleOptions) -> dict:
    """Seconds per predicted frame (release sampler, CFG branches batched and/or not), peak memory and greedy
    text tokens/s at one frame size."""
    device = opts.device
    set_size(pipe, size)
    release = SamplerConfig(num_steps=opts.steps, cfg_text_scale=4.0, cfg_img_scale=2.0)
    config = WorldModelConfig(sampler=release, max_history_frames=opts.context_frames + 1)
    wm = WorldModel(pipe, None, config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(opts.context_frames)]
    wm.reset(frames[0], instruction="navigate to the kitchen")
    for f in frames[1:]:
        wm.act(ACTION).observe(f)
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[opts.batch_cfg]
    row: dict = {}
    for batched in modes:
        sampler = replace(release, batch_cfg=batched)
        time_prediction(wm, replace(sampler, num_steps=2), device, 0)  # warm-up: kernels, allocator, compile
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds = min(time_prediction(wm, sampler, device, r + 1) for r in range(opts.repeats))
        suffix = "" if batched else "_unbatched"
        row[f"seconds_per_frame{suffix}"] = seconds
        row[f"seconds_per_flow_step{suffix}"] = seconds / max(opts.steps - 1, 1)
        if batched or "peak_memory_gib" not in row:
            row["peak_memory_gib"] = peak_bytes(device) / 2**30
    ctx = wm.context.fork()
    ctx.add_text("Describe what you see.")
    generate_text(ctx.fork(), max_new_tokens=4, draft=0)  # warm-up
    sync(device)
    t = time.perf_counter()
    out = generate_text(ctx, max_new_tokens=opts.text_tokens, draft=0)
    sync(device)
    text_s = time.perf_counter() - t
    tokens = len(out.ids) + int(out.stopped)
    row.update(
        size=size,
        context_frames=opts.context_frames,
        context_tokens=wm.context.num_tokens,
        latent_tokens=(size // pipe.model.config.latent_downsample) ** 2,
        text_tokens_per_s=tokens / text_s,
    )
    if device.startswith("cuda"):
        row["plan_gib"] = planned_gib(pipe, size, opts)
    return row


def measure_scale(opts: ScaleOptions, tokenizer_dir: Path) -> list[dict]:
    """One row per frame size of `opts.sizes` (see the module docstring), each with its dtype and device."""
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise bad_argument(
            "device", opts.device, "no CUDA device here (use tiny=True, device='cpu' for the CPU twin)"
        )
    dtype = opts.torch_dtype
    pipe = build_pipeline(opts.tiny, opts.device, dtype, tokenizer_dir)
    rows = []
    for size in opts.sizes:
        with torch.no_grad():
            rows.append({**measure(pipe, size, opts), "dtype": str(dtype), "device": opts.device})
        if opts.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows
