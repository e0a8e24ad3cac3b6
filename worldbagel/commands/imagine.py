"""`worldbagel imagine env=gridworld actions=[...]`: an imagined rollout next to the real one.

The real env and an `ImaginedEnv` (the world model, started from the same first frame) are reset with the
same seed and stepped with the same actions (open loop: the model never sees the real frames after the
first). Writes, in the output folder:
- imagine.mp4 / imagine.gif: real | imagined side by side, one frame per step;
- real/NNN.png and imagined/NNN.png;
- metrics.json: per step PSNR and SSIM of the imagined frame against the real one (the real frame resized
  to the model's frame size), the imagined reward / termination, and for top-down GridWorld whether the
  state decoded from the imagined frame equals the real state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from worldbagel.actions import codec_for_env
from worldbagel.atomic_files import atomic_write_text
from worldbagel.commands.predict import run_dir, write_frames
from worldbagel.config import ImagineConfig
from worldbagel.envs.grid_frames import decode_frame
from worldbagel.envs.gridworld import GridWorldEnv
from worldbagel.errors import InvalidAction, bad_argument
from worldbagel.frame_metrics import psnr, ssim
from worldbagel.imagined_env import ImaginedEnv
from worldbagel.json_values import to_jsonable
from worldbagel.rollout import build_env
from worldbagel.run_folder import run_folder
from worldbagel.video import side_by_side, write_video
from worldbagel.world_model_loader import load_world_model


def env_actions(actions: list[Any] | None, steps: int, env, codec, seed: int) -> list:
    """Env actions from indices / action texts, or `steps` seeded random actions."""
    if actions is None:
        if not (isinstance(steps, int) and steps >= 1):
            raise bad_argument("steps", steps, "use an int >= 1 (or give actions=[...])")
        space = env.action_space
        space.seed(seed)
        return [space.sample() for _ in range(steps)]
    if not actions:
        raise bad_argument("actions", actions, "give at least one action (index or text)")
    out = []
    for a in actions:
        try:
            action = codec.decode(a) if isinstance(a, str) else a
        except InvalidAction as exc:
            raise bad_argument("actions", actions, str(exc)) from None
        if not env.action_space.contains(
            np.asarray(action, dtype=env.action_space.dtype).reshape(env.action_space.shape)
        ):
            raise bad_argument(
                "actions", actions, f"{a!r} is not in the env's action space {env.action_space}"
            )
        out.append(action)
    return out


def _decoder(env):
    """A GridWorld top-down state decoder for scoring, or None."""
    u = env.unwrapped
    if not isinstance(u, GridWorldEnv) or u.view != "topdown":
        return None
    return lambda frame: decode_frame(frame, u.size)


def _fit(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))


def headline(cfg: ImagineConfig) -> dict[str, float]:
    """The figures a sweep's summary shows for a finished run in `cfg.out` (its metrics.json means)."""
    doc = json.loads((Path(cfg.out) / "metrics.json").read_text())
    names = {"mean_psnr": "PSNR", "mean_ssim": "SSIM", "state_accuracy": "state acc"}
    return {label: doc[key] for key, label in names.items() if key in doc}


def run(cfg: ImagineConfig, console: Console) -> int:
    real = build_env(cfg.env.id, cfg.env.kwargs)
    codec = codec_for_env(real)
    actions = env_actions(cfg.actions, cfg.steps, real, codec, cfg.seed)
    out = run_dir(cfg.out, "imagine")
    with run_folder(out, cfg, "imagine"):
        return _imagine(cfg, console, out, real, codec, actions)


def _imagine(cfg: ImagineConfig, console: Console, out: Path, real, codec, actions: list) -> int:
    with console.status(f"loading {cfg.model.path or cfg.model.name}"):
        wm = load_world_model(
            cfg.model, cfg.sampler, codec, world={"max_history_frames": cfg.max_history_frames}
        )
    imagined_env = ImaginedEnv(wm, build_env(cfg.env.id, cfg.env.kwargs), max_steps=len(actions) + 1)
    decode = _decoder(real)
    try:
        obs, _ = real.reset(seed=cfg.seed)
        dream, _ = imagined_env.reset(seed=cfg.seed)
        size = dream.shape[:2]
        reals, dreams, rows = [_fit(np.asarray(obs), size)], [dream], []
        with console.status(f"imagining {len(actions)} step(s)"):
            for t, action in enumerate(actions, start=1):
                obs, _, term, trunc, info = real.step(action)
                dream, i_reward, i_term, _, _ = imagined_env.step(action)
                reals.append(_fit(np.asarray(obs), size))
                dreams.append(dream)
                row = {
                    "step": t,
                    "action": codec.encode(action),
                    "psnr": float(psnr(dream, reals[-1])),
                    "ssim": float(ssim(dream, reals[-1])),
                    "imagined_reward": i_reward,
                    "imagined_terminated": i_term,
                }
                if decode is not None:
                    row["state_match"] = decode(dream) == decode(reals[-1])
                rows.append(row)
                if term or trunc:
                    break
    finally:
        real.close()
        imagined_env.close()
    fps = cfg.fps or cfg.env.fps or 4.0
    panel = side_by_side([np.stack(reals), np.stack(dreams)], labels=["real", "imagined"])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if cfg.mp4:
        written.append(write_video(out / "imagine.mp4", panel, fps=fps))
    if cfg.gif:
        written.append(write_video(out / "imagine.gif", panel, fps=fps))
    write_frames(out / "real", reals)
    write_frames(out / "imagined", dreams)
    summary = {
        "mean_psnr": float(np.mean([r["psnr"] for r in rows])),
        "mean_ssim": float(np.mean([r["ssim"] for r in rows])),
    }
    if decode is not None:
        summary["state_accuracy"] = float(np.mean([r["state_match"] for r in rows]))
    doc = {
        "env_id": cfg.env.id,
        "model": cfg.model.path or cfg.model.name,
        "seed": cfg.seed,
        "steps": rows,
        **summary,
    }
    atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(doc), indent=1) + "\n")
    written.append(out / "metrics.json")
    console.print(_table(rows, decode is not None))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 0


def _table(rows: list[dict], with_state: bool) -> Table:
    table = Table(title="imagined vs real")
    for col in ("step", "action", "PSNR", "SSIM", "imagined reward") + (("state ok",) if with_state else ()):
        table.add_column(col, justify="left" if col == "action" else "right")
    for r in rows:
        cells = [
            str(r["step"]),
            r["action"],
            f"{r['psnr']:.2f}",
            f"{r['ssim']:.3f}",
            f"{r['imagined_reward']:.2f}",
        ]
        if with_state:
            cells.append("yes" if r["state_match"] else "no")
        table.add_row(*cells)
    return table
