"""`worldbagel <command> --multirun ...`: the jobs of a sweep and the output of each job.

Overrides are parsed with Hydra's own override grammar (`OverridesParser`) and expanded as Hydra's
BasicSweeper does: every sweep override (`episodes=1,2`, `seed=range(0,3)`, `policy=glob(*)`,
`x=choice(a,b)`) gives a list of values, and the jobs are their cartesian product, in command-line order (the
last key varies fastest). A key given twice keeps its last value.

Jobs never share an output. For a command whose `out` is a run folder, job N writes `<sweep folder>/N`, the
sweep folder being `out=` when given, else the folder a single run would have used (runs/<command>-<time>);
for a command whose `out` is one file, job N writes `<folder of out>/N/<file name>`. A swept `out` is left as
given. The sweep folder holds `multirun.yaml` (command, overrides, and each job's overrides, output and
outcome), rewritten after every job.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from worldbagel.atomic_files import atomic_write_text
from worldbagel.errors import bad_argument
from worldbagel.run_folder import default_run_dir

__all__ = ["SWEEP_RECORD", "Job", "Sweep", "expand", "quote", "write_record"]

SWEEP_RECORD = "multirun.yaml"


@dataclass
class Job:
    """One run of a sweep."""

    num: int
    overrides: list[str]
    """Every override of this job (the sweep's fixed ones, its swept values, and its `out=`)."""
    swept: dict[str, str]
    """This job's value of each swept key, as written on a command line."""
    out: str | None = None
    """This job's output (run folder or file); None when the command writes none."""
    status: str = "pending"
    """pending, ok, failed (exit code != 0), error (an exception), or not run."""
    rc: int | None = None
    error: str | None = None
    headline: dict[str, Any] = field(default_factory=dict)
    """The command's summary figures for this job (e.g. rollout: success, SPL), when it has any."""


@dataclass
class Sweep:
    """The jobs of one `--multirun` and the folder holding their outputs (None: no output)."""

    command: str
    overrides: list[str]
    jobs: list[Job]
    swept_keys: list[str]
    folder: Path | None = None


def quote(value: str) -> str:
    """`value` as a quoted string of Hydra's override grammar (any path survives it)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand(command: str, overrides: list[str], config_loader: Any = None) -> Sweep:
    """The jobs of `overrides` (see the module docstring); `config_loader` lists group options for glob()."""
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(overrides)
    choices: dict[str, list[str]] = {}
    swept: list[str] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise bad_argument(
                    o.input_line or key,
                    o.input_line,
                    "a sweep takes a list of values (a,b / range(0,3) / choice(a,b) / glob(*)), not interval()",
                )
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            if key not in swept:
                swept.append(key)
        else:
            choices[key] = [o.input_line or f"{key}={o.get_value_element_as_str()}"]  # as the user wrote it
            if key in swept:
                swept.remove(key)
    jobs = []
    for num, combo in enumerate(itertools.product(*choices.values())):
        values = dict(zip(choices, combo))
        jobs.append(Job(num, list(combo), {k: values[k].split("=", 1)[1] for k in swept}))
    return Sweep(command, list(overrides), jobs, swept)


def assign_outputs(sweep: Sweep, kind: str | None, out: str | None, out_given: bool) -> None:
    """Give every job of `sweep` its own output (see the module docstring).

    `kind`: "folder" (out is a run folder), "file" (out is one file) or None (no output); `out`: the
    command's `out` value before the sweep (None when unset); `out_given`: whether the command line set it.
    """
    if kind is None or any(k.lstrip("+") == "out" for k in sweep.swept_keys):
        return
    if kind == "folder":
        folder = Path(out) if out_given and out not in (None, "???") else default_run_dir(sweep.command)
        paths = [folder / str(job.num) for job in sweep.jobs]
    elif out is None:  # an optional output file left unset: the jobs write none
        return
    else:
        name = Path(out).name
        folder = Path(out).parent if out_given else default_run_dir(sweep.command)
        paths = [folder / str(job.num) / name for job in sweep.jobs]
    sweep.folder = folder
    for job, path in zip(sweep.jobs, paths):
        job.out = str(path)
        job.overrides = [o for o in job.overrides if o.split("=", 1)[0].lstrip("+") != "out"]
        job.overrides.append(f"out={quote(str(path))}")


def write_record(sweep: Sweep) -> Path | None:
    """Write (or rewrite) `<sweep folder>/multirun.yaml`; returns its path (None without a sweep folder)."""
    if sweep.folder is None:
        return None
    doc = {
        "command": sweep.command,
        "overrides": sweep.overrides,
        "swept": sweep.swept_keys,
        "jobs": [
            {
                "num": j.num,
                "overrides": j.overrides,
                "out": j.out,
                "status": j.status,
                "rc": j.rc,
                "error": j.error,
                "headline": dict(j.headline),
            }
            for j in sweep.jobs
        ],
    }
    sweep.folder.mkdir(parents=True, exist_ok=True)
    path = sweep.folder / SWEEP_RECORD
    atomic_write_text(path, OmegaConf.to_yaml(doc))
    return path
