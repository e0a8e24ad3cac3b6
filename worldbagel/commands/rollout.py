"""`worldbagel rollout env=gridworld policy=random episodes=3`: episodes -> mp4/gif, metrics.json, a table."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worldbagel.config import RolloutConfig
from worldbagel.errors import bad_argument
from worldbagel.policies import make_policy
from worldbagel.rollout import RolloutResult, build_env, run_rollouts


def default_run_dir(prefix: str = "rollout") -> Path:
    """runs/<prefix>-<timestamp>, with a numeric suffix if that folder already exists."""
    base = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


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


def run(cfg: RolloutConfig, console: Console) -> int:
    out = Path(cfg.out) if cfg.out else default_run_dir("rollout")
    env_factory = partial(build_env, cfg.env.id, cfg.env.kwargs)
    policy_kwargs = dict(cfg.policy.kwargs)
    for key in ("model", "sampler"):  # `model=...` / `sampler=...` groups feed world-model policies
        if getattr(cfg, key) is not None:
            if key not in policy_kwargs:
                raise bad_argument(
                    key,
                    getattr(cfg, key).name if key == "model" else key,
                    f"policy={cfg.policy.name} does not use a world model; use policy=planner or policy=reasoning",
                )
            policy_kwargs[key] = getattr(cfg, key)
    policy_factory = partial(make_policy, cfg.policy.name, seed=cfg.seed, **policy_kwargs)
    metadata = {"env": cfg.env.name, "env_id": cfg.env.id, "policy": cfg.policy.name}
    with Progress(
        TextColumn("[bold]rollout[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{cfg.env.name} x {cfg.policy.name}", total=cfg.episodes)
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
        )
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
