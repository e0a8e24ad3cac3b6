"""`worldbagel <command> [hydra overrides]`: compose the command's config, convert it, dispatch.

The CLI is the only place that prints. It parses the command word with argparse, checks the override keys
against the command's schema (worldbagel/config_check.py), composes `worldbagel/configs/<command>.yaml` with
Hydra's compose API, turns the result into the command's dataclass with `OmegaConf.to_object`, and calls
`worldbagel.commands.<module>.run(cfg, console)`.

`-m` / `--multirun` expands sweep overrides (`episodes=1,2`, `seed=range(0,3)`, `policy=glob(*)`) into jobs
with Hydra's own override parser (worldbagel/sweep.py), composes and checks every job first, runs them one
after the other in this process, each with its own output, and prints a summary table. The compose API and
this loop (rather than `@hydra.main`) keep the `worldbagel <command>` word in front of the overrides.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from worldbagel.errors import WorldBagelError, describe_os_error

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


def _config_groups() -> list[str]:
    from importlib import resources

    root = resources.files("worldbagel.configs")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {c.name:<12} {c.help}" for c in COMMANDS.values())
    groups = ", ".join(_config_groups()) or "(none)"
    p = argparse.ArgumentParser(
        prog="worldbagel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BAGEL as a world model for embodied agents.",
        epilog=f"commands:\n{lines}\n\nconfig groups: {groups}\n"
        "overrides use Hydra syntax, e.g. `worldbagel rollout env=gridworld episodes=3`;\n"
        "sweeps: `worldbagel rollout -m policy=oracle,random seed=range(0,3)`.",
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value (group=option)")
    p.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="run one job per combination of the swept values (a,b / range(0,3) / glob(*)), then a summary",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return p


@contextlib.contextmanager
def _hydra_session():
    """Hydra's compose API on the package's configs (one session: several composes, one config loader)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from worldbagel.config import register_configs

    register_configs()
    with initialize_config_module("worldbagel.configs", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def _positional(command: str, overrides: list[str]) -> list[str]:
    spec = COMMANDS[command]
    if spec.positional is None:
        return list(overrides)
    return [item if "=" in item else f"{spec.positional}={item}" for item in overrides]


def _mandatory_groups(command: str) -> list[str]:
    """Config groups the command's yaml leaves for the user to choose (`- model: ???`)."""
    from importlib import resources

    from omegaconf import OmegaConf

    text = (resources.files("worldbagel.configs") / f"{command}.yaml").read_text()
    defaults = OmegaConf.to_container(OmegaConf.create(text)).get("defaults") or []
    return [
        k.removeprefix("optional ").strip()
        for d in defaults
        if isinstance(d, dict)
        for k, v in d.items()
        if v == "???"
    ]


def _compose(command: str, overrides: list[str], for_display: bool = False):
    """The composed DictConfig of `command` (within a `_hydra_session`); overrides checked first.

    `for_display` (--cfg): a mandatory group the command line leaves unset shows as `???` instead of failing.
    """
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from worldbagel.config import SCHEMAS
    from worldbagel.config_check import check_override_keys

    parsed = OverridesParser.create().parse_overrides(overrides)
    check_override_keys(command, SCHEMAS[command], parsed, _config_groups())
    unset = []
    if for_display:
        given = {o.key_or_group for o in parsed}
        unset = [g for g in _mandatory_groups(command) if g not in given]
    fixed = _sampler_preset(command, overrides, lambda o: compose(config_name=command, overrides=o))
    cfg = compose(config_name=command, overrides=[*fixed, *(f"~{g}" for g in unset)])
    for g in unset:
        cfg[g] = "???"
    return cfg


def compose_config(command: str, overrides: list[str]):
    """Compose and convert the config of `command`: (DictConfig, dataclass instance)."""
    from omegaconf import OmegaConf

    with _hydra_session():
        cfg = _compose(command, _positional(command, overrides))
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
    from omegaconf import OmegaConf

    from worldbagel.world_model_loader import model_config

    model = base.get("model")
    if model is None:  # rollout without model=...: the policy's own model (default: the shipped one)
        policy = base.get("policy")
        model = policy.kwargs.get("model") if policy is not None else None
        model = OmegaConf.to_container(model) if OmegaConf.is_config(model) else model
    preset = model.sampler if OmegaConf.is_config(model) else model_config(model).sampler
    return [f"sampler={preset}", *overrides]


def _config_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException, WorldBagelError


def _config_error(command: str, exc: BaseException, where: str = "") -> int:
    from worldbagel.config_check import config_error_message

    console.print(
        f"[red]config error[/red] for `worldbagel {command}`{escape(where)}: {escape(config_error_message(exc))}",
        highlight=False,
    )
    return 2


def run_command(command: str, cfg, overrides: list[str]) -> tuple[int, str | None]:
    """Run one composed command: (exit code, error text). A WorldBagelError or OSError is printed as one line
    (exit code 1); `overrides` are recorded in the run folder (worldbagel/run_folder.py)."""
    from worldbagel.run_folder import invocation

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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    # torchao (imported by peft and diffusers when installed) warns about every CUDA kernel library it cannot
    # load on a CPU machine, and about torch's pytree deprecations: noise before every command's output
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    if args.multirun:
        from worldbagel.cli_multirun import multirun

        return multirun(args.command, _positional(args.command, args.overrides), show_config=args.cfg)
    from omegaconf import OmegaConf

    overrides = _positional(args.command, args.overrides)
    try:
        with _hydra_session():
            raw = _compose(args.command, overrides, for_display=args.cfg)
        if args.cfg:
            console.print(OmegaConf.to_yaml(raw), highlight=False, markup=False)
            return 0
        cfg = OmegaConf.to_object(raw)
    except _config_errors() as exc:  # also the schemas' __post_init__ checks
        return _config_error(args.command, exc)
    return run_command(args.command, cfg, overrides)[0]


if __name__ == "__main__":
    sys.exit(main())
