"""`worldbagel <command> -m <overrides>`: the jobs of a sweep, run one after the other, and a summary table.

Every job's config is composed and checked before the first job starts, so a bad value in the last job
fails at once. Jobs run in this process in order; a failing job is reported and the sweep goes on. The
summary table lists each job's swept values, its status, its output (relative to the sweep folder) and the
command's headline figures (a command module's `headline(cfg)`, e.g. rollout: success rate and SPL).
Exit code: 0 when every job succeeded, 1 otherwise, 2 for a config error, 130 when interrupted.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from omegaconf import OmegaConf
from rich.markup import escape
from rich.table import Table

from worldbagel import cli_compose as cli
from worldbagel.sweep import Job, Sweep, assign_outputs, expand, write_record

__all__ = ["multirun", "summary_table"]

logger = logging.getLogger(__name__)


def _label(job: Job) -> str:
    return " ".join(f"{k}={v}" for k, v in job.swept.items()) or "(no swept value)"


def _plan(command: str, overrides: list[str], show_config: bool):
    """(sweep, composed DictConfig per job); config errors propagate."""
    spec = cli.COMMANDS[command]
    out_given = any(o.split("=", 1)[0].lstrip("+") == "out" for o in overrides)
    with cli.hydra_session() as loader:
        sweep = expand(command, overrides, loader)
        if spec.out is not None:
            first = _compose(command, sweep.jobs[0], for_display=True)
            out = None if OmegaConf.is_missing(first, "out") else first.get("out")
            assign_outputs(sweep, spec.out, out, out_given)
        raws = [_compose(command, job, show_config) for job in sweep.jobs]
    return sweep, raws


def _compose(command: str, job: Job, for_display: bool):
    try:
        return cli.compose(command, job.overrides, for_display=for_display)
    except Exception as exc:  # the error message names the job
        exc.add_note(f"job {job.num}: {_label(job)}")
        raise


def multirun(command: str, overrides: list[str], show_config: bool = False) -> int:
    """Run the sweep of `overrides` (see the module docstring); with `show_config`, print each job's config."""
    try:
        sweep, raws = _plan(command, overrides, show_config)
        if show_config:
            for job, raw in zip(sweep.jobs, raws):
                cli.console.print(f"# job {job.num}: {_label(job)}", highlight=False, markup=False)
                cli.console.print(OmegaConf.to_yaml(raw), highlight=False, markup=False)
            return 0
        cfgs = [OmegaConf.to_object(raw) for raw in raws]
    except cli.config_errors() as exc:
        notes = getattr(exc, "__notes__", [])
        return cli.config_error(command, exc, f" ({notes[-1]})" if notes else "")
    return _run_jobs(sweep, cfgs)


def _run_jobs(sweep: Sweep, cfgs: list) -> int:
    console = cli.console
    module = importlib.import_module(f"worldbagel.commands.{cli.COMMANDS[sweep.command].module}")
    headline = getattr(module, "headline", None)
    n = len(sweep.jobs)
    write_record(sweep)
    where = f" -> {sweep.folder}" if sweep.folder is not None else ""
    console.print(f"sweep of {n} job(s) of worldbagel {sweep.command}{escape(where)}", highlight=False)
    try:
        for job, cfg in zip(sweep.jobs, cfgs):
            console.rule(escape(f"job {job.num} ({job.num + 1}/{n}): {_label(job)}"))
            try:
                job.rc, job.error = cli.run_command(sweep.command, cfg, job.overrides)
                job.status = "ok" if job.rc == 0 else "failed"
            except Exception as exc:  # a bug in one job must not lose the others: logged with its traceback
                logger.exception("job %d failed", job.num)
                job.status, job.error = "error", f"{type(exc).__name__}: {exc}"
            if headline is not None and job.status != "error":
                try:
                    job.headline = headline(cfg)
                except (OSError, ValueError, KeyError, TypeError) as exc:  # no metrics written: no figures
                    logger.debug("no headline for job %d: %s", job.num, exc)
            write_record(sweep)
    except KeyboardInterrupt:
        for job in sweep.jobs:
            if job.status == "pending":
                job.status = "not run"
        write_record(sweep)
        console.print(summary_table(sweep))
        return 130
    console.print(summary_table(sweep))
    for job in sweep.jobs:
        if job.error:
            console.print(f"[red]job {job.num}:[/red] {escape(job.error)}", highlight=False)
    return 0 if all(job.status == "ok" for job in sweep.jobs) else 1


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_STATUS = {"ok": "[green]ok[/green]", "failed": "[red]exit {rc}[/red]", "error": "[red]error[/red]"}


def summary_table(sweep: Sweep) -> Table:
    """One row per job: its swept values (one `key=value` per line, so any number of swept keys takes one
    column), status, output (relative to the sweep folder) and headline figures. Columns fold rather than
    truncate: at 80 columns nothing is dropped."""
    ok = sum(job.status == "ok" for job in sweep.jobs)
    title = f"worldbagel {sweep.command} --multirun: {ok}/{len(sweep.jobs)} ok"
    caption = f"outputs under {sweep.folder}" if sweep.folder is not None else None
    table = Table(title=escape(title), caption=escape(caption) if caption else None)
    figures = list(dict.fromkeys(k for job in sweep.jobs for k in job.headline))
    table.add_column("job", justify="right", overflow="fold")
    table.add_column("swept", overflow="fold")
    table.add_column("status", overflow="fold")
    if sweep.folder is not None:
        table.add_column("output", overflow="fold")
    for key in figures:
        table.add_column(escape(key), justify="right", overflow="fold")
    for job in sweep.jobs:
        status = _STATUS.get(job.status, job.status).format(rc=job.rc)
        cells = [str(job.num), escape("\n".join(f"{k}={v}" for k, v in job.swept.items()) or "-"), status]
        if sweep.folder is not None:
            out = Path(job.out) if job.out else None
            cells.append(escape(str(out.relative_to(sweep.folder))) if out is not None else "-")
        cells += [_fmt(job.headline.get(k)) for k in figures]
        table.add_row(*cells)
    return table
