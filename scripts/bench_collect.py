"""`collect` throughput: index.json rewritten after every episode vs in batches (the default).

    python scripts/bench_collect.py                      # 3,000 two-step gridworld episodes, both ways
    python scripts/bench_collect.py --episodes 8000 --max-steps 2

Both collections record the same episodes (same seeds) into fresh temporary folders in this one run; the
only difference is `worldbagel.data.collect.INDEX_EVERY_S` (0: a locked read-modify-write of the whole
index after each episode, O(episodes) each; default: one every 2 s and at the end). docs/benchmarks.md
records the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import worldbagel.data.collect as collect_module
from worldbagel.data.trajectory import read_index
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env


def timed_collect(root: Path, episodes: int, max_steps: int, index_every_s: float) -> float:
    collect_module.INDEX_EVERY_S = index_every_s
    env_factory = partial(build_env, "WorldBagel/GridWorld-v0", {})
    policy_factory = partial(make_policy, "random", seed=0)
    start = time.perf_counter()
    collect_module.collect(
        env_factory, policy_factory, root, episodes, env_id="WorldBagel/GridWorld-v0", max_steps=max_steps
    )
    elapsed = time.perf_counter() - start
    if len(read_index(root)) != episodes:
        raise SystemExit(f"{root}: index lists {len(read_index(root))} episodes, expected {episodes}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=3000)
    ap.add_argument("--max-steps", type=int, default=2)
    args = ap.parse_args()
    default = collect_module.INDEX_EVERY_S
    with tempfile.TemporaryDirectory() as tmp:
        each = timed_collect(Path(tmp) / "each", args.episodes, args.max_steps, 0.0)
        batched = timed_collect(Path(tmp) / "batched", args.episodes, args.max_steps, default)
    print(f"{args.episodes} episodes of <= {args.max_steps} steps (gridworld, random policy)")
    print(f"index after every episode: {each:8.1f} s  ({args.episodes / each:7.0f} episodes/s)")
    print(f"index every {default:g} s:       {batched:8.1f} s  ({args.episodes / batched:7.0f} episodes/s)")
    print(f"speedup: {each / batched:.1f}x")


if __name__ == "__main__":
    main()
