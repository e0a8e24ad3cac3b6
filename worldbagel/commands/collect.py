"""`worldbagel collect env=gridworld policy=oracle episodes=N out=DIR`: record a trajectory dataset (resumable).

With `minari.dataset_id=namespace/name-v0` the finished dataset is also written as a Minari dataset
(worldbagel/data/minari_export.py); the id is checked before anything is recorded.
"""

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
from worldbagel.data.minari_export import check_new_dataset_id, export_minari
from worldbagel.data.trajectory import FRAME_EXTS
from worldbagel.data.trajectory_index import read_index
from worldbagel.errors import bad_argument
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env, first_env, policy_kwargs
from worldbagel.run_folder import run_folder


def headline(cfg: CollectConfig) -> dict[str, float | int | None]:
    """The figures a sweep's summary shows for the dataset in `cfg.out`: episodes, steps, success rate."""
    entries = read_index(cfg.out)
    ok = [e["success"] for e in entries if e.get("success") is not None]
    return {
        "episodes": len(entries),
        "steps": sum(e["length"] for e in entries),
        "success": sum(ok) / len(ok) if ok else None,
    }


def run(cfg: CollectConfig, console: Console) -> int:
    if cfg.frame_format not in FRAME_EXTS:
        raise bad_argument("frame_format", cfg.frame_format, f"use one of {FRAME_EXTS}")
    if cfg.minari.dataset_id is not None:
        check_new_dataset_id(cfg.minari.dataset_id)  # a bad or taken id fails now, not after the collection
    env_factory = partial(build_env, cfg.env.id, cfg.env.kwargs)
    kwargs = policy_kwargs(cfg.policy.name, cfg.policy.kwargs, cfg.model, cfg.sampler)
    policy_factory = partial(make_policy, cfg.policy.name, seed=cfg.seed, **kwargs)
    with (
        run_folder(cfg.out, cfg, "collect"),
        Progress(
            TextColumn("[bold]collect[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar,
    ):
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
    if cfg.minari.dataset_id is not None:
        if result.failed:
            name = escape(cfg.minari.dataset_id)
            console.print(
                f"[yellow]Minari dataset {name} not written[/yellow]: re-run to record the failed episodes"
            )
        else:
            _write_minari(cfg, result.root, env_factory, console)
    return 0 if not result.failed else 1


def _write_minari(cfg: CollectConfig, root, env_factory, console: Console) -> None:
    """Export the whole dataset folder (this run's and earlier runs' episodes) to Minari."""
    m = cfg.minari
    env = first_env(env_factory)  # its action space and spec go into the dataset
    try:
        with console.status(f"writing Minari dataset {m.dataset_id}"):
            dataset = export_minari(
                root,
                m.dataset_id,
                env,
                author=m.author,
                description=m.description,
                algorithm_name=cfg.policy.name,
                jpeg=m.jpeg,
            )
    finally:
        env.close()
    console.print(
        f"wrote Minari dataset {escape(m.dataset_id)} ({dataset.total_episodes} episodes, "
        f"{dataset.total_steps} steps): minari.load_dataset({m.dataset_id!r})",
        highlight=False,
    )
