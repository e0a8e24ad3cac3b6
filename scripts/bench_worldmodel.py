"""World-model benchmark: imagined frames per second vs sampling steps, and (gridworld models) quality vs steps.

    python scripts/bench_worldmodel.py [--model gridworld|fixture|DIR] [--steps 2,4,8,16] [--cfg-text 2.0]
                                       [--frames 8] [--candidates 4] [--repeats 3] [--episodes 8]
                                       [--quality auto|on|off]

Every figure is measured in this one run on this machine (docs/benchmarks.md, "Shipped gridworld model", records them).

- Speed: an 8-frame open-loop rollout (`WorldModel.imagine`, random GridWorld actions, the model's real
  frame size) from a 2-frame history, timed per sampling setting (round-robin over the settings): the model's
  own sampler preset (`ModelConfig.sampler`: `gridworld` = 4 steps without guidance for the shipped model,
  `fast` = 8 steps with text CFG 2.0 for the fixture) and the same preset with other step counts.
  "x C batched" imagines C candidate futures of the same history in one `predict_batch` call per frame
  (what the planner does); its frames/s counts all C futures. Each figure is the best of `--repeats` runs
  after a warm-up. `--cfg-text 2.0,1.0` also sweeps the text guidance scale (1.0 = no guidance: one branch
  per denoising evaluation instead of two).
- Quality (gridworld models only; `--quality on` forces it): `worldbagel eval`'s frame-prediction protocol on
  held-out GridWorld layouts (random-policy episodes, seeds 1000+): symbolic accuracy (agent, heading and
  goal decoded from the predicted frame equal the true state) of next-frame (single-step) predictions and of
  open-loop rollouts at k = 8, per step count, with the copy-last-frame baseline.

Default model: the gridworld model shipped in the package (worldbagel/assets/gridworld) when it exists, else
the random-weight tests/fixtures/bagel-tiny (speed only; its frames are noise, so quality is skipped).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
SHIPPED = ROOT / "worldbagel" / "assets" / "gridworld"


def model_choice(name: str) -> tuple[dict, bool, str]:
    """(model config mapping, is a gridworld model, description)."""
    if name == "auto":
        name = "gridworld" if (SHIPPED / "ema.safetensors").is_file() else "fixture"
    if name == "gridworld":
        return {"name": "gridworld"}, True, "shipped gridworld model (worldbagel/assets/gridworld)"
    if name == "fixture":
        return {"name": "tiny", "path": str(FIXTURE)}, False, "tests/fixtures/bagel-tiny (random weights)"
    return {"name": "tiny", "path": name}, False, name


def grid_frames(n: int, seed: int = 1000) -> tuple[list[np.ndarray], list[int]]:
    """n GridWorld frames (held-out layout) and the n-1 random actions between them, plus 16 more actions."""
    from worldbagel.envs import make_env

    env = make_env("WorldBagel/GridWorld-v0", split="eval")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames, actions = [obs], []
    for _ in range(n - 1):
        a = int(rng.integers(4))
        obs, *_ = env.step(a)
        frames.append(obs)
        actions.append(a)
    env.close()
    return frames, actions + [int(a) for a in rng.integers(4, size=16)]


def rollout_seconds(wm, frames, actions, n_frames: int, candidates: int, seed: int) -> float:
    """Seconds to imagine `n_frames` frames for `candidates` futures of one 2-frame history."""
    from worldbagel.world_model import predict_batch

    wm.reset(frames[0]).act(actions[0]).observe(frames[1])
    plan = actions[1 : 1 + n_frames]
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    if candidates == 1:
        wm.imagine(plan, generator=g)
    else:
        predict_batch([wm.fork() for _ in range(candidates)], n_frames, [plan] * candidates, g)
    return time.perf_counter() - t


def quality(wm, episodes, seed: int) -> dict:
    from worldbagel.eval.protocol import evaluate_frame_prediction

    res = evaluate_frame_prediction(
        wm, episodes, horizons=(1, 8), context=2, max_trajectories=None, max_samples=None, seed=seed
    )
    sym, summ = res.symbolic_section() or {}, res.summary()["modes"]
    return {
        "next": sym.get("next_frame", {}).get("accuracy"),
        "open8": sym.get("open_loop_k8", {}).get("accuracy"),
        "copy8": sym.get("copy_last_frame_k8", {}).get("accuracy"),
        "psnr1": summ["single_step"]["psnr"]["mean"][0],
        "n": len(res.samples),
    }


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto", help="gridworld, fixture, a model folder, or auto")
    ap.add_argument("--steps", default="2,4,8,16", help="sampling step counts to compare")
    ap.add_argument("--cfg-text", default="", help="text CFG scales to compare (default: the preset's)")
    ap.add_argument("--frames", type=int, default=8, help="imagined frames per timed rollout")
    ap.add_argument("--candidates", type=int, default=4, help="futures imagined together in the batched row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=8, help="held-out episodes of the quality pass")
    ap.add_argument("--quality", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from worldbagel.actions import DiscreteActionCodec
    from worldbagel.envs import GridWorldEnv
    from worldbagel.eval.heldout import record_env_episodes
    from worldbagel.world_model_loader import load_world_model

    console = Console()
    model, is_grid, described = model_choice(args.model)
    steps = [int(s) for s in args.steps.split(",")]
    codec = DiscreteActionCodec(GridWorldEnv.action_names)
    wm = load_world_model(model, codec=codec)  # the model's own sampler preset (ModelConfig.sampler)
    default = wm.config.sampler
    scales = [float(c) for c in args.cfg_text.split(",")] if args.cfg_text else [default.cfg_text_scale]
    frames, actions = grid_frames(2)
    h, w = wm.pipe.vae_transform.target_size(*frames[0].shape[:2])
    console.print(
        f"model: {described}; frames {h}x{w}; torch threads {torch.get_num_threads()}; "
        f"default sampler: the model's own (num_steps {default.num_steps}, text CFG {default.cfg_text_scale}, "
        f"image CFG {default.cfg_img_scale})"
    )

    table = Table(title=f"Imagined frames/s ({args.frames}-frame open-loop rollout, best of {args.repeats})")
    for col in (
        "num_steps",
        "text CFG",
        "s / frame",
        "frames/s",
        f"x{args.candidates} batched frames/s",
        "vs default",
    ):
        table.add_column(col, justify="right")
    home = (default.num_steps, default.cfg_text_scale)
    settings = sorted(set(itertools.product(steps, scales)) | {home})
    best = {(n, g, c): float("inf") for n, g in settings for c in (1, args.candidates)}
    for r in range(args.repeats + 1):  # round-robin over the settings, so load spikes hit them alike
        for n, g, c in best:
            wm.config.sampler = replace(default, num_steps=n, cfg_text_scale=g)
            sec = rollout_seconds(wm, frames, actions, args.frames, c, r)
            if r > 0:  # round 0 is the warm-up
                best[(n, g, c)] = min(best[(n, g, c)], sec)
    rows = {
        (n, g): (best[(n, g, 1)] / args.frames, args.candidates * args.frames / best[(n, g, args.candidates)])
        for n, g in settings
    }
    base = rows[home][0]
    for (n, g), (one, batched) in rows.items():
        label = f"{n} (default)" if (n, g) == home else str(n)
        table.add_row(label, f"{g:g}", f"{one:.3f}", f"{1 / one:.1f}", f"{batched:.1f}", f"{base / one:.2f}x")
    console.print(table)
    # s/frame = overhead + per_eval * (num_steps - 1): least squares over the settings of each CFG scale
    for g in scales:
        fit = {n: rows[(n, h)][0] for n, h in rows if h == g}
        x = np.array([n - 1 for n in fit], dtype=np.float64)
        y = np.array(list(fit.values()))
        slope, icpt = np.polyfit(x, y, 1) if len(fit) > 1 else (float("nan"), float("nan"))
        console.print(
            f"fit (text CFG {g:g}): s/frame = {icpt:.3f} (per frame: decode, re-encode into the history, "
            f"action prefill, outcome text) + {slope:.4f} x (num_steps - 1) (one denoising evaluation)"
        )

    run_quality = args.quality == "on" or (args.quality == "auto" and is_grid)
    if not run_quality:
        why = (
            "--quality off"
            if args.quality == "off"
            else "not a gridworld model; pass --quality on to force it"
        )
        console.print(f"quality vs steps: skipped ({why})")
        return
    episodes = record_env_episodes(
        "WorldBagel/GridWorld-v0", {"split": "eval"}, "random", args.episodes, 1000, 16
    )
    qt = Table(title=f"Symbolic accuracy vs sampling steps ({args.episodes} held-out episodes)")
    cols = (
        "num_steps",
        "text CFG",
        "samples",
        "next frame",
        "open loop k=8",
        "copy-last-frame k=8",
        "PSNR k=1",
    )
    for col in cols:
        qt.add_column(col, justify="right")
    for n, g in itertools.product(steps, scales):
        wm.config.sampler = replace(default, num_steps=n, cfg_text_scale=g)
        q = quality(wm, episodes, 0)
        qt.add_row(
            str(n),
            f"{g:g}",
            str(q["n"]),
            pct(q["next"]),
            pct(q["open8"]),
            pct(q["copy8"]),
            f"{q['psnr1']:.2f}",
        )
    console.print(qt)


if __name__ == "__main__":
    main()
