"""An `Episode` whose frames are decoded from a video (or other packed source) when they are used.

Video files hold many frames in one file, so the per-frame lazy loading of `Episode.frame_paths` does not
apply. `ClipEpisode` keeps a `decode` callable instead:

- `read_frames()` decodes the clip and returns uint8 [T+1, H, W, 3] without keeping it: the training data
  stream (`worldbagel.train.data_stream`) encodes each episode once into latents, so a folder of long videos
  never sits decoded in memory.
- `frames` / `load_frame(t)` decode once and keep the frames (as `Episode.frames` does), for readers that
  step through frames one by one (`worldbagel eval`).
- `frame_hw` is the (H, W) of a frame after resizing, known without decoding (the reader probes it), so
  sizing the training samples does not decode every clip.

A decoded clip with more frames than the episode records is cut to T+1 frames; one with fewer raises
`CorruptEpisode` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from worldbagel.data.trajectory import CorruptEpisode, Episode

__all__ = ["ClipEpisode", "resize_frames"]


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [F, H, W, 3] resized (bilinear, as `Episode.load_frame` does) to `size` = (H, W); None keeps it."""
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    h, w = int(size[0]), int(size[1])
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


@dataclass
class ClipEpisode(Episode):
    """An Episode whose T+1 frames come from `decode()` (uint8 [F, H, W, 3], F >= T+1) on use."""

    decode: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    """Returns the clip's frames; called on every `read_frames()` (a reader builds it from the file)."""
    source: str = ""
    """The file the frames come from (named in errors)."""
    frame_hw: tuple[int, int] | None = None
    """(H, W) of a frame as returned (after `frame_size` resizing), probed by the reader."""

    def read_frames(self) -> np.ndarray:
        """uint8 [T+1, H, W, 3], decoded now and not kept (the cached frames when `frames` was used)."""
        if self._frames is not None:
            return self._frames
        if self.decode is None:
            raise CorruptEpisode(f"episode {self.id} has no frames and no decoder")
        frames = np.asarray(self.decode())
        need = self.length + 1
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < need:
            raise CorruptEpisode(
                f"{self.source or self.id}: decoded {tuple(frames.shape)}, expected at least {need} RGB frames"
            )
        frames = resize_frames(np.ascontiguousarray(frames[:need], dtype=np.uint8), self.frame_size)
        if self.frame_hw is not None and tuple(frames.shape[1:3]) != tuple(self.frame_hw):
            raise CorruptEpisode(
                f"{self.source or self.id}: frames are {frames.shape[1]}x{frames.shape[2]}, the dataset says "
                f"{self.frame_hw[0]}x{self.frame_hw[1]}; set source.frame_size=[H,W] to resize them"
            )
        return frames

    @property
    def frames(self) -> np.ndarray:
        """uint8 [T+1, H, W, 3], decoded on first access and kept."""
        if self._frames is None:
            self._frames = self.read_frames()
        return self._frames

    def load_frame(self, t: int) -> np.ndarray:
        """Frame t as uint8 [H, W, 3] (decodes and keeps the clip on first use)."""
        return self.frames[t]
