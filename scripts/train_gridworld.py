"""Train the gridworld world model shipped with worldbagel, with the project's own commands.

    python scripts/train_gridworld.py --out runs/gridworld [--install]     # the shipped model's recipe
    python scripts/train_gridworld.py --out runs/gw --episodes 400 --vae-steps 600 --steps 14000 --preset scratch-deep

The recipe chains the project's own commands (steps 1-6 below; the command-chaining parts live in
worldbagel/recipes/gridworld.py). The autoencoder's first `train-vae` stage learns the latents the world model
trains on; a second stage (`--decoder-steps`) retrains its decoder alone on agent-on-goal frames, whose 1-pixel
goal ring the first decoder loses, which keeps the latents (and so the world model's training) unchanged. A last
stage of `finetune` phases (`--think-phases`, `THINK_PHASES`) teaches the finished world model to answer the
next-move question by thinking: it writes the right-hand wall follower's walk from the goal to the agent
(`annotate=gridworld-think`, `plan.think_samples=true`) while its frame samples keep the world model as it was.
Whether the think stage learns to read each cell's open sides depends on the stage-3 model it starts from, and
a rebuild often stays on a plateau, so `--install` keeps the installed model when a rebuild scores lower on the
held-out check. Timings and the history of the recipe: docs/log/gridworld-experiments.md.

1. `worldbagel collect` random-policy and shortest-path (oracle) GridWorld episodes on training layouts,
   annotated with questions, answers and thoughts from the symbolic state (worldbagel/data/annotations.py);
2. `worldbagel train-vae` a small FLUX-layout autoencoder on their frames, then its decoder alone again with
   the agent-on-goal frames repeated (`init=... train.freeze_encoder=true`);
3. `worldbagel finetune` a from-scratch BAGEL-architecture preset on frame/action/text sequences;
4. `worldbagel collect` the same kind of episodes annotated in think mode, and `worldbagel finetune` the model
   of step 3 on them (think questions as samples of their own, frame windows beside them);
5. a quick held-out check: next-frame symbolic accuracy (frames decoded by the env's frame decoder) and
   exact-match answers (the next-move question in think mode) on layouts never trained on;
6. `--install` copies the model folder to worldbagel/assets/gridworld (what `model=gridworld` loads), unless the
   installed model scores higher on the same held-out check (`install_regressions`; `--force-install`).

Every step resumes: re-running continues the collection, and `--resume` continues the fine-tune.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from dataclasses import fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import worldbagel.envs  # noqa: F401  (registers the envs)
from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.data.annotations import (
    GOAL_QUESTION,
    GRIDWORLD_THINK_PROMPT,
    GridWorldAnnotator,
    relative_offset_text,
    walk_first_error,
    walk_thought,
)
from worldbagel.envs.grid_frames import decode_frame
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.model.domain import DOMAIN_FILE
from worldbagel.model.transforms import ImageTransform
from worldbagel.recipes.gridworld import (
    THINK_PHASES,
    RecipeOptions,
    collect_episodes,
    install_regressions,
    model_folder,
    run_command,
    schedule_overrides,
    think_stage,
)
from worldbagel.world_model import WorldModel, WorldModelConfig

ASSETS = Path(__file__).resolve().parents[1] / "worldbagel" / "assets" / "gridworld"
# raw weights (the loader reads ema.safetensors) and the training log stay out of the package
NOT_SHIPPED = {"model.safetensors", "metrics.jsonl"}


def vae_acceptance(vae_dir: Path, episodes: int = 20, steps: int = 5) -> tuple[float, float, float]:
    """Autoencoder round trips on held-out layouts: shares of (frames whose reconstruction decodes to the frame's
    true state, agent-on-goal frames whose agent survives, agent-on-goal frames whose goal ring survives too).
    The first `train-vae` stage alone usually keeps the agent but loses the ring; the decoder stage keeps both."""
    from worldbagel.model.vae import load_vae

    vae = load_vae(vae_dir)
    env = gym.make("WorldBagel/GridWorld-v0", split="eval")
    rng = np.random.default_rng(0)
    frames, on_goal = [], []
    for ep in range(episodes):
        obs, info = env.reset(seed=ep)
        frames.append(obs)
        for _ in range(steps):
            frames.append(env.step(int(rng.integers(4)))[0])
        goal = tuple(info["goal"])
        on_goal.append(
            env.reset(options={"layout_seed": info["layout_seed"], "agent": goal, "goal": goal})[0]
        )

    def round_trip(images: list) -> np.ndarray:
        x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, H, W]
        with torch.no_grad():
            mean, _ = vae.moments(x)
            recon = vae.ae.decoder(mean).clamp(-1, 1)
        return ((recon + 1) * 127.5).permute(0, 2, 3, 1).numpy()

    ok = [
        (got := decode_frame(r)) is not None and got == decode_frame(f)
        for r, f in zip(round_trip(frames), frames)
    ]
    agent_ok, ring_ok = [], []
    for r, f in zip(round_trip(on_goal), on_goal):
        want, got = decode_frame(f), decode_frame(r, require_goal=False)
        agent_ok.append(
            got is not None and (got["agent"], got["heading"]) == (want["agent"], want["heading"])
        )
        # the whole state, goal ring included: a lost ring makes every imagined arrival undecodable
        ring_ok.append(got == want)
    return float(np.mean(ok)), float(np.mean(agent_ok)), float(np.mean(ring_ok))


def _state(frame: np.ndarray) -> tuple | None:
    s = decode_frame(frame)
    return None if s is None else (tuple(s["agent"]), int(s["heading"]), tuple(s["goal"]))


def held_out_check(
    folder: Path,
    episodes: int,
    steps: int,
    sampling_steps: int,
    outcomes: bool = True,
    think: bool = False,
    reencode: str = "pixels",
) -> dict:
    """Next-frame symbolic accuracy (teacher forced, and after `steps` open-loop steps along the true actions),
    of the move onto the goal (arrival, one per episode), answer accuracy and (with `outcomes`) the accuracy of
    the outcome text said before each frame, on eval-split layouts. `reencode`: how predicted frames re-enter
    the open-loop history (configs/model/gridworld.yaml: pixels)."""
    pipe = BagelPipeline.from_pretrained(
        folder, vae_transform=ImageTransform(64, 64, 8), vit_transform=ImageTransform(56, 56, 14)
    )
    env = gym.make("WorldBagel/GridWorld-v0", split="eval")
    codec = DiscreteActionCodec(env.unwrapped.action_names)
    sampler = SamplerConfig(num_steps=sampling_steps, cfg_text_scale=1.0, cfg_img_scale=1.0)
    # as the model was trained (one context frame) and as configs/model/gridworld.yaml keeps its history
    # reencode=pixels (configs/model/gridworld.yaml): a predicted frame is decoded and encoded again like a real
    # one, which puts it back on the encoder's latents; generated latents re-entering as they are pile up their
    # small errors and drift into undecodable frames over 8 steps
    world = WorldModelConfig(
        sampler=sampler,
        max_history_frames=1,
        window_slack=0,
        outcome_text=outcomes,
        reencode=reencode,
        think_prompt=GRIDWORLD_THINK_PROMPT,
    )
    wm = WorldModel(pipe, codec, world)
    annotator = GridWorldAnnotator()
    rng = np.random.default_rng(0)
    frames_ok = frames_n = answers_ok = answers_n = copy_ok = open_ok = outcome_ok = think_ok = think_n = 0
    goal_ok = 0
    lengths: list[int] = []
    first_errors: Counter[str] = Counter()  # where each thought first leaves the true walk
    gen = torch.Generator().manual_seed(0)
    for ep in range(episodes):
        obs, info = env.reset(seed=10_000 + ep)
        first, actions, truths = obs, [], []
        wm.reset(obs, instruction="reach the green goal")
        for _ in range(steps):
            goal_right = wm.reason(GOAL_QUESTION, max_new_tokens=24) == relative_offset_text(
                info["agent"], info["goal"]
            )
            goal_ok += goal_right
            best = env.unwrapped.action_names[env.unwrapped.optimal_action()]
            answers_ok += goal_right + (wm.reason(next_action_question(codec), max_new_tokens=24) == best)
            answers_n += 2
            if think:  # the same question in think mode: the wall-follower thought, then the answer
                thought, said = wm.reason_full(next_action_question(codec), think=True, max_new_tokens=512)
                think_ok += said == best
                think_n += 1
                lengths.append(len(thought))
                truth = walk_thought(env.unwrapped.walls, tuple(info["agent"]), tuple(info["goal"]), best)
                first_errors[walk_first_error(thought, truth)] += 1
            action = int(rng.integers(4))
            prev = obs
            obs, _, term, trunc, info = env.step(action)
            actions.append(action)
            pred = wm.predict(1, [action], generator=gen)[0]
            truth = (tuple(info["agent"]), int(info["heading"]), tuple(info["goal"]))
            truths.append(truth)
            frames_ok += _state(pred) == truth
            outcome_ok += wm.last_outcome == annotator.outcome(env, obs, info)  # the training text
            copy_ok += _state(prev) == truth
            frames_n += 1
            wm.reset(obs, instruction="reach the green goal")  # teacher forcing: the true frame
            if term or trunc:
                break
        wm.reset(first, instruction="reach the green goal")
        imagined = wm.imagine(actions, generator=gen)  # open loop along the true actions
        open_ok += _state(imagined[-1]) == truths[-1]
    arrival_ok = arrivals = 0
    for ep in range(episodes):  # the last move of a shortest path: onto the goal (rare in random play)
        obs, info = env.reset(seed=20_000 + ep)
        while info["distance"] > 1:
            obs, *_, info = env.step(env.unwrapped.optimal_action())
        action = env.unwrapped.optimal_action()
        wm.reset(obs, instruction="reach the green goal")
        pred = wm.predict(1, [action], generator=gen)[0]
        _, _, _, _, info = env.step(action)
        arrival_ok += _state(pred) == (tuple(info["agent"]), int(info["heading"]), tuple(info["goal"]))
        arrivals += 1
    return {
        "next_frame_symbolic_accuracy": frames_ok / max(frames_n, 1),
        "copy_last_frame_accuracy": copy_ok / max(frames_n, 1),
        f"open_loop_{steps}_symbolic_accuracy": open_ok / max(episodes, 1),
        "arrival_symbolic_accuracy": arrival_ok / max(arrivals, 1),
        "answer_exact_match": answers_ok / max(answers_n, 1),
        "think_next_action_accuracy": think_ok / think_n if think_n else None,
        "think_mean_thought_chars": float(np.mean(lengths)) if lengths else None,
        # "none": the whole walk right; "open sides": a cell's walls misread (the plateau's error), ...
        "think_first_error": dict(first_errors.most_common()) if think_n else None,
        # the goal question plain, the next-action question in think mode (how the model is meant to answer it)
        "answer_exact_match_think": (goal_ok + think_ok) / (answers_n / 2 + think_n) if think_n else None,
        "outcome_text_accuracy": outcome_ok / max(frames_n, 1) if outcomes else None,
        "frames": frames_n,
        "answers": answers_n,
        "sampling_steps": sampling_steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RecipeOptions.out)
    ap.add_argument("--episodes", type=int, default=RecipeOptions.episodes, help="random-policy episodes")
    ap.add_argument(
        "--oracle-episodes", type=int, default=RecipeOptions.oracle_episodes, help="shortest-path episodes"
    )
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-frames", type=int, default=4000)
    ap.add_argument(
        "--decoder-steps",
        type=int,
        default=500,
        help="then retrain the autoencoder's decoder alone on agent-on-goal frames (0: skip)",
    )
    ap.add_argument("--vae-rarity-radius", type=int, default=0, help="train-vae train.rarity_radius (pixels)")
    ap.add_argument(
        "--vae-success-repeat",
        type=int,
        default=0,
        help="train-vae success_repeat: the final (agent-on-goal) frame of each successful episode, added N times",
    )
    ap.add_argument("--steps", type=int, default=14000, help="fine-tune steps (one cosine schedule)")
    ap.add_argument("--preset", default="scratch-deep")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema-decay", type=float, default=RecipeOptions.ema_decay)
    ap.add_argument(
        "--change-weight",
        type=float,
        default=RecipeOptions.change_weight,
        help="train.mse_change_weight: extra flow-matching weight of the tokens that change (the agent)",
    )
    ap.add_argument(
        "--shift",
        type=float,
        default=RecipeOptions.shift,
        help="train.timestep_shift (more high-noise steps)",
    )
    ap.add_argument(
        "--annotation-dropout",
        type=float,
        default=RecipeOptions.annotation_dropout,
        help="dropout.annotations",
    )
    ap.add_argument(
        "--frozen-pos-embed",
        action="store_true",
        help="keep the sin-cos position tables fixed (official recipe; default: train.train_pos_embed=true)",
    )
    ap.add_argument(
        "--no-outcomes",
        action="store_true",
        help="plan.outcomes=false: do not train (or use) the outcome text said before each predicted frame",
    )
    ap.add_argument(
        "--success-repeat",
        type=int,
        default=1,
        help="plan.success_repeat: windows that end on the goal appear this many times per epoch",
    )
    ap.add_argument(
        "--think-phases",
        type=int,
        default=len(THINK_PHASES),
        help="then fine-tune on think-mode next-move questions in this many of THINK_PHASES (0: skip)",
    )
    ap.add_argument(
        "--think-oracle-episodes",
        type=int,
        default=RecipeOptions.think_oracle_episodes,
        help="shortest-path episodes of the think stage's `more` data (beside --episodes random ones)",
    )
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--eval-steps", type=int, default=8)
    ap.add_argument("--sampling-steps", type=int, default=8)
    ap.add_argument("--install", action="store_true", help="copy the model to worldbagel/assets/gridworld")
    ap.add_argument("--skip-train", action="store_true", help="only evaluate (and install) an existing run")
    ap.add_argument(
        "--install-tolerance",
        type=float,
        default=0.05,
        help="--install refuses a model more than this below the installed one on INSTALL_METRICS",
    )
    ap.add_argument("--force-install", action="store_true", help="install even a model that scores lower")
    args = ap.parse_args()
    if not 0 <= args.think_phases <= len(THINK_PHASES):
        ap.error(f"--think-phases {args.think_phases}: use 0 (skip the think stage) to {len(THINK_PHASES)}")
    opts = RecipeOptions(**{f.name: getattr(args, f.name) for f in fields(RecipeOptions)})
    logging.basicConfig(
        level=logging.INFO, format="%(message)s"
    )  # run_command logs each command and its time
    out = args.out
    data, vae, ring, wm_out = out / "data", out / "vae", out / "vae_ring", out / "wm"
    think_out = out / "wm_think"
    if not args.skip_train:
        # random-policy episodes (every kind of move, wall bumps), then shortest-path episodes on other
        # layouts (they end with the agent stepping onto the goal, which random episodes rarely show)
        collect_episodes(data, args.episodes, args.oracle_episodes, "gridworld")
        if not (vae / "ae.safetensors").is_file():
            run_command(
                [
                    "train-vae",
                    f"data={data}",
                    f"out={vae}",
                    f"max_frames={args.vae_frames}",
                    f"train.steps={args.vae_steps}",
                    "train.lr=1e-3",
                    "train.recon_weighting=rarity",
                    # the agent drawn over the goal is ~1 % of the frames: its 1-pixel goal ring was dropped
                    f"success_repeat={args.vae_success_repeat}",
                    # ... and with them common, the floor around every agent must not turn green (a halo)
                    f"train.rarity_radius={args.vae_rarity_radius}",
                    "vae.ch_mult=[1,2,2]",  # downsample 4: a 64 px frame -> 16x16 latents -> 8x8 tokens
                    "vae.downsample=4",
                ]
            )
        if args.decoder_steps and not (ring / "ae.safetensors").is_file():
            # the decoder alone learns the agent-on-goal frames (goal ring kept, no halo): the encoder, the latents
            # and everything the world model learns from them stay those of the first stage
            run_command(
                [
                    "train-vae",
                    f"data={data}",
                    f"out={ring}",
                    f"init={vae}",
                    "train.freeze_encoder=true",
                    f"max_frames={args.vae_frames}",
                    f"train.steps={args.decoder_steps}",
                    "train.lr=3e-4",
                    "train.recon_weighting=rarity",
                    "train.rarity_radius=2",
                    "success_repeat=2",
                ]
            )
        if args.decoder_steps:
            vae = ring
        vae_ok, agent_ok, ring_ok = vae_acceptance(vae)
        print(f"  VAE round trips that decode to the true state (held-out layouts): {vae_ok:.1%}")
        print(f"  ... agent-on-goal frames whose agent survives the round trip: {agent_ok:.1%}")
        print(f"  ... and whose goal ring survives too (imagined arrivals decode): {ring_ok:.1%}")
        if vae_ok < 0.99 or agent_ok < 0.99:
            raise SystemExit(
                f"the autoencoder in {vae} loses the agent or goal; train it longer (--vae-steps)"
            )
        if ring_ok < 0.99:
            print(
                "  (the ring is lost: --vae-success-repeat 2 --vae-rarity-radius 2 --vae-steps 1000 keep it)"
            )
        run_command(
            [
                "finetune",
                f"model={args.preset}",
                "model.vae_image_size=[64,64,8]",  # one latent token per maze cell (VAE /4, patch 2)
                "sample_posterior=false",
                # half the samples without their Q&A/thought texts: at inference a frame is predicted from
                # frames and actions alone (a model trained always with them erases the agent without them)
                f"dropout.annotations={args.annotation_dropout}",
                # the clean context frame is never dropped: image guidance is not used by this model, and a
                # sample without its frame cannot say where the agent goes (a blur target)
                "dropout.vae=0.0",
                # the agent covers 1-2 of a frame's 64 tokens: weight the tokens that change from the context
                f"train.mse_change_weight={args.change_weight}",
                # adjacent cells' sin-cos rows have cosine 0.98 at hidden 128: the tables train to tell them apart
                f"train.train_pos_embed={str(not args.frozen_pos_embed).lower()}",
                "model.vit_image_size=[56,56,14]",
                f"data={data}",
                f"vae={vae}",
                f"out={wm_out}",
                *schedule_overrides(opts, args.steps, args.lr),
                f"plan.success_repeat={args.success_repeat}",
            ]
        )
    folder = model_folder(wm_out)
    if args.think_phases and not args.skip_train:
        folder = think_stage(opts, folder, think_out)
    elif args.think_phases:
        folder = model_folder(think_out / f"phase{args.think_phases}")
    metrics = held_out_check(
        folder,
        args.eval_episodes,
        args.eval_steps,
        args.sampling_steps,
        outcomes=not args.no_outcomes,
        think=bool(args.think_phases),
    )
    (out / "held_out.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))
    if args.install:
        worse = install_regressions(metrics, ASSETS / "held_out.json", args.install_tolerance)
        if worse and not args.force_install:
            raise SystemExit(
                f"--install: not replacing {ASSETS}, this run scores lower on the same held-out check: "
                + "; ".join(worse)
                + f". Its report is in {out / 'held_out.json'}; pass --force-install to install it anyway."
            )
        domain = (ASSETS / DOMAIN_FILE).read_text() if (ASSETS / DOMAIN_FILE).is_file() else None
        if ASSETS.exists():
            shutil.rmtree(ASSETS)
        ASSETS.mkdir(parents=True)
        if domain is not None:  # the declared domain (model/domain.py) is the recipe's, not the run's
            (ASSETS / DOMAIN_FILE).write_text(domain)
        for f in folder.iterdir():
            if f.is_file() and f.name not in NOT_SHIPPED:
                shutil.copyfile(f, ASSETS / f.name)
        (ASSETS / "held_out.json").write_text(json.dumps(metrics, indent=1) + "\n")
        print(f"installed {folder} -> {ASSETS}")


if __name__ == "__main__":
    main()
