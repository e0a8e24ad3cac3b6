"""Train the gridworld world model shipped with worldbagel, with the project's own commands.

    python scripts/train_gridworld.py --out runs/gridworld [--episodes 400] [--vae-steps 1500] \
        [--steps 3000] [--preset scratch-small] [--install]

1. `worldbagel collect` random-policy GridWorld episodes on training layouts, annotated with questions,
   answers and thoughts from the symbolic state (worldbagel/data/annotations.py);
2. `worldbagel train-vae` a small FLUX-layout autoencoder on their frames;
3. `worldbagel finetune` a from-scratch BAGEL-architecture preset on frame/action/text sequences;
4. a quick held-out check: next-frame symbolic accuracy (frames decoded by the env's frame decoder) and
   exact-match answers on layouts never trained on;
5. `--install` copies the model folder to worldbagel/assets/gridworld (what `model=gridworld` loads).

Every step resumes: re-running continues the collection, and `--resume` continues the fine-tune.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import worldbagel.envs  # noqa: F401  (registers the envs)
from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.cli import main as cli
from worldbagel.data.annotations import GOAL_QUESTION, relative_offset_text
from worldbagel.envs.grid_frames import decode_frame
from worldbagel.inference.generate import GenerationConfig
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.model.transforms import ImageTransform
from worldbagel.world_model import WorldModel, WorldModelConfig

ASSETS = Path(__file__).resolve().parents[1] / "worldbagel" / "assets" / "gridworld"


def step(args: list[str]) -> None:
    print("+ worldbagel " + " ".join(args), flush=True)
    t = time.time()
    rc = cli(args)
    if rc != 0:
        raise SystemExit(f"worldbagel {args[0]} failed with exit code {rc}")
    print(f"  ({time.time() - t:.0f} s)", flush=True)


def model_folder(out: Path) -> Path:
    hits = sorted(p.parent for p in out.rglob("ema.safetensors") if "checkpoints" not in p.parts)
    if not hits:
        raise SystemExit(f"no trained model folder (ema.safetensors) under {out}")
    return hits[-1]


def held_out_check(folder: Path, episodes: int, steps: int, sampling_steps: int) -> dict:
    """Next-frame symbolic accuracy and answer accuracy on eval-split layouts."""
    pipe = BagelPipeline.from_pretrained(
        folder, vae_transform=ImageTransform(64, 64, 16), vit_transform=ImageTransform(56, 56, 14)
    )
    env = gym.make("WorldBagel/GridWorld-v0", split="eval")
    codec = DiscreteActionCodec(env.unwrapped.action_names)
    sampler = GenerationConfig(num_steps=sampling_steps, cfg_text_scale=1.0, cfg_img_scale=1.0)
    wm = WorldModel(pipe, codec, WorldModelConfig(sampler=sampler, max_history_frames=2))
    rng = np.random.default_rng(0)
    frames_ok = frames_n = answers_ok = answers_n = copy_ok = 0
    gen = torch.Generator().manual_seed(0)
    for ep in range(episodes):
        obs, info = env.reset(seed=10_000 + ep)
        wm.reset(obs, instruction="reach the green goal")
        for _ in range(steps):
            answer = wm.reason(GOAL_QUESTION, max_new_tokens=24)
            answers_ok += answer == relative_offset_text(info["agent"], info["goal"])
            best = env.unwrapped.action_names[env.unwrapped.optimal_action()]
            answers_ok += wm.reason(next_action_question(codec), max_new_tokens=24) == best
            answers_n += 2
            action = int(rng.integers(4))
            prev = obs
            obs, _, term, trunc, info = env.step(action)
            pred = wm.predict(1, [action], generator=gen)[0]
            state = decode_frame(pred)
            truth = (tuple(info["agent"]), int(info["heading"]), tuple(info["goal"]))
            frames_ok += (
                state is not None
                and (tuple(state["agent"]), int(state["heading"]), tuple(state["goal"])) == truth
            )
            ps = decode_frame(prev)
            copy_ok += ps is not None and (tuple(ps["agent"]), int(ps["heading"]), tuple(ps["goal"])) == truth
            frames_n += 1
            wm.reset(obs, instruction="reach the green goal")  # teacher forcing: the true frame
            if term or trunc:
                break
    return {
        "next_frame_symbolic_accuracy": frames_ok / max(frames_n, 1),
        "copy_last_frame_accuracy": copy_ok / max(frames_n, 1),
        "answer_exact_match": answers_ok / max(answers_n, 1),
        "frames": frames_n,
        "answers": answers_n,
        "sampling_steps": sampling_steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gridworld"))
    ap.add_argument("--episodes", type=int, default=400)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--preset", default="scratch-small")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--eval-steps", type=int, default=8)
    ap.add_argument("--sampling-steps", type=int, default=8)
    ap.add_argument("--install", action="store_true", help="copy the model to worldbagel/assets/gridworld")
    ap.add_argument("--skip-train", action="store_true", help="only evaluate (and install) an existing run")
    args = ap.parse_args()
    out = args.out
    data, vae, wm_out = out / "data", out / "vae", out / "wm"
    if not args.skip_train:
        step(
            [
                "collect",
                "env=gridworld",
                "policy=random",
                f"episodes={args.episodes}",
                f"out={data}",
                "annotate=gridworld",
            ]
        )
        if not (vae / "ae.safetensors").is_file():
            step(["train-vae", f"data={data}", f"out={vae}", f"train.steps={args.vae_steps}"])
        step(
            [
                "finetune",
                f"model={args.preset}",
                "model.vae_image_size=[64,64,16]",
                "model.vit_image_size=[56,56,14]",
                f"data={data}",
                f"vae={vae}",
                f"out={wm_out}",
                f"train.steps={args.steps}",
                f"train.optim.lr={args.lr}",
                "train.optim.warmup_steps=100",
                "train.optim.schedule=cosine",
                f"train.resume={str(args.resume).lower()}",
                "train.save_every=250",
                "train.timestep_shift=1.0",
                "plan.context_frames=1",
            ]
        )
    folder = model_folder(wm_out)
    metrics = held_out_check(folder, args.eval_episodes, args.eval_steps, args.sampling_steps)
    (out / "held_out.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))
    if args.install:
        if ASSETS.exists():
            shutil.rmtree(ASSETS)
        ASSETS.mkdir(parents=True)
        for f in folder.iterdir():
            if f.is_file():
                shutil.copyfile(f, ASSETS / f.name)
        print(f"installed {folder} -> {ASSETS}")


if __name__ == "__main__":
    main()
