"""`worldbagel <command> [hydra overrides]`: compose the command's config, convert it, dispatch.

The CLI is the only place that prints. It parses the command word with argparse, composes
`worldbagel/configs/<command>.yaml` with Hydra's compose API, turns the result into the command's
dataclass with `OmegaConf.to_object`, and calls `worldbagel.commands.<module>.run(cfg)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from rich.console import Console

from worldbagel.errors import WorldBagelError, describe_os_error

console = Console(stderr=False)


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str
    positional: str | None = None
    """Config field that a bare (non `key=value`) argument fills, e.g. `worldbagel info DIR`."""


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "info",
            "info",
            "describe a BAGEL model folder (config, parameters per expert, files)",
            "model_dir",
        ),
        Command("rollout", "rollout", "run a policy in an env: mp4/gif per episode, metrics.json, a table"),
        Command("collect", "collect", "record episodes (frames, actions, texts) into a trajectory dataset"),
        Command("generate", "generate", "text (+ image) in, image or text out, on any model folder"),
        Command("finetune", "finetune", "train a BAGEL (folder or from-scratch preset) on trajectory data"),
        Command("train-vae", "train_vae", "train a small FLUX-layout autoencoder on trajectory frames"),
        Command("predict", "predict", "continue a video clip with the world model (optionally with actions)"),
        Command("reason", "reason", "ask the world model a question about an image or clip (optional think)"),
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
        "overrides use Hydra syntax, e.g. `worldbagel rollout env=gridworld episodes=3`.",
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value (group=option)")
    p.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return p


def compose_config(command: str, overrides: list[str]):
    """Compose and convert the config of `command` (a dataclass instance)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from worldbagel.config import register_configs

    register_configs()
    spec = COMMANDS[command]
    fixed = []
    for item in overrides:
        if "=" not in item and spec.positional is not None:
            item = f"{spec.positional}={item}"
        fixed.append(item)
    with initialize_config_module("worldbagel.configs", version_base="1.3"):
        fixed = _sampler_preset(command, fixed, lambda o: compose(config_name=command, overrides=o))
        cfg = compose(config_name=command, overrides=fixed)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw, cfg = compose_config(args.command, args.overrides)
    except (HydraException, OmegaConfBaseException, WorldBagelError) as exc:  # schema __post_init__ checks
        console.print(f"[red]config error[/red] for `worldbagel {args.command}`: {exc}")
        return 2
    if args.cfg:
        console.print(OmegaConf.to_yaml(raw), highlight=False, markup=False)
        return 0
    module = importlib.import_module(f"worldbagel.commands.{COMMANDS[args.command].module}")
    try:
        return int(module.run(cfg, console) or 0)
    except WorldBagelError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    except OSError as exc:  # disk full, permission denied, ...: what was written before stays (atomic writes)
        console.print(f"[red]error:[/red] {describe_os_error(exc)}", markup=True, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
