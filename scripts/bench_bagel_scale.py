"""BAGEL-scale timings: a random-weight model of the real 7B-MoT config predicting frames and text.

    python scripts/bench_bagel_scale.py                          # CUDA, bf16, the release config (~28 GB)
    python scripts/bench_bagel_scale.py --device cuda --sizes 256,512 --context-frames 4 --repeats 2 --json out.json
    python scripts/bench_bagel_scale.py --tiny --device cpu      # the CPU twin: same code path, small shapes

Every figure is measured in this one run (docs/benchmarks.md, "BAGEL scale and GPU figures", records them). What is timed and
how: worldbagel/bench/bagel_scale.py (`measure_scale`); the tokenizer is the test fixture's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from worldbagel.bench.bagel_scale import ScaleOptions, measure_scale
from worldbagel.errors import WorldBagelError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"


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
    options = ScaleOptions(
        device=args.device,
        dtype=args.dtype,
        sizes=tuple(int(s) for s in args.sizes.split(",")),
        context_frames=args.context_frames,
        steps=args.steps,
        text_tokens=args.text_tokens,
        repeats=args.repeats,
        batch_cfg=args.batch_cfg,
        tiny=args.tiny,
    )
    try:
        rows = measure_scale(options, FIXTURE)
    except WorldBagelError as exc:
        raise SystemExit(str(exc)) from None
    dtype = options.torch_dtype
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
