"""The command-chaining parts of the shipped gridworld model's recipe (scripts/train_gridworld.py runs them).

The recipe builds the model with `worldbagel` commands only, so every stage is what a user can run by hand:
collect annotated GridWorld episodes, train an autoencoder, fine-tune a from-scratch preset on frames,
actions and texts, then fine-tune that model in think mode (`think_stage`). This module holds the pieces the
script shares between stages and the rule that guards the installed model (`install_regressions`):

- `run_command(args)` runs one `worldbagel` command in this process and raises if it fails;
- `collect_episodes` collects random-policy, then shortest-path episodes into one folder (resumable);
- `schedule_overrides` are the schedule, checkpoint and plan overrides of every `finetune` of the recipe;
- `think_stage` chains `THINK_PHASES`, each phase fine-tuning the previous phase's model;
- `install_regressions` names the held-out figures on which a rebuilt model scores below the installed one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worldbagel.cli import main as cli
from worldbagel.errors import WorldBagelError

logger = logging.getLogger(__name__)

Runner = Callable[[list[str]], None]
"""Runs one `worldbagel` command given its arguments (`run_command`, or a stand-in that records them)."""


@dataclass
class RecipeOptions:
    """The options the recipe's fine-tunes and collections share (scripts/train_gridworld.py's flags of the same
    names; the defaults are the shipped model's recipe)."""

    out: Path = Path("runs/gridworld")
    """Root folder of the run: data, autoencoders, models, the latent cache and held_out.json."""
    episodes: int = 400
    """Random-policy episodes of every collection (every kind of move, wall bumps included)."""
    oracle_episodes: int = 200
    """Shortest-path episodes of the main collection and of the think stage's `mix` data (they end on the goal,
    which random episodes rarely reach)."""
    think_oracle_episodes: int = 600
    """Shortest-path episodes of the think stage's `more` data (more states to think about)."""
    think_phases: int = 3
    """How many of `THINK_PHASES` the think stage runs (0 skips it)."""
    annotation_dropout: float = 0.5
    """`dropout.annotations`: the share of samples trained without their question/answer/thought texts, so
    frames are also predicted from frames and actions alone, as at inference."""
    change_weight: float = 2.0
    """`train.mse_change_weight`: extra flow-matching weight of the tokens that change (the agent covers 1-2 of
    a frame's 64 tokens)."""
    frozen_pos_embed: bool = False
    """Keep the sin-cos position tables fixed (the official recipe); the default trains them
    (`train.train_pos_embed`), since adjacent cells' sin-cos rows are nearly parallel at hidden 128."""
    resume: bool = False
    """`train.resume`: continue each fine-tune from its newest checkpoint."""
    shift: float = 3.0
    """`train.timestep_shift`: more training steps at high noise."""
    ema_decay: float = 0.998
    """`train.ema_decay`: short enough that the exported EMA forgets the initial weights in a few thousand
    steps."""
    no_outcomes: bool = False
    """`plan.outcomes=false`: do not train the outcome text said before each predicted frame."""


def run_command(args: list[str]) -> None:
    """Run `worldbagel <args>` in this process (the CLI's own entry point); raise when it fails."""
    logger.info("+ worldbagel %s", " ".join(args))
    t = time.time()
    rc = cli(args)
    if rc != 0:
        raise WorldBagelError(f"worldbagel {args[0]} failed with exit code {rc}: its error is printed above")
    logger.info("  (%.0f s)", time.time() - t)


def model_folder(out: Path) -> Path:
    """The trained model folder (the one holding ema.safetensors, outside checkpoints/) under `out`."""
    hits = sorted(p.parent for p in out.rglob("ema.safetensors") if "checkpoints" not in p.parts)
    if not hits:
        raise WorldBagelError(
            f"no trained model folder (ema.safetensors) under {out}: run the fine-tune that writes it first"
        )
    return hits[-1]


def collect_episodes(
    out: Path, random_episodes: int, oracle_episodes: int, annotate: str, run: Runner = run_command
) -> None:
    """`worldbagel collect` random-policy episodes, then shortest-path ones, into one folder (resumes: each
    call asks for the folder's total, so finished episodes are kept)."""
    for policy, total in (("random", random_episodes), ("oracle", random_episodes + oracle_episodes)):
        run(
            [
                "collect",
                "env=gridworld",
                f"policy={policy}",
                f"episodes={total}",
                f"out={out}",
                f"annotate={annotate}",
            ]
        )


