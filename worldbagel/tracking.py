"""Experiment tracking: one `Tracker` interface with TensorBoard and Weights & Biases backends.

    require_backend(cfg.tracker)                  # at command start: a missing package fails before any loading
    tracker = open_tracker(cfg.tracker, out, "finetune", config=asdict(cfg))
    tracker.log_scalars(step, {"train/loss": 0.31})
    tracker.log_images(step, "predicted/next_frame", [image, ...])    # uint8 [H, W, 3] each
    tracker.log_video(step, "predicted/open_loop", frames, fps=4)     # uint8 [T, H, W, 3]
    tracker.close()

Backends (`tracker.backend`):
    none         NullTracker: every call does nothing (the default).
    tensorboard  torch.utils.tensorboard's SummaryWriter into <out>/tensorboard (the `tensorboard` package;
                 `pip install "worldbagel[tracking]"`); `tensorboard --logdir <out>/tensorboard` shows it.
                 Videos are animated GIF image summaries (TensorBoard's own `add_video` needs moviepy).
    wandb        Weights & Biases, run files in <out>/wandb (the `wandb` package). `tracker.mode=offline` (or
                 WANDB_MODE=offline) records without network; `wandb sync <out>/wandb/offline-run-*` uploads.

`open_tracker` records the command's resolved config with the code version (package version, git SHA:
worldbagel/code_version.py) as its first entry: TensorBoard text tags `config` and `code_version`, the W&B
run config. Only the main process of a run opens a real tracker; the others log nothing.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from PIL import Image

from worldbagel.atomic_files import atomic_write_text
from worldbagel.code_version import code_version
from worldbagel.errors import DependencyNotInstalled, bad_argument

__all__ = [
    "BACKENDS",
    "NullTracker",
    "TensorBoardTracker",
    "Tracker",
    "TrackerConfig",
    "WandbTracker",
    "open_tracker",
    "require_backend",
]

logger = logging.getLogger(__name__)

BACKENDS = ("none", "tensorboard", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
INSTALL = 'pip install "worldbagel[tracking]"'


@dataclass
class TrackerConfig:
    """Where a run's scalars, predicted frames and config go (`tracker.*` on the command line)."""

    backend: str = "none"
    """none, tensorboard (<out>/tensorboard) or wandb (<out>/wandb); both need the `tracking` extra."""
    project: str = "worldbagel"
    """W&B project name (TensorBoard ignores it)."""
    name: str | None = None
    """Run name shown by W&B; None: the run folder's name."""
    mode: str | None = None
    """W&B mode: online, offline (no network; `wandb sync` later) or disabled; None: W&B's own default
    (the WANDB_MODE environment variable, else online)."""
    every: int = 1
    """Training commands (finetune, train-vae) send their scalars every this many optimizer steps (and at
    the last step)."""
    media_every: int = 100
    """Images and videos of predicted frames every this many steps (finetune: next frames and an open-loop
    rollout of the model in training; train-vae: reconstructions), or every this many episodes (rollout:
    the episode videos); 0 logs none."""
    media_samples: int = 2
    """finetune: windows whose next frame is predicted for the images (few: each costs a sampling run)."""
    media_frames: int = 4
    """finetune: frames predicted open loop for the video (0: no video)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise bad_argument("tracker.backend", self.backend, f"use one of {list(BACKENDS)}")
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise bad_argument("tracker.mode", self.mode, f"use one of {list(WANDB_MODES)} or null")
        for name, least in (("every", 1), ("media_every", 0), ("media_samples", 0), ("media_frames", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise bad_argument(f"tracker.{name}", value, f"use a whole number >= {least}")


class Tracker(Protocol):
    """What commands log through; every backend (and NullTracker) implements it."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_images(self, step: int, name: str, frames: Sequence[np.ndarray] | np.ndarray) -> None: ...

    def log_video(self, step: int, name: str, frames: np.ndarray, fps: float = 4.0) -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """`tracker.backend=none`, and every process but the main one: logs nothing."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_images(self, step: int, name: str, frames: Sequence[np.ndarray] | np.ndarray) -> None:
        pass

    def log_video(self, step: int, name: str, frames: np.ndarray, fps: float = 4.0) -> None:
        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _import_backend(backend: str) -> Any:
    """The backend's module; DependencyNotInstalled (with the pip command) when it cannot be imported."""
    # optional packages, imported only for a run that tracks with them
    module = "torch.utils.tensorboard" if backend == "tensorboard" else "wandb"
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyNotInstalled(
            f"tracker.backend={backend} needs the {backend} package ({exc}): {INSTALL} "
            f"(or pip install {backend}), or use tracker.backend=none"
        ) from exc


