"""Measure one setting's peak resident memory on the CPU, in a process of its own (tests/test_memory_plan.py).

    python tests/memory_measure.py '[{"what": "denoise", "model": "fixture", "size": 512, "vit_size": 224, "frames": 2}]'

Prints one JSON line, a list with one result per setting, measured one after the other: the bytes the
process's peak resident set grew by during the measured call (the peak is reset first through
/proc/self/clear_refs; the models of earlier settings are freed by then), and the shapes the call ran with,
so the test can ask the memory plan for the same setting. glibc is told to mmap every allocation above 64 KiB
(MALLOC_MMAP_THRESHOLD_, set by the test), so freed tensors leave the resident set at once.

what:
    denoise   one release-sampler denoising step (three CFG branches batched) after `frames` context frames
    train     one forward + backward of a LoRA (or full) training pack, with or without activation checkpointing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _peak_growth(fn) -> int:
    """Bytes the peak resident set rises above the current one while `fn()` runs."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status()["VmRSS"]
    fn()
    return _status()["VmHWM"] - before


def _model(name: str):
    """(Bagel, autoencoder, tokenizer) of the tiny fixture or a from-scratch preset, fp32."""
    if name == "fixture":
        from worldbagel.model.bagel_folder import load_bagel

        loaded = load_bagel(ROOT / "tests" / "fixtures" / "bagel-tiny")
        return loaded.model, loaded.vae, loaded.tokenizer
    from worldbagel.train.presets import build_preset

    fresh = build_preset(name, seed=0)
    return fresh.model, fresh.vae, fresh.tokenizer


def denoise(spec: dict) -> dict:
    from worldbagel.inference.generate import ImageRequest, generate_images
    from worldbagel.inference.pipeline import BagelPipeline
    from worldbagel.inference.sampler import SamplerConfig
    from worldbagel.model.transforms import ImageTransform

    model, vae, tok = _model(spec["model"])
    size, vit = spec["size"], spec["vit_size"]
    pipe = BagelPipeline(
        model.eval(),
        vae,
        tok,
        vae_transform=ImageTransform(size, size, model.config.latent_downsample),
        vit_transform=ImageTransform(vit, vit, model.config.vit.patch_size),
        max_context_tokens=1 << 20,
    )
    grid = pipe.latent_grid(size, size)
    z = model.config.patch_latent_dim
    # the step is measured, not the encoder: context frames enter as random latents of the frame's grid
    pipe.encode_vae = lambda image, sample=False: (torch.randn(grid[0] * grid[1], z), grid)
    rng = np.random.default_rng(0)
    inputs = []
    for _ in range(spec["frames"]):
        inputs += [rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "move forward"]
    with torch.no_grad():
        ic = pipe.interleave_contexts(inputs)
        req = ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, None)
        config = SamplerConfig(num_steps=2, cfg_text_scale=4.0, cfg_img_scale=2.0, batch_cfg=True)
        generate_images([req], grid, config, torch.Generator().manual_seed(0))  # warm-up
        grown = _peak_growth(lambda: generate_images([req], grid, config, torch.Generator().manual_seed(1)))
    contexts = [c.num_tokens for c in (ic.context, ic.cfg_text_context, ic.cfg_img_context)]
    return {"grown": grown, "pasts": contexts, "query": grid[0] * grid[1] + 2}


def _pack(model, spec: dict):
    """Equal samples of (text with CE, ViT image, clean VAE image, text with CE, noisy VAE image)."""
    from worldbagel.model.sequence import SequenceBuilder, SpecialIds

    cfg = model.config
    side, vside, text = spec["latent_side"], spec["vit_side"], spec["text"]
    samples = spec["samples"]
    builder = SequenceBuilder(SpecialIds(1, 2, 3, 4), ropes=[0] * samples)
    z, p = cfg.patch_latent_dim, 3 * cfg.vit.patch_size**2
    g = torch.Generator().manual_seed(0)
    for s in range(samples):
        builder.add_text(list(range(5, 5 + text)), sample=s, loss=True)
        builder.add_vit_image(torch.randn(vside * vside, p, generator=g), (vside, vside), sample=s)
        builder.add_vae_image(torch.randn(side * side, z, generator=g), (side, side), sample=s)
        builder.add_text(list(range(5, 5 + text)), sample=s, loss=True)
        builder.add_vae_image(
            torch.randn(side * side, z, generator=g), (side, side), sample=s, t=0.5, noisy=True
        )
    return builder.build()


def train(spec: dict) -> dict:
    import torch.nn.functional as F

    model, _, _ = _model(spec["model"])
    model = model.to(getattr(torch, spec.get("dtype", "float32"))).train()
    trainable = 0
    if spec["lora"]:
        from worldbagel.train.lora import inject_lora
        from worldbagel.train.options import LoraConfig

        inject_lora(model, LoraConfig(enabled=True, r=spec["rank"]))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if spec["checkpointing"]:
        from worldbagel.model.parallelize import apply_activation_checkpointing

        apply_activation_checkpointing(model)

    def step():  # a new pack each step, as in training (its layouts build their masks again)
        seq = _pack(model, spec)
        hidden, _ = model.forward_packed(seq)
        ce = F.cross_entropy(model.logits(hidden[seq.ce_idx]).float(), seq.ce_labels)
        mse = model.velocity(hidden[seq.noisy_vae_idx]).float().pow(2).mean()
        (ce + mse).backward()

    step()  # warm-up: gradients exist afterwards, as in every later training step
    grown = _peak_growth(step)
    seq = _pack(model, spec)
    return {
        "grown": grown,
        "tokens": seq.num_tokens,
        "sample_tokens": seq.sample_lengths[0],
        "vit_tokens": int(seq.vit_idx.numel()),
        "ce_tokens": int(seq.ce_idx.numel()),
        "trainable": trainable,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    measures = {"denoise": denoise, "train": train}
    print(json.dumps([measures[spec["what"]](spec) for spec in json.loads(sys.argv[1])]))