def schedule_overrides(opts: RecipeOptions, steps: int, lr: float) -> list[str]:
    """The schedule, checkpoint and plan overrides every `finetune` of the recipe shares."""
    return [
        f"train.steps={steps}",
        f"train.optim.lr={lr}",
        "train.optim.warmup_steps=100",
        "train.optim.schedule=cosine",
        f"train.resume={str(opts.resume).lower()}",
        "train.save_every=250",
        f"train.timestep_shift={opts.shift}",
        f"train.ema_decay={opts.ema_decay}",
        # one latent cache for every fine-tune: the think stage's frames are mostly stage 3's (same collection
        # seeds), so they are encoded once
        f"latent_cache={opts.out / 'latent_cache'}",
        "plan.context_frames=1",
        f"plan.outcomes={str(not opts.no_outcomes).lower()}",
    ]


THINK_PHASES: tuple[tuple[str, int, float], ...] = (
    ("more", 3000, 5e-4),
    ("more", 2500, 3e-4),
    ("mix", 1500, 2e-4),
)
"""The think stage's fine-tunes, each from the last one's model: (data, steps, peak lr). `more`: the random
episodes and `think_oracle_episodes` shortest-path ones (more states to think about); `mix`: the main
collection's own mix, because shortest-path-heavy data teaches the model to imagine moves onto an adjacent
goal through a wall, and a short phase on the mix restores the wall check next to the goal."""


def think_stage(
    opts: RecipeOptions,
    world_model: Path,
    out: Path,
    phases: Sequence[tuple[str, int, float]] = THINK_PHASES,
    run: Runner = run_command,
) -> Path:
    """Fine-tune the finished world model on think-mode next-move questions (the wall follower's walk from the
    goal, `annotate=gridworld-think`) in `phases[:opts.think_phases]`, each from the previous phase's model;
    returns the folder of the last phase."""
    if not 0 <= opts.think_phases <= len(phases):
        raise WorldBagelError(
            f"think_phases={opts.think_phases}: use 0 (skip the think stage) to {len(phases)}"
        )
    data = {"more": out / "data_more", "mix": out / "data_mix"}
    collect_episodes(data["mix"], opts.episodes, opts.oracle_episodes, "gridworld-think", run)
    collect_episodes(data["more"], opts.episodes, opts.think_oracle_episodes, "gridworld-think", run)
    for i, (name, steps, lr) in enumerate(phases[: opts.think_phases]):
        phase_out = out / f"phase{i + 1}"
        run(
            [
                "finetune",
                "model=tiny",
                f"model.path={world_model}",
                "model.vae_image_size=[64,64,8]",
                "model.vit_image_size=[56,56,14]",
                "sample_posterior=false",
                # each think question is a sample of its own (frame, system text, question, walk, answer): a long
                # walk between a context frame and the frame predicted from it breaks the frame copy, and the
                # frame windows beside the think samples keep the world model
                "plan.think_samples=true",
                f"dropout.annotations={opts.annotation_dropout}",
                "dropout.vae=0.0",
                f"train.mse_change_weight={opts.change_weight}",
                f"train.train_pos_embed={str(not opts.frozen_pos_embed).lower()}",
                f"data={data[name]}",
                f"out={phase_out}",
                *schedule_overrides(opts, steps, lr),
            ]
        )
        world_model = model_folder(phase_out)
    return world_model


INSTALL_METRICS = (
    "next_frame_symbolic_accuracy",
    "open_loop_8_symbolic_accuracy",
    "think_next_action_accuracy",
    "answer_exact_match_think",
)
"""The held-out figures `--install` compares with the installed model's before replacing it."""


def install_regressions(metrics: dict, installed_report: Path, tolerance: float) -> list[str]:
    """'name: new < installed' for each INSTALL_METRICS figure more than `tolerance` below the installed model's
    held_out.json ([] when nothing is installed). Whether the think stage learns to read the walls is not
    guaranteed by the recipe (the same recipe from another stage-3 model can stay on a plateau with think
    answers near chance), so a rebuild must not silently replace a better installed model."""
    if not installed_report.is_file():
        return []
    installed = json.loads(installed_report.read_text())
    return [
        f"{key}: {metrics[key]:.3f} < {installed[key]:.3f}"
        for key in INSTALL_METRICS
        if isinstance(metrics.get(key), (int, float))
        and isinstance(installed.get(key), (int, float))
        and metrics[key] < installed[key] - tolerance
    ]
