"""`worldbagel predict video=CLIP frames=N [actions=[...]]`: continue a clip with the world model.

Only the clip's last `max_history_frames` frames (the ones the model's window keeps) are encoded, in order; then
N frames are predicted, each after its action text when actions are given. Writes, in the output folder:
continuation.mp4 / continuation.gif (the clip's kept frames in a grey border, then the predicted frames in a
magenta border, at the predicted size) and frames/000.png ... (the predicted frames alone, lossless).

A model folder that declares its domain (worldbagel.json, e.g. the shipped gridworld model: 64x64 flat-colour
mazes) is checked against the clip, and a clip off that domain gets a warning naming the model for real
footage (worldbagel/model/domain.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from worldbagel.config import PredictConfig
from worldbagel.errors import bad_argument
from worldbagel.eval.png_canvas import save_png_atomic
from worldbagel.inference.pipeline import shipped_model_dir
from worldbagel.media import read_clip
from worldbagel.model.domain import check_clip
from worldbagel.model.hub import resolve_model_folder
from worldbagel.run_folder import default_run_dir, run_folder
from worldbagel.video import bordered, resize_frames, write_video
from worldbagel.world_model_loader import load_world_model

logger = logging.getLogger(__name__)

CONTEXT_BORDER = (128, 128, 128)
"""Border of the clip's frames in the continuation video."""
PREDICTED_BORDER = (255, 0, 255)
"""Border of the predicted frames in the continuation video (a colour no gridworld frame uses)."""


def run_dir(out: str | None, prefix: str) -> Path:
    """`out`, or runs/<prefix>-<timestamp> (with a numeric suffix when that folder exists)."""
    return Path(out) if out else default_run_dir(prefix)


def write_frames(folder: Path, frames, prefix: str = "") -> list[Path]:
    """Each frame as folder/<prefix>NNN.png (atomic writes)."""
    return [
        save_png_atomic(
            folder / f"{prefix}{i:03d}.png", lambda tmp, f=f: Image.fromarray(f).save(tmp, format="PNG")
        )
        for i, f in enumerate(frames)
    ]


def continuation_video(context: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The clip's kept frames (resized to the predicted size, grey border) followed by the predicted frames
    (magenta border): [len(context) + len(predicted), H + 2b, W + 2b, 3], b = max(2, min(H, W) // 32)."""
    h, w = predicted.shape[1:3]
    width = max(2, min(h, w) // 32)
    return np.concatenate(
        [
            bordered(resize_frames(context, (h, w)), CONTEXT_BORDER, width),
            bordered(predicted, PREDICTED_BORDER, width),
        ]
    )


def model_folder(model) -> Path:
    """The folder a ModelConfig loads from: model.path (a folder or a cached repo id) or the shipped model."""
    return resolve_model_folder(model.path) if model.path else shipped_model_dir(model.name)


def run(cfg: PredictConfig, console: Console) -> int:
    actions = list(cfg.actions) if cfg.actions is not None else None
    if actions is not None:
        bad = [a for a in actions if not isinstance(a, str) or not a.strip()]
        if bad or not actions:
            raise bad_argument("actions", cfg.actions, "give action texts, e.g. actions=[move up,move right]")
    n = cfg.frames if cfg.frames is not None else (len(actions) if actions else 4)
    if not (isinstance(n, int) and n >= 1):
        raise bad_argument("frames", cfg.frames, "predict at least 1 frame")
    if actions is not None and len(actions) != n:
        raise bad_argument(
            "frames", cfg.frames, f"give one action per predicted frame ({len(actions)} actions)"
        )
    if not cfg.fps > 0:
        raise bad_argument("fps", cfg.fps, "use a positive frame rate")
    clip = read_clip(cfg.video, "video")
    out = run_dir(cfg.out, "predict")
    with run_folder(out, cfg, "predict"):
        return _predict(cfg, console, out, clip, actions, n)


def _predict(cfg: PredictConfig, console: Console, out: Path, clip: np.ndarray, actions, n: int) -> int:
    with console.status(f"loading {cfg.model.path or cfg.model.name}"):
        wm = load_world_model(cfg.model, cfg.sampler, world={"max_history_frames": cfg.max_history_frames})
    # older frames would leave the window before the prediction: encoding them is wasted work
    context = clip[-wm.config.max_history_frames :]
    if len(context) < len(clip):
        logger.info("the window keeps the last %d of the clip's %d frames", len(context), len(clip))

    check_clip(model_folder(cfg.model), context, cfg.model.path or cfg.model.name)
    generator = torch.Generator().manual_seed(cfg.seed)
    with console.status(f"reading {len(context)} frame(s) and predicting {n}"):
        wm.reset(context[0], instruction=cfg.instruction)
        for frame in context[1:]:
            wm.observe(frame)
        predicted = np.stack(wm.predict(n, actions, generator=generator))
    out.mkdir(parents=True, exist_ok=True)
    write_frames(out / "frames", predicted)
    written = [out / "frames"]
    video = continuation_video(context, predicted) if cfg.mp4 or cfg.gif else None
    if cfg.mp4:
        written.append(write_video(out / "continuation.mp4", video, fps=cfg.fps))
    if cfg.gif:
        written.append(write_video(out / "continuation.gif", video, fps=cfg.fps))
    h, w = predicted.shape[1:3]
    console.print(
        f"predicted {n} frame(s) of {w}x{h} after the clip's last {len(context)} of {len(clip)} frame(s) "
        "(videos: clip frames in grey, predicted frames in magenta)"
    )
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 0
