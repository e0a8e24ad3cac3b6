"""`worldbagel collect env=gridworld policy=oracle episodes=N out=DIR`: record a trajectory dataset (resumable)."""

from __future__ import annotations

from functools import partial

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from worldbagel.config import CollectConfig
from worldbagel.data.annotations import make_annotator
from worldbagel.data.collect import collect
from worldbagel.data.trajectory import FRAME_EXTS
from worldbagel.errors import bad_argument
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env


def run(cfg: CollectConfig, console: Console) -> int:
    if cfg.frame_format not in FRAME_EXTS:
        raise bad_argument("frame_format", cfg.frame_format, f"use one of {FRAME_EXTS}")
    env_factory = partial(build_env, cfg.env.id, cfg.env.kwargs)
    policy_factory = partial(make_policy, cfg.policy.name, seed=cfg.seed, **cfg.policy.kwargs)
    with Progress(
        TextColumn("[bold]collect[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{cfg.env.name} x {cfg.policy.name}", total=None)

        def progress(done: int, todo: int, eid: str, error: str | None) -> None:
            bar.update(task, completed=done, total=todo)

        result = collect(
            env_factory,
            policy_factory,
            cfg.out,
            episodes=cfg.episodes,
            seed=cfg.seed,
            env_id=cfg.env.id,
            split=cfg.split,
            max_steps=cfg.max_steps,
            frame_format=cfg.frame_format,
            preview_fps=(cfg.env.fps or 10.0) if cfg.preview else None,
            metadata={"env": cfg.env.name, "env_kwargs": cfg.env.kwargs, "policy": cfg.policy.name},
            workers=cfg.workers,
            progress=progress,
            annotator=make_annotator(cfg.annotate),
        )
    table = Table(title=f"collect {cfg.env.id} x {cfg.policy.name} -> {result.root}")
    table.add_column("episodes", justify="left")
    table.add_column("count", justify="right")
    written = result.written
    table.add_row("requested", str(result.requested))
    table.add_row("already present (skipped)", str(len(result.skipped_existing)))
    table.add_row("written now", str(len(written)))
    table.add_row("failed (re-run to retry)", str(len(result.failed)))
    if written:
        steps = sum(e["length"] for e in written)
        ok = [e["success"] for e in written if e.get("success") is not None]
        table.add_row("steps written", str(steps))
        if ok:
            table.add_row("success rate (written)", f"{sum(ok) / len(ok):.2f}")
    console.print(table)
    for eid, error in result.failed[:10]:
        console.print(f"[red]failed[/red] {eid}: {escape(error)}")
    return 0 if not result.failed else 1
