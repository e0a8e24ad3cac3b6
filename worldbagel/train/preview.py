"""Predicted frames of a model in training, for the tracker: real | predicted images and an open-loop video.

    preview = FramePreview(episodes, plan, samples=2, frames=4, vae_transform=..., vit_transform=...)
    images, video = preview.render(model, vae, tokenizer)

`samples` windows of the given episodes (held-out ones when the run has them) are read once, when the preview
is built: window i comes from episode i (mod the number of episodes), from the middle of its windows (spread
over them when an episode gives several), with the run's context frames and frame skip (`plan`), so every
render shows the same windows. `render` wraps the model being
trained (no copy) in a BagelPipeline with the run's autoencoder, tokenizer and image transforms, replays each
window's context frames and actions into a WorldModel, as inference does, and predicts:

- images: one per window, `context | real | predicted` (the last context frame, the real next frame and the
  predicted one), uint8 [H, W, 3], padded to one size;
- video: the first episode's opening window continued open loop for up to `frames` frames, `real | predicted`
  side by side (both start with the context frames), uint8 [T, H, W, 3]; None when `frames` is 0.

Sampling uses `sampler` (the model's own preset in `worldbagel finetune`) with a fixed seed, so the frames of
different steps differ only by the weights. The model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from worldbagel.data.sequence_plan import PlanConfig, episode_texts, windows
from worldbagel.errors import bad_argument
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig as GenerationConfig
from worldbagel.model.transforms import ImageTransform
from worldbagel.video import side_by_side
from worldbagel.world_model import WorldModel, WorldModelConfig


@dataclass
class PreviewWindow:
    """Frames and action texts of one window: action i leads from frames[i] to frames[i + 1]."""

    frames: np.ndarray
    """uint8 [C + H, h, w, 3]: the context frames, then the real frames to predict."""
    actions: list[str]
    """C + H - 1 action texts (empty for clips without actions)."""
    context: int
    """C: how many of the frames are context."""
    instruction: str | None = None


def _frames_at(episode: Any, indices: Sequence[int]) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] of an episode, without keeping the episode's frames in memory."""
    if hasattr(episode, "read_frames"):  # a video clip: decoded in one pass
        return np.asarray(episode.read_frames())[list(indices)]
    if hasattr(episode, "load_frame"):
        return np.stack([episode.load_frame(i) for i in indices])
    return np.asarray(episode.frames)[list(indices)]


def _window(episode: Any, plan: PlanConfig, horizon: int, where: float = 0.0) -> PreviewWindow | None:
    """The window of `episode` predicting `horizon` frames at fraction `where` of its windows (0: the first),
    None when none fits."""
    cfg = replace(plan, horizon=horizon, min_context_frames=None)
    found = windows(int(episode.length) + 1, cfg)
    if not found:
        return None
    context, targets = found[min(int(where * len(found)), len(found) - 1)]
    indices = [*context, *targets]
    k, texts = plan.frame_skip, list(getattr(episode, "action_texts", None) or [])
    actions = [plan.action_separator.join(str(a) for a in texts[f : f + k] if a) for f in indices[:-1]]
    instruction = episode_texts(episode)[0] if plan.instruction else None
    return PreviewWindow(_frames_at(episode, indices), actions, len(context), instruction)


def _pad_stack(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [N, H, W, 3]: images of different sizes on a black canvas of the largest one."""
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    out = np.zeros((len(images), h, w, 3), np.uint8)
    for n, image in enumerate(images):
        out[n, : image.shape[0], : image.shape[1]] = image
    return out


class FramePreview:
    """Fixed held-out windows, and what the model in training predicts for them (see the module docstring)."""

    def __init__(
        self,
        episodes: Sequence[Any],
        plan: PlanConfig,
        samples: int,
        frames: int,
        vae_transform: ImageTransform,
        vit_transform: ImageTransform | None,
        sampler: GenerationConfig | None = None,
        world: Mapping[str, Any] | None = None,
        seed: int = 0,
    ):
        if not episodes:
            raise bad_argument("episodes", [], "give at least one episode to preview")
        n = len(episodes)
        per_episode = -(-samples // n)  # windows taken from one episode, spread over it
        found = [_window(episodes[i % n], plan, 1, (i // n + 1) / (per_episode + 1)) for i in range(samples)]
        self.windows = [w for w in found if w is not None]
        self.rollout = None
        for horizon in range(frames, 0, -1):  # the longest open-loop continuation the first episode holds
            self.rollout = _window(episodes[0], plan, horizon)
            if self.rollout is not None:
                break
        self.vae_transform, self.vit_transform = vae_transform, vit_transform
        self.sampler = sampler or GenerationConfig(num_steps=8, cfg_text_scale=1.0, cfg_img_scale=1.0)
        self.world = {**dict(world or {}), "max_history_frames": plan.context_frames, "use_vit": plan.vit}
        self.seed = seed

    def render(
        self,
        model: torch.nn.Module,
        vae: Any,
        tokenizer: Any,
        autocast: AbstractContextManager | None = None,
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """(images, video) predicted by `model` now (see the module docstring)."""
        was_training = model.training
        pipe = BagelPipeline(model, vae, tokenizer, self.vae_transform, self.vit_transform)  # sets eval mode
        wm = WorldModel(pipe, None, WorldModelConfig(sampler=self.sampler, **self.world))
        images, video = [], None
        try:
            with torch.no_grad(), autocast if autocast is not None else nullcontext():
                for w in self.windows:
                    predicted = self._predict(wm, w)
                    c = w.context
                    panels = [w.frames[c - 1], w.frames[c], predicted[0]]
                    images.append(side_by_side(panels, labels=["context", "real", "predicted"])[0])
                if self.rollout is not None:
                    w = self.rollout
                    predicted = np.concatenate([w.frames[: w.context], np.stack(self._predict(wm, w))])
                    video = side_by_side([w.frames, predicted], labels=["real", "predicted"])
        finally:
            model.train(was_training)
        return ([_pad_stack(images)[i] for i in range(len(images))] if images else []), video

    def _predict(self, wm: Any, w: PreviewWindow) -> list[np.ndarray]:
        """The frames after `w`'s context, predicted open loop from its context and actions."""
        c = w.context
        wm.reset(w.frames[0], instruction=w.instruction)
        for i in range(1, c):
            if w.actions[i - 1]:
                wm.act(w.actions[i - 1])
            wm.observe(w.frames[i])
        future = w.actions[c - 1 :]
        generator = torch.Generator().manual_seed(self.seed)
        if all(future):
            return wm.predict(len(future), actions=future, generator=generator)
        return wm.predict(len(future), generator=generator)  # a clip without actions: plain continuation
