"""`worldbagel rollout env=gridworld policy=random episodes=3`: episodes -> mp4/gif, metrics.json, a table."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worldbagel.config import RolloutConfig
from worldbagel.policies import make_policy
from worldbagel.rollout import RolloutResult, build_env, policy_kwargs, policy_metadata, run_rollouts
from worldbagel.run_folder import default_run_dir, run_folder
from worldbagel.tracking import Tracker, open_tracker, require_backend


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _files(*names: str | None) -> str:
    kinds = [Path(n).suffix.lstrip(".") for n in names if n]
    return " ".join(kinds) or "-"


def results_table(result: RolloutResult, title: str) -> Table:
    """Per-episode rows plus a mean row."""
    table = Table(title=title)
    for col, justify in [
        ("episode", "right"),
        ("seed", "right"),
        ("status", "left"),
        ("length", "right"),
        ("return", "right"),
        ("success", "center"),
        ("SPL", "right"),
        ("files", "left"),
    ]:
        table.add_column(col, justify=justify)
    for e in result.episodes:
        status = "[green]ok[/green]" if e.status == "ok" else "[red]failed[/red]"
        table.add_row(
            str(e.episode),
            str(e.seed),
            status,
            str(e.length),
            _fmt(e.ret),
            _fmt(e.success),
            _fmt(e.spl),
            _files(e.video, e.gif),
        )
    agg = result.aggregate()
    table.add_section()
    table.add_row(
        "mean",
        "",
        f"{agg['completed']}/{agg['episodes']} ok",
        _fmt(agg["length"], 1),
        _fmt(agg["return"]),
        _fmt(agg["success_rate"], 2),
        _fmt(agg["spl"]),
        "",
    )
    return table


def _progress(console: Console) -> Progress:
    """Two bars: episodes done, and the steps of the running episode (a long planner episode moves too)."""
    return Progress(
        TextColumn("[bold]rollout[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def headline(cfg: RolloutConfig) -> dict[str, float | None]:
    """The figures a sweep's summary shows for a finished run in `cfg.out` (its metrics.json aggregate)."""
    agg = json.loads((Path(cfg.out) / "metrics.json").read_text())["aggregate"]
    return {"success": agg["success_rate"], "SPL": agg["spl"]}


def _track_episode(tracker: Tracker, media_every: int, er, frames: list, fps: float) -> None:
    """An episode's figures (the episode index is the step) and, every `media_every` episodes, its video."""
    figures = {"return": er.ret, "length": er.length, "success": er.success, "spl": er.spl}
    tracker.log_scalars(er.episode, {f"rollout/{k}": float(v) for k, v in figures.items() if v is not None})
    if frames and media_every and er.episode % media_every == 0:
        tracker.log_video(er.episode, "rollout/episode", np.stack(frames), fps=fps)


def run(cfg: RolloutConfig, console: Console) -> int:
    require_backend(cfg.tracker)  # a missing tensorboard / wandb fails before any env or model loads
    out = Path(cfg.out) if cfg.out else default_run_dir("rollout")
    env_factory = partial(build_env, cfg.env.id, cfg.env.kwargs)
    kwargs = policy_kwargs(cfg.policy.name, cfg.policy.kwargs, cfg.model, cfg.sampler)
    policy_factory = partial(make_policy, cfg.policy.name, seed=cfg.seed, **kwargs)
    metadata = {
        "env": cfg.env.name,
        "env_id": cfg.env.id,
        "policy": cfg.policy.name,
        **policy_metadata(kwargs),
    }
    with run_folder(out, cfg, "rollout"), _progress(console) as bar, ExitStack() as tracking:
        task = bar.add_task(f"{cfg.env.name} x {cfg.policy.name}", total=cfg.episodes)
        steps = bar.add_task("episode 0 step", total=None)

        def on_step(episode: int, done: int, limit: int | None) -> None:
            bar.update(steps, description=f"episode {episode} step", completed=done, total=limit)

        tracker: Tracker | None = None

        def on_episode(er, frames: list, fps: float) -> None:
            nonlocal tracker
            if tracker is None:  # opened after the first episode: a failed start leaves no tracker files
                tracker = open_tracker(cfg.tracker, out, "rollout", asdict(cfg))
                tracking.callback(tracker.close)
            _track_episode(tracker, cfg.tracker.media_every, er, frames, fps)

        result = run_rollouts(
            env_factory,
            policy_factory,
            episodes=cfg.episodes,
            seed=cfg.seed,
            out_dir=out,
            max_steps=cfg.max_steps,
            video=cfg.video,
            gif=cfg.gif,
            fps=cfg.env.fps,
            metadata=metadata,
            progress=lambda done, total, ep: bar.update(task, completed=done),
            on_step=on_step,
            on_episode=on_episode,
        )
        if tracker is not None:
            figures = {k: v for k, v in result.aggregate().items() if isinstance(v, (int, float))}
            tracker.log_scalars(cfg.episodes, {f"rollout/aggregate/{k}": v for k, v in figures.items()})
    console.print(results_table(result, f"{cfg.env.id} x {cfg.policy.name}"))
    for e in result.episodes:
        if e.status != "ok":
            console.print(
                f"[red]episode {e.episode} (seed {e.seed}) failed:[/red] {escape(e.error or '')}",
                markup=True,
                highlight=False,
            )
    console.print(f"run folder: {out}  (metrics.json, episode_XXX.mp4/.gif)")
    return 0 if all(e.status == "ok" for e in result.episodes) else 1
