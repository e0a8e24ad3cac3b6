"""`worldbagel <command> [hydra overrides]`: compose the command's config, convert it, dispatch.

The CLI is the only place that prints. It parses the command word with argparse, checks the override keys
against the command's schema (worldbagel/config_check.py), composes `worldbagel/configs/<command>.yaml` with
Hydra's compose API, turns the result into the command's dataclass with `OmegaConf.to_object`, and calls
`worldbagel.commands.<module>.run(cfg, console)` (the composing and running: worldbagel/cli_compose.py).

`-m` / `--multirun` expands sweep overrides (`episodes=1,2`, `seed=range(0,3)`, `policy=glob(*)`) into jobs
with Hydra's own override parser (worldbagel/sweep.py), composes and checks every job first, runs them one
after the other in this process, each with its own output, and prints a summary table. The compose API and
this loop (rather than `@hydra.main`) keep the `worldbagel <command>` word in front of the overrides.
"""

from __future__ import annotations

import argparse
import logging
import sys

from omegaconf import OmegaConf
from rich.console import Console
from rich.logging import RichHandler

from worldbagel.cli_compose import (
    COMMANDS,
    compose,
    config_error,
    config_errors,
    config_groups,
    console,
    hydra_session,
    positional_overrides,
    run_command,
)
from worldbagel.cli_multirun import multirun


def _parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {c.name:<12} {c.help}" for c in COMMANDS.values())
    groups = ", ".join(config_groups()) or "(none)"
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    # torchao (imported by peft and diffusers when installed) warns about every CUDA kernel library it cannot
    # load on a CPU machine and about torch's pytree deprecations, and diffusers about torchao's missing tensor
    # types: noise before every command's output
    for noisy in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    if args.multirun:
        return multirun(
            args.command, positional_overrides(args.command, args.overrides), show_config=args.cfg
        )
    overrides = positional_overrides(args.command, args.overrides)
    try:
        with hydra_session():
            raw = compose(args.command, overrides, for_display=args.cfg)
        if args.cfg:
            console.print(OmegaConf.to_yaml(raw), highlight=False, markup=False)
            return 0
        cfg = OmegaConf.to_object(raw)
    except config_errors() as exc:  # also the schemas' __post_init__ checks
        return config_error(args.command, exc)
    return run_command(args.command, cfg, overrides)[0]


if __name__ == "__main__":
    sys.exit(main())
