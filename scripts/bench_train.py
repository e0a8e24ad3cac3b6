"""Training throughput of the from-scratch presets on CPU, with model FLOPs and the ratio to matmul speed.

    python scripts/bench_train.py [--steps 6] [--tokens 2048] [--presets scratch-tiny scratch-small]

For each preset: toy episodes (64x64 frames, 4x4 latent tokens, 4x4 ViT patches, action texts, thoughts) are
packed into batches of about `--tokens` tokens and trained with the real `Trainer` (AdamW, EMA, fp32). The
first 3 steps are warm-up; tokens/s is the median over the timed steps (and the best step). Every preset runs
`--rounds` times (the first model trained in a process is slower for a while, and the machine is shared); the
round with the higher median is reported. Model FLOPs per step are counted from the batch:
6 x (weights each row passes through: one expert per LLM layer, the ViT for ViT patches, lm_head for CE rows,
the small heads) + attention (12 x layers x width x L^2 per sample: QK^T and AV, forward + backward, dense
masked attention over the whole sample). The matmul reference is the best of several fp32 1024^3 matmuls in
the same run, so the ratio is a CPU "MFU".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

WARMUP = 3
"""Untimed first steps (first-touch allocations and kernel setup make them several times slower)."""


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def step_flops(model, batch) -> float:
    """Training FLOPs (forward + backward) of one packed batch."""
    cfg = model.config
    seq = batch.seq
    n = seq.num_tokens
    layer = model.language_model.model.layers[0]
    und = linear_params(layer.self_attn) // (2 if layer.split_all else 1) + linear_params(layer.mlp)
    llm = und * cfg.llm.num_hidden_layers  # one expert per token and layer
    flops = 6 * n * llm
    flops += 6 * seq.ce_idx.numel() * model.language_model.lm_head.weight.numel()
    heads = linear_params(model.vae2llm) + linear_params(model.time_embedder) + linear_params(model.llm2vae)
    flops += 6 * seq.vae_idx.numel() * heads
    attn_l2 = sum(length**2 for length in seq.sample_lengths)
    flops += 12 * cfg.llm.num_hidden_layers * cfg.llm.hidden_size * attn_l2
    if seq.vit_idx.numel():
        vit = linear_params(model.vit_model) + linear_params(model.connector)
        flops += 6 * seq.vit_idx.numel() * vit
        flops += 12 * cfg.vit.num_hidden_layers * cfg.vit.hidden_size * sum(v**2 for v in seq.vit_lengths)
    return float(flops)


def bench(preset: str, steps: int, tokens: int) -> dict:
    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model.bagel import count_parameters
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.loop import Trainer
    from worldbagel.train.options import OptimConfig, TrainConfig
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset(preset, seed=0)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = fresh.tokenizer.special
    data = TrainingData(
        toy_episodes(24, steps=8, annotate=True),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=2),
        DropoutConfig(),
        PackingConfig(tokens, tokens + 256, tokens),
    )
    total = steps + WARMUP
    flops = [step_flops(fresh.model, data.batch(c)) for c in range(total)]  # also warms the latent cache
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(steps=total, save_every=10**6, ema_decay=0.999, optim=OptimConfig(lr=1e-4))
        trainer = Trainer(fresh.model, data, cfg, out, fresh.vae, fresh.tokenizer)
        trainer.export = lambda: None  # not part of the step time
        trainer.save_checkpoint = lambda: None
        trainer.train()
        with open(os.path.join(out, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f]
    timed = metrics[WARMUP:]
    # per-step rates, median over the timed steps (robust to bursts of load from other processes)
    rates = sorted(m["tokens"] / m["time"] for m in timed)
    flop_rates = sorted(f / m["time"] for f, m in zip(flops[WARMUP:], timed))
    toks = sum(m["tokens"] for m in timed)
    fl = sum(flops[WARMUP:])
    params = count_parameters(fresh.model)
    return {
        "preset": preset,
        "params_M": params["total"] / 1e6,
        "tokens_per_step": toks / len(timed),
        "samples_per_step": len(data.epoch_packs(0)[0]),
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_best": rates[-1],
        "step_s": statistics.median(m["time"] for m in timed),
        "flops_per_token_M": fl / toks / 1e6,
        "achieved_gflops": statistics.median(flop_rates) / 1e9,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per preset (after the warm-up steps)")
    p.add_argument("--tokens", type=int, default=2048, help="expected tokens per packed batch")
    p.add_argument("--presets", nargs="+", default=["scratch-tiny", "scratch-small"])
    p.add_argument("--rounds", type=int, default=2, help="run every preset this often; report its best round")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| preset | params M | tokens/step | samples/step | step s (median) | tokens/s (median) | tokens/s (best) "
        "| MFLOPs/token | GFLOP/s (median) | matmul GFLOP/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    best: dict[str, tuple[dict, float]] = {}
    for _ in range(args.rounds):
        for preset in args.presets:
            before = matmul_gflops()
            r = bench(preset, args.steps, args.tokens)
            ref = max(before, matmul_gflops())  # best fp32 1024^3 matmul measured around this run
            if preset not in best or r["tokens_per_s"] > best[preset][0]["tokens_per_s"]:
                best[preset] = (r, ref)
    for preset in args.presets:
        r, ref = best[preset]
        print(
            f"| {r['preset']} | {r['params_M']:.2f} | {r['tokens_per_step']:.0f} | {r['samples_per_step']} | "
            f"{r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_best']:,.0f} | "
            f"{r['flops_per_token_M']:.1f} | {r['achieved_gflops']:.2f} | {ref:.1f} | {r['achieved_gflops'] / ref:.3f} |"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
