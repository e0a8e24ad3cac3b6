"""`worldbagel train-vae data=<trajectory dir> out=<dir>`: a small FLUX-layout autoencoder for a new domain."""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import asdict

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worldbagel.config import TrainVAEConfig
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.errors import bad_argument
from worldbagel.model.vae import load_vae
from worldbagel.run_folder import run_folder
from worldbagel.tracking import open_tracker, require_backend
from worldbagel.train.vae_trainer import frames_tensor, reconstruction_loss, save_trained_vae, train_vae

logger = logging.getLogger(__name__)


def collect_frames(
    root: str, splits: list[str] | None, max_frames: int | None, success_repeat: int = 0
) -> list[np.ndarray]:
    """Frames of a trajectory folder, at most `max_frames`, spread evenly over all of them, then the final
    frame of every successful episode `success_repeat` more times."""
    if not isinstance(success_repeat, int) or success_repeat < 0:
        raise bad_argument("success_repeat", success_repeat, "use a whole number >= 0 (0 adds no frames)")
    dataset = TrajectoryDataset(root, splits=splits)
    counts = [ep.length + 1 for ep in dataset]
    total = sum(counts)
    if total == 0:
        raise bad_argument("data", root, "holds no valid episode with frames")
    keep = (
        set(range(total))
        if not max_frames or total <= max_frames
        else set(np.linspace(0, total - 1, max_frames).round().astype(int).tolist())
    )
    frames, offset = [], 0
    for ep, n in zip(dataset, counts):
        wanted = [t for t in range(n) if offset + t in keep]
        frames.extend(ep.load_frame(t) for t in wanted)
        offset += n
    if success_repeat:
        arrivals = [
            ep.load_frame(n - 1) for ep, n in zip(dataset, counts) if (ep.metadata or {}).get("success")
        ]
        logger.info("adding %d final frames of successful episodes x %d", len(arrivals), success_repeat)
        frames += arrivals * success_repeat
    return frames


def run(cfg: TrainVAEConfig, console: Console) -> int:
    require_backend(cfg.tracker)  # a missing tensorboard / wandb fails before any frame is read
    with run_folder(cfg.out, cfg, "train-vae", exclusive=True):  # config.yaml saved; one writer per folder
        return _train(cfg, console)


def _train(cfg: TrainVAEConfig, console: Console) -> int:
    frames = collect_frames(cfg.data, cfg.splits, cfg.max_frames, cfg.success_repeat)
    for extra in cfg.extra_data:
        frames += collect_frames(extra, cfg.splits, None)
    sources = ", ".join([cfg.data, *cfg.extra_data])
    console.print(f"train-vae on {len(frames)} frames from {sources} -> {cfg.out}")
    tracking = closing(open_tracker(cfg.tracker, cfg.out, "train-vae", asdict(cfg)))  # closed when done
    with (
        tracking as tracker,
        Progress(
            TextColumn("[bold]vae"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("vae", total=cfg.train.steps, stats="")

        def on_step(m: dict) -> None:
            progress.update(task, completed=m["step"], stats=f"recon {m['recon']:.4f} kl {m['kl']:.3f}")

        init = None
        if cfg.init:
            init = load_vae(cfg.init)
        vae, logs = train_vae(
            frames,
            init.config if init else cfg.vae,
            cfg.train,
            on_step,
            init=init,
            tracker=tracker,
            track_every=cfg.tracker.every,
            media_every=cfg.tracker.media_every,
        )
    save_trained_vae(vae, cfg.out, logs)
    x = frames_tensor(frames[: min(len(frames), 64)], cfg.train.image_size).to(vae.device)
    table = Table(title="train-vae")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(
        f"{cfg.train.recon} reconstruction (posterior mean)",
        f"{float(reconstruction_loss(vae, x, cfg.train.recon)):.4f}",
    )
    table.add_row(
        "shift_factor / scale_factor", f"{vae.config.shift_factor:.4f} / {vae.config.scale_factor:.4f}"
    )
    table.add_row("output", str(cfg.out))
    console.print(table)
    return 0
