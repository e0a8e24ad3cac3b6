"""Peak host RAM and time of loading a BAGEL folder, on a generated 1-2 GB checkpoint of the official layout.

    python scripts/bench_load.py                    # hidden 1024, 24 layers: ~1.3 GB bf16 ema.safetensors
    python scripts/bench_load.py --layers 8         # smaller/faster

The script writes a folder in a temporary directory (random bf16 weights for a scaled-up BagelConfig, the
FLUX.1 autoencoder in fp32, the fixture's tokenizer), then loads it in fresh subprocesses and reports, per
loading mode, the peak resident set (ru_maxrss) minus the resident set just before loading, divided by the
bytes the loaded weights occupy. Modes:
    keep     Bagel.from_pretrained(dtype="keep"): bf16 stays bf16 (goal: ~1x the file)
    fp32     Bagel.from_pretrained() on CPU: cast to fp32 while reading (goal: ~1x the fp32 model)
    bundle   load_bagel(dtype="keep"): model + FLUX VAE + tokenizer
    naive    reference: Bagel(config) built normally, safetensors.torch.load_file, load_state_dict
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "bagel-tiny"

CHILD = r"""
import gc, json, resource, sys, time
import torch
import safetensors.torch
from worldbagel import Bagel
from worldbagel.model import checkpoint
from worldbagel.model.configuration import BagelConfig

mode, path, fixture = sys.argv[1], sys.argv[2], sys.argv[3]


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def load(folder):
    if mode == "keep":
        return [Bagel.from_pretrained(folder, dtype="keep")]
    if mode == "fp32":
        return [Bagel.from_pretrained(folder)]
    if mode == "bundle":
        b = checkpoint.load_bagel(folder, dtype="keep", vae_dtype="keep")
        return [b.model, b.vae]
    if mode == "naive":
        m = Bagel(BagelConfig.from_folder(folder)).to(torch.bfloat16)
        m.load_state_dict(safetensors.torch.load_file(f"{folder}/ema.safetensors"))
        return [m]
    raise SystemExit(f"unknown mode {mode}")


# warm-up on the tiny fixture: lazy imports (torch._dynamo via meta init, diffusers, transformers) are a
# constant cost, not part of what loading a big checkpoint costs
warm = load(fixture)
del warm
gc.collect()
before = rss()
t0 = time.perf_counter()
mods = load(path)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
nbytes = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
print(json.dumps(dict(mode=mode, before=before, peak=peak, nbytes=nbytes, seconds=seconds)))
"""


def make_folder(root: Path, hidden: int, layers: int, intermediate: int, vocab: int) -> Path:
    import torch

    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig, LLMConfig, VAEConfig, ViTConfig
    from worldbagel.model.vae import flux_key_shapes
    from worldbagel.model.weights_file import write_file

    cfg = BagelConfig(
        llm=LLMConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=max(1, hidden // 256),
        ),
        vit=ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6),
        vae=VAEConfig(),
    )
    folder = root / "bagel-bench"
    cfg.to_folder(folder)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Bagel(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    ema = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    write_file(folder / "ema.safetensors", ema, metadata={"format": "pt"})
    del ema
    ae = {k: torch.randn(s, generator=gen) * 0.02 for k, s in flux_key_shapes(cfg.vae).items()}
    write_file(folder / "ae.safetensors", ae, metadata={"format": "pt"})
    del ae
    for f in (
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ):
        shutil.copy(FIXTURE / f, folder / f)
    return folder


def measure(mode: str, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(folder), str(FIXTURE)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--modes", default="keep,fp32,bundle,naive")
    p.add_argument("--folder", type=Path, help="generate into (and reuse) this folder instead of a temp dir")
    args = p.parse_args()
    gb = 1024**3
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = args.folder or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        folder = root / "bagel-bench"
        if not (folder / "ae.safetensors").is_file():
            folder = make_folder(root, args.hidden, args.layers, args.intermediate, args.vocab)
        ema_bytes = (folder / "ema.safetensors").stat().st_size
        ae_bytes = (folder / "ae.safetensors").stat().st_size
        print(
            f"{folder} ready in {time.perf_counter() - t0:.1f} s: ema.safetensors "
            f"{ema_bytes / gb:.3f} GiB (bf16), ae.safetensors {ae_bytes / gb:.3f} GiB (fp32); "
            f"hidden {args.hidden}, {args.layers} MoT layers, vocab {args.vocab}"
        )
        print(
            f"{'mode':<8} {'weights GiB':>11} {'RSS before':>10} {'peak RSS':>9} {'extra GiB':>9} {'ratio':>6} {'load s':>7}"
        )
        for mode in args.modes.split(","):
            r = measure(mode, folder)
            extra = r["peak"] - r["before"]
            print(
                f"{mode:<8} {r['nbytes'] / gb:>11.3f} {r['before'] / gb:>10.3f} {r['peak'] / gb:>9.3f} "
                f"{extra / gb:>9.3f} {extra / r['nbytes']:>5.2f}x {r['seconds']:>7.2f}"
            )


if __name__ == "__main__":
    main()
