"""Steps per second of every WorldBagel env at 64x64 and 128x128, single env vs a sync vector of 4.

    python scripts/bench_envs.py                      # all families, ~2 s of stepping per cell
    python scripts/bench_envs.py --seconds 1 --only GridWorld

Random actions; episodes reset as they end (autoreset in vector envs). Construction and the first
reset are not timed; each figure is the fastest of 4 equal windows (see CHUNKS). Vector figures count env steps (4 per `step` call). MiniWorld runs without its
stop action (see NO_STOP). Habitat rows are listed as skipped unless habitat-lab + habitat-sim + the
test scenes are installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

import worldbagel.envs  # noqa: F401  (registers the ids)
from worldbagel.errors import DependencyNotInstalled

NUM_ENVS = 4
NO_STOP = {"stop_action": False}
"""MiniWorld is timed without its stop action: uniform random actions would stop every ~4 steps, so the
figures would time world generation at reset rather than stepping."""


CHUNKS = 4
"""Each measurement is split into CHUNKS windows and the fastest window is reported: on a shared
machine, other processes only ever slow a window down."""


def _best_rate(step_once, seconds: float, min_calls: int) -> float:
    best = 0.0
    for _ in range(CHUNKS):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / CHUNKS or calls < min_calls:
            calls += step_once()
        best = max(best, calls / elapsed)
    return best


def _time_single(env_id: str, kwargs: dict, seconds: float) -> float:
    env = gym.make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)

        def step_once() -> int:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
            return 1

        return _best_rate(step_once, seconds, min_calls=5)
    finally:
        env.close()


def _time_vector(env_id: str, kwargs: dict, seconds: float) -> float:
    envs = gym.make_vec(env_id, num_envs=NUM_ENVS, vectorization_mode="sync", **kwargs)
    try:
        envs.reset(seed=0)
        envs.action_space.seed(0)

        def step_once() -> int:
            envs.step(envs.action_space.sample())
            return NUM_ENVS

        return _best_rate(step_once, seconds, min_calls=3)
    finally:
        envs.close()


def _cases(video_path: Path) -> list[tuple[str, str, dict]]:
    return [
        ("GridWorld (top-down 8x8)", "WorldBagel/GridWorld-v0", {}),
        ("GridWorld (ego, r=3)", "WorldBagel/GridWorldEgo-v0", {}),
        ("MiniWorld Hallway", "WorldBagel/MiniWorld-Hallway-v0", NO_STOP),
        ("MiniWorld OneRoom", "WorldBagel/MiniWorld-OneRoom-v0", NO_STOP),
        ("MiniWorld FourRooms", "WorldBagel/MiniWorld-FourRooms-v0", NO_STOP),
        ("MiniWorld Maze (8x8 rooms)", "WorldBagel/MiniWorld-Maze-v0", NO_STOP),
        ("Habitat PointNav", "WorldBagel/Habitat-PointNav-v0", {}),
        ("Video (mp4, 240 frames, loop)", "WorldBagel/Video-v0", {"path": str(video_path), "loop": True}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="stepping time per measurement")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)

    with tempfile.TemporaryDirectory() as tmp:
        import imageio.v3 as iio

        rng = np.random.default_rng(0)
        clip = (rng.random((240, 128, 128, 3)) * 255).astype(np.uint8)
        video_path = Path(tmp) / "clip.mp4"
        iio.imwrite(video_path, clip, fps=15, codec="libx264", macro_block_size=16)

        table = Table(
            title=f"WorldBagel env steps/s (vector = {NUM_ENVS} envs, sync; best of {CHUNKS} windows in {args.seconds:g} s)"
        )
        for col in (
            "env",
            "obs",
            "single steps/s",
            f"vector x{NUM_ENVS} steps/s",
            "vector / single",
            "vs 64x64",
        ):
            table.add_column(col, justify="left" if col in ("env", "obs") else "right")
        for name, env_id, kwargs in _cases(video_path):
            if args.only and args.only.lower() not in name.lower():
                continue
            base: float | None = None
            for size in (64, 128):
                try:
                    single = _time_single(env_id, {**kwargs, "obs_size": size}, args.seconds)
                    vector = _time_vector(env_id, {**kwargs, "obs_size": size}, args.seconds)
                except DependencyNotInstalled as exc:
                    table.add_row(name, f"{size}x{size}", "skipped", "skipped", "", "", style="dim")
                    console.log(f"{name}: {str(exc).splitlines()[0][:120]}")
                    break
                base = single if size == 64 else base
                table.add_row(
                    name,
                    f"{size}x{size}",
                    f"{single:,.0f}",
                    f"{vector:,.0f}",
                    f"{vector / single:.2f}x",
                    "1.00x" if size == 64 else f"{single / base:.2f}x",
                )
                console.log(f"{name} {size}px: single {single:,.0f}/s, vector {vector:,.0f}/s")
    console.print(table)
    console.print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, numpy {np.__version__}, gymnasium {gym.__version__}"
    )


if __name__ == "__main__":
    main()
