"""The CLI's commands and how a command line becomes a config (worldbagel/cli.py parses, this composes).

`COMMANDS` names every command and its module in worldbagel/commands. `compose` checks the override keys
against the command's schema (worldbagel/config_check.py) and composes `worldbagel/configs/<command>.yaml` with
Hydra's compose API inside a `hydra_session`; `compose_config` also converts it to the command's dataclass;
`run_command` runs a converted config and prints its error as one line. worldbagel/cli.py (one run) and
worldbagel/cli_multirun.py (a sweep of jobs) both build on these.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from importlib import resources

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from worldbagel.config_check import check_override_keys, config_error_message
from worldbagel.errors import WorldBagelError, describe_os_error
from worldbagel.run_folder import invocation

console = Console(stderr=False)


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str
    positional: str | None = None
    """Config field that a bare (non `key=value`) argument fills, e.g. `worldbagel info DIR`."""
    out: str | None = "folder"
    """What the config's `out` names: "folder" (a run folder), "file" (one output file) or None (no `out`);
    a sweep gives each job its own (worldbagel/sweep.py)."""


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "info",
            "info",
            "describe a BAGEL model folder (config, parameters per expert, files)",
            "model_dir",
            out=None,
        ),
        Command("rollout", "rollout", "run a policy in an env: mp4/gif per episode, metrics.json, a table"),
        Command("collect", "collect", "record episodes (frames, actions, texts) into a trajectory dataset"),
        Command(
            "generate", "generate", "text (+ image) in, image or text out, on any model folder", out="file"
        ),
        Command("finetune", "finetune", "train a BAGEL (folder or from-scratch preset) on trajectory data"),
        Command("train-vae", "train_vae", "train a small FLUX-layout autoencoder on trajectory frames"),
        Command("predict", "predict", "continue a video clip with the world model (optionally with actions)"),
        Command(
            "reason",
            "reason",
            "ask the world model a question about an image or clip (optional think)",
            out="file",
        ),
        Command("imagine", "imagine", "an imagined rollout next to the real one, side by side, with metrics"),
        Command(
            "eval", "evaluate", "evaluate a world model: NWM frame prediction, planning, Q&A; metrics.json"
        ),
    ]
}


def config_groups() -> list[str]:
    root = resources.files("worldbagel.configs")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


@contextlib.contextmanager
def hydra_session():
    """Hydra's compose API on the package's configs (one session: several composes, one config loader)."""
    # lazy: the schemas import every layer (torch: seconds); --help and argument errors skip them
    from worldbagel.config import register_configs

    register_configs()
    with initialize_config_module("worldbagel.configs", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def positional_overrides(command: str, overrides: list[str]) -> list[str]:
    spec = COMMANDS[command]
    if spec.positional is None:
        return list(overrides)
    return [item if "=" in item else f"{spec.positional}={item}" for item in overrides]


def _mandatory_groups(command: str) -> list[str]:
    """Config groups the command's yaml leaves for the user to choose (`- model: ???`)."""

    text = (resources.files("worldbagel.configs") / f"{command}.yaml").read_text()
    defaults = OmegaConf.to_container(OmegaConf.create(text)).get("defaults") or []
    return [
        k.removeprefix("optional ").strip()
        for d in defaults
        if isinstance(d, dict)
        for k, v in d.items()
        if v == "???"
    ]


def compose(command: str, overrides: list[str], for_display: bool = False):
    """The composed DictConfig of `command` (within a `hydra_session`); overrides checked first.

    `for_display` (--cfg): a mandatory group the command line leaves unset shows as `???` instead of failing.
    """
    # lazy: the schemas import every layer (torch: seconds); --help and argument errors skip them
    from worldbagel.config import SCHEMAS

    parsed = OverridesParser.create().parse_overrides(overrides)
    check_override_keys(command, SCHEMAS[command], parsed, config_groups())
    unset = []
    if for_display:
        given = {o.key_or_group for o in parsed}
        unset = [g for g in _mandatory_groups(command) if g not in given]
    fixed = _sampler_preset(command, overrides, lambda o: hydra_compose(config_name=command, overrides=o))
    cfg = hydra_compose(config_name=command, overrides=[*fixed, *(f"~{g}" for g in unset)])
    for g in unset:
        cfg[g] = "???"
    return cfg


def compose_config(command: str, overrides: list[str]):
    """Compose and convert the config of `command`: (DictConfig, dataclass instance)."""
    with hydra_session():
        cfg = compose(command, positional_overrides(command, overrides))
    return cfg, OmegaConf.to_object(cfg)


def _sampler_preset(command: str, overrides: list[str], compose) -> list[str]:
    """`sampler.<field>=...` without `sampler=<preset>` on a command whose sampler defaults to null (the
    model's own preset) edits that model's preset: `sampler=<model.sampler>` is added first, so the fields
    have a sampler to land in (Hydra cannot set a field of a null group)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if not any(k.startswith("sampler.") for k in keys) or "sampler" in keys:
        return overrides
    plain = [o for o, k in zip(overrides, keys) if not k.startswith("sampler.")]
    base = compose(plain)
    if "sampler" not in base or base.sampler is not None:
        return overrides
    from worldbagel.world_model_loader import model_config  # lazy: imports torch (seconds), needed here only

    model = base.get("model")
    if model is None:  # rollout without model=...: the policy's own model (default: the shipped one)
        policy = base.get("policy")
        model = policy.kwargs.get("model") if policy is not None else None
        model = OmegaConf.to_container(model) if OmegaConf.is_config(model) else model
    preset = model.sampler if OmegaConf.is_config(model) else model_config(model).sampler
    return [f"sampler={preset}", *overrides]


def config_errors() -> tuple[type[BaseException], ...]:
    return HydraException, OmegaConfBaseException, WorldBagelError


def config_error(command: str, exc: BaseException, where: str = "") -> int:
    console.print(
        f"[red]config error[/red] for `worldbagel {command}`{escape(where)}: {escape(config_error_message(exc))}",
        highlight=False,
    )
    return 2


def run_command(command: str, cfg, overrides: list[str]) -> tuple[int, str | None]:
    """Run one composed command: (exit code, error text). A WorldBagelError or OSError is printed as one line
    (exit code 1); `overrides` are recorded in the run folder (worldbagel/run_folder.py)."""

    module = importlib.import_module(f"worldbagel.commands.{COMMANDS[command].module}")
    try:
        with invocation(command, overrides):
            return int(module.run(cfg, console) or 0), None
    except WorldBagelError as exc:
        error = str(exc)
    except OSError as exc:  # disk full, permission denied, ...: what was written before stays (atomic writes)
        error = describe_os_error(exc)
    console.print(f"[red]error:[/red] {escape(error)}", highlight=False)
    return 1, error
