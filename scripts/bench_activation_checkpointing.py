"""Peak host memory of one training forward + backward with activation checkpointing off / full / selective.

    python scripts/bench_activation_checkpointing.py                       # scratch-small, ~4k-token pack
    python scripts/bench_activation_checkpointing.py --preset scratch-tiny --tokens 2048 --repeats 1

Each mode runs in a fresh subprocess (CPU, fp32): a from-scratch preset model (random weights, random
autoencoder), one pack of toy-episode samples of about `--tokens` tokens, one untimed forward + backward (so
lazy imports, the gradients and the allocator's first growth are in the baseline), then the measured one.
"extra" is the peak resident set during the measured step (VmHWM, reset through /proc/self/clear_refs just
before it) minus the resident set just before it: the activations kept for backward plus the step's
temporaries. The children run with glibc's mmap threshold fixed at 128 KiB, so large tensors are returned to
the system when freed and the baseline does not hide reused heap. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("off", "full", "selective")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, preset: str, tokens: int) -> dict:
    import gc

    import torch

    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model import parallelize as par
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.objective import compute_losses
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset(preset, seed=0)
    model = fresh.model.train()
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    par.apply_activation_checkpointing(model, mode)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = fresh.tokenizer.special
    data = TrainingData(
        toy_episodes(max(2, tokens // 400), steps=6, annotate=True),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=2),
        DropoutConfig(0.0, 0.0, 0.0),
        PackingConfig(tokens, tokens + 512, tokens),
        shuffle=False,
    )
    batch = data.batch(0)

    def step() -> float:
        t0 = time.perf_counter()
        out = compute_losses(model, batch, data.noise_generator(0))
        out["loss"].backward()
        return time.perf_counter() - t0

    step()  # warm-up: imports, gradients, first allocations
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = _status("VmRSS")
    seconds = step()
    peak = _status("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    return {
        "mode": mode,
        "tokens": int(batch.num_tokens),
        "params": params,
        "extra_bytes": peak - base,
        "seconds": seconds,
    }


def run_child(mode: str, args) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "MALLOC_TRIM_THRESHOLD_": "131072",
    }
    cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset, "--tokens", str(args.tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"mode {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", default="scratch-small", help="from-scratch preset (worldbagel/train/presets.py)"
    )
    p.add_argument("--tokens", type=int, default=4096, help="tokens of the packed batch (about)")
    p.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per mode (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per subprocess")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.tokens)))
        return
    rows = {}
    for mode in MODES:
        runs = [run_child(mode, args) for _ in range(args.repeats)]
        rows[mode] = {
            **runs[0],
            "extra_bytes": statistics.median(r["extra_bytes"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
        }
    off = rows["off"]
    print(
        f"{args.preset}: {off['params'] / 1e6:.1f} M parameters, {off['tokens']} tokens, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print("| mode | extra MiB | vs off | forward + backward s | vs off |")
    print("|---|---|---|---|---|")
    for mode, r in rows.items():
        print(
            f"| {mode} | {r['extra_bytes'] / 2**20:.1f} | {r['extra_bytes'] / off['extra_bytes']:.2f}x | "
            f"{r['seconds']:.2f} | {r['seconds'] / off['seconds']:.2f}x |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
