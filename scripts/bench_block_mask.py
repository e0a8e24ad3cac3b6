"""Build time and peak host memory of the FlexAttention block mask on CPU: built from the layout's segments
(`flex_backend.packed_block_mask`, the library's path) vs `create_block_mask` evaluating the same `mask_mod`
densely over every (query, key) pair (the path it replaced).

    python scripts/bench_block_mask.py                              # 10k- and 38k-token packs
    python scripts/bench_block_mask.py --tokens 10000,20000 --paths segments --repeats 5

The pack is training-shaped: samples of [text 64 | ViT image 1026 (full) | text 32 | noisy VAE image 1026
(noise)], 2,148 tokens each, repeated up to the token count, the rest one causal text sample; no cache, so
queries = keys = tokens. Each (path, size) runs in a fresh process that builds a tiny mask first (torch's lazy
paths), returns freed heap (`malloc_trim`), resets its peak resident set (Linux: `/proc/self/clear_refs`) and
notes its resident set; "extra" = the peak after the first build minus that. "seconds" = the fastest of
`--repeats` builds. The dense path needs roughly tokens^2 x 11 bytes: it is skipped, with that estimate
printed, where the estimate exceeds the memory available minus `--margin-gib` (its process is also the
first the kernel's OOM killer picks). Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PATHS = ("dense", "segments")
DENSE_BYTES_PER_PAIR = 11
"""Peak bytes per (query, key) pair of `create_block_mask` with this `mask_mod` (10.5 measured at 10k)."""


def pack(tokens: int):
    from worldbagel.model.attention import SampleLayout, Split

    unit = [Split(64, "causal"), Split(1026, "full"), Split(32, "causal"), Split(1026, "noise")]
    per = sum(s.length for s in unit)
    layouts = [SampleLayout(list(unit)) for _ in range(tokens // per)]
    if tokens % per:
        layouts.append(SampleLayout([Split(tokens % per, "causal")]))
    return layouts


def rss_kib() -> tuple[int, int]:
    """(current resident set, its peak since the last reset) in KiB."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def worker(path: str, tokens: int, repeats: int) -> dict:
    """One path at one size, in this (fresh) process."""
    import ctypes
    import time

    from torch.nn.attention.flex_attention import create_block_mask

    from worldbagel.model.flex_backend import packed_block_mask, packed_mask_mod

    Path("/proc/self/oom_score_adj").write_text("1000")  # if memory runs out, this process goes first

    def build(layouts):
        if path == "segments":
            return packed_block_mask(layouts, "cpu")
        n = sum(lay.length for lay in layouts)
        return create_block_mask(packed_mask_mod(layouts, "cpu"), None, None, n, n, device="cpu")

    build(pack(300))
    layouts = pack(tokens)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before, _ = rss_kib()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        mask = build(layouts)
        times.append(time.perf_counter() - start)
        if i == 0:
            _, peak = rss_kib()
        del mask
    return {"path": path, "tokens": tokens, "seconds": min(times), "extra_mib": (peak - before) / 1024}


def available_bytes() -> int:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(fields["MemAvailable"].split()[0]) * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="10000,38000", help="comma-separated pack sizes")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {PATHS}")
    p.add_argument("--repeats", type=int, default=3, help="builds per measurement (the fastest is reported)")
    p.add_argument(
        "--margin-gib", type=float, default=4.0, help="memory left free when running the dense path"
    )
    p.add_argument("--worker", nargs=2, metavar=("PATH", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("this benchmark needs Linux (/proc/self/clear_refs resets the peak resident set)")
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        p.error(f"--paths: unknown {sorted(unknown)}; expected a comma-separated subset of {PATHS}")
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats)))
        return
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        for path in args.paths.split(","):
            need = DENSE_BYTES_PER_PAIR * tokens * tokens
            if path == "dense" and need > available_bytes() - args.margin_gib * 2**30:
                row = {"path": path, "tokens": tokens, "skipped": f"needs ~{need / 2**30:.1f} GiB"}
            else:
                repeats = 1 if path == "dense" else args.repeats
                cmd = [sys.executable, __file__, "--worker", path, str(tokens), "--repeats", str(repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{path} at {tokens} tokens failed (rc {out.returncode}):\n{out.stderr}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| tokens | path | build seconds | extra MiB |\n|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['tokens']:,} | {r['path']} | skipped: {r['skipped']} | |")
        else:
            print(f"| {r['tokens']:,} | {r['path']} | {r['seconds']:.4f} | {r['extra_mib']:,.1f} |")


if __name__ == "__main__":
    main()