def require_backend(cfg: TrackerConfig) -> None:
    """Fail now, with the install command, when `cfg.backend`'s package is missing: commands call this
    before they read data or load a model."""
    if cfg.backend != "none":
        _import_backend(cfg.backend)


def _images(frames: Sequence[np.ndarray] | np.ndarray, name: str) -> np.ndarray:
    """uint8 [N, H, W, 3] from one image or a sequence of images of one size."""
    array = np.asarray(frames[None] if isinstance(frames, np.ndarray) and frames.ndim == 3 else frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or len(array) == 0:
        raise bad_argument(name, getattr(array, "shape", None), "give uint8 RGB images [H, W, 3] of one size")
    return array


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """An animated GIF (looping) of uint8 frames [T, H, W, 3]."""

    pictures = [Image.fromarray(f) for f in _images(frames, "frames")]
    buffer = io.BytesIO()
    duration = max(20, int(round(1000.0 / max(fps, 1e-3))))
    pictures[0].save(
        buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=duration, loop=0
    )
    return buffer.getvalue()


def _yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)


class TensorBoardTracker:
    """TensorBoard event files in `log_dir` (SummaryWriter)."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        tensorboard = _import_backend("tensorboard")
        self.log_dir = Path(log_dir)
        # purge_step: a resumed run drops the events its previous attempt logged after the checkpoint
        self.writer = tensorboard.SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    def log_images(self, step: int, name: str, frames: Sequence[np.ndarray] | np.ndarray) -> None:
        self.writer.add_images(name, _images(frames, name), step, dataformats="NHWC")

    def log_video(self, step: int, name: str, frames: np.ndarray, fps: float = 4.0) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary  # lazy: optional dependency (tracking extra)

        video = _images(frames, name)
        image = Summary.Image(
            height=video.shape[1],
            width=video.shape[2],
            colorspace=3,
            encoded_image_string=gif_bytes(video, fps),
        )
        # the writer's public add_video needs moviepy; an encoded GIF is what it would write
        self.writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=name, image=image)]), step
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        for key, value in config.items():
            text = _yaml(value) if isinstance(value, Mapping) else _yaml({key: value})
            # four leading spaces: TensorBoard renders text as markdown, this keeps the yaml a code block
            self.writer.add_text(key, "\n".join("    " + line for line in text.splitlines()), 0)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run whose files go to `<folder>/wandb`; a resumed run in the same folder continues the
    same W&B run (its id is kept in `<folder>/wandb/run_id`)."""

    def __init__(self, cfg: TrackerConfig, folder: str | Path, resume: bool = False):
        wandb = _import_backend("wandb")
        self.wandb = wandb
        folder = Path(folder)
        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        id_file = folder / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:12]
        settings = wandb.Settings(
            silent=True,  # the library does not print; W&B's own log files are in <folder>/wandb
            console="off",  # leave stdout / stderr (the CLI's progress bars) alone
            x_disable_stats=True,
            disable_git=True,  # the code version is in the config (worldbagel/code_version.py)
        )
        self.run = wandb.init(
            project=cfg.project,
            name=cfg.name or folder.resolve().name,
            dir=str(folder),
            mode=cfg.mode,
            id=run_id,
            resume="allow",
            settings=settings,
        )
        atomic_write_text(id_file, run_id + "\n")

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def log_images(self, step: int, name: str, frames: Sequence[np.ndarray] | np.ndarray) -> None:
        self.run.log({name: [self.wandb.Image(f) for f in _images(frames, name)]}, step=step)

    def log_video(self, step: int, name: str, frames: np.ndarray, fps: float = 4.0) -> None:
        # encoded here: W&B encodes raw arrays with moviepy, which this project does not need
        gif = io.BytesIO(gif_bytes(_images(frames, name), fps))
        self.run.log({name: self.wandb.Video(gif, format="gif")}, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(json.loads(json.dumps(dict(config), default=str)), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


def open_tracker(
    cfg: TrackerConfig,
    folder: str | Path,
    command: str,
    config: Mapping[str, Any] | None = None,
    resume_step: int | None = None,
) -> Tracker:
    """The tracker `cfg` asks for, writing under the run folder `folder`, with `config` (the command's resolved
    config) and the code version already logged. `resume_step`: the step a resumed training run continues
    from (TensorBoard drops later events of the interrupted attempt; W&B continues the same run)."""

    if cfg.backend == "none":
        return NullTracker()
    if cfg.backend == "tensorboard":
        tracker: Tracker = TensorBoardTracker(Path(folder) / "tensorboard", purge_step=resume_step)
    else:
        tracker = WandbTracker(cfg, folder, resume=resume_step is not None)
    tracker.log_config({"command": command, "config": dict(config or {}), "code_version": code_version()})
    logger.info("tracking %s with %s in %s", command, cfg.backend, folder)
    return tracker
