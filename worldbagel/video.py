"""Writing videos (mp4, gif) and composing side-by-side panels; reading is worldbagel/media.py.

Shapes: a video is a uint8 array `[T, H, W, 3]`; a single image `[H, W, 3]`.

- `write_video(path, frames, fps)`: `.mp4` through imageio-ffmpeg (imageio's ffmpeg backend; libx264,
  yuv420p, quality 8 of 10);
  `.gif` through pillow. Writes are atomic (temp file + os.replace).
  libx264 needs even sides and most players want multiples of 16, so frames are padded at the bottom and
  right with black up to a multiple of `macro_block_size` (never resampled); reading such an mp4 back gives
  the padded size. GIFs keep the exact size but are palette-quantised (lossy colour).
- `side_by_side(panels, labels)`: e.g. real | imagined | goal, each panel a video or a still image.
- `bordered(frames, color)`: frames inside a coloured frame (e.g. to mark predicted frames in a video);
  `resize_frames(frames, (h, w))`: every frame resampled to one size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from worldbagel.errors import bad_argument
from worldbagel.file_mode import mkstemp

__all__ = [
    "VIDEO_SUFFIXES",
    "bordered",
    "resize_frames",
    "side_by_side",
    "write_video",
]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".gif")
"""The video files `write_video` writes."""


def _as_video(frames: np.ndarray | Sequence[np.ndarray], name: str = "frames") -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] != 3:  # [T, H, W] grayscale -> RGB
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise bad_argument(name, f"array of shape {arr.shape}", "give a non-empty uint8 video [T, H, W, 3]")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return arr


def _pad_to_multiple(frames: np.ndarray, block: int) -> np.ndarray:
    """[T,H,W,3] -> [T,H',W',3] with H', W' the next multiples of `block` (black bottom/right padding)."""
    t, h, w, _ = frames.shape
    ph, pw = (-h) % block, (-w) % block
    if ph == 0 and pw == 0:
        return frames
    logger.debug("padding %dx%d video to %dx%d for libx264", h, w, h + ph, w + pw)
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)))


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float = 10.0,
    macro_block_size: int = 16,
) -> Path:
    """Write `frames` [T,H,W,3] to `path` (.mp4 or .gif), atomically; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise bad_argument("path", str(path), f"use a file name ending in one of {VIDEO_SUFFIXES}")
    if not fps > 0:
        raise bad_argument("fps", fps, "use a positive frame rate")
    if macro_block_size < 1:
        raise bad_argument("macro_block_size", macro_block_size, "use 1 or more (16 suits most players)")
    video = _as_video(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = mkstemp(prefix=f".{path.stem}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".mp4":
            block = macro_block_size if macro_block_size % 2 == 0 else 2 * macro_block_size
            _write_mp4(tmp, _pad_to_multiple(video, block), fps)
        else:
            images = [Image.fromarray(f) for f in video]
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(1, round(1000.0 / fps)),
                loop=0,
                optimize=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_mp4(path: Path, video: np.ndarray, fps: float) -> None:
    # imageio-ffmpeg (imageio's ffmpeg backend) directly, so its pipes are closed when we are done;
    # the frames are already padded, so macro_block_size=1 stops it from resampling them.
    t, h, w, _ = video.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1, quality=8
    )
    writer.send(None)
    try:
        for frame in video:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _resize_height(frames: np.ndarray, height: int) -> np.ndarray:
    t, h, w, _ = frames.shape
    if h == height:
        return frames
    width = max(1, round(w * height / h))
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[T, H, W, 3] -> [T, h, w, 3] (bilinear; returned unchanged when already that size)."""
    video = _as_video(frames)
    h, w = size
    if video.shape[1:3] == (h, w):
        return video
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in video])


def bordered(frames: np.ndarray, color: tuple[int, int, int], width: int = 2) -> np.ndarray:
    """[T, H, W, 3] -> [T, H + 2 width, W + 2 width, 3]: each frame inside a `width`-pixel border of `color`
    (padding around the frame, so no pixel of it is covered)."""
    video = _as_video(frames)
    if width < 1:
        raise bad_argument("width", width, "use a border of at least 1 pixel")
    out = np.empty((video.shape[0], video.shape[1] + 2 * width, video.shape[2] + 2 * width, 3), np.uint8)
    out[:] = np.asarray(color, np.uint8)
    out[:, width:-width, width:-width] = video
    return out


def side_by_side(
    panels: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    gap: int = 2,
    height: int | None = None,
    label_height: int = 12,
) -> np.ndarray:
    """Compose panels left to right into one video [T, H(+label_height), W_total, 3].

    Each panel is a video [T_i,H_i,W_i,3] or a still image [H_i,W_i,3] (shown for every frame). Panels are
    resized to a common height (`height`, default the tallest panel) keeping aspect; shorter videos hold
    their last frame. `labels` (one per panel) are drawn in a white strip above each panel. A [H,W,3]
    result is never returned: a single frame comes back as [1, H, W, 3].
    """
    if not panels:
        raise bad_argument("panels", panels, "give at least one video or image")
    if labels is not None and len(labels) != len(panels):
        raise bad_argument("labels", list(labels), f"give one label per panel ({len(panels)})")
    videos = [
        _as_video(p[None] if np.asarray(p).ndim == 3 and np.asarray(p).shape[-1] == 3 else p) for p in panels
    ]
    t = max(v.shape[0] for v in videos)
    h = height or max(v.shape[1] for v in videos)
    videos = [_resize_height(v, h) for v in videos]
    videos = [np.concatenate([v, np.repeat(v[-1:], t - len(v), axis=0)]) if len(v) < t else v for v in videos]
    top = label_height if labels else 0
    total_w = sum(v.shape[2] for v in videos) + gap * (len(videos) - 1)
    out = np.zeros((t, h + top, total_w, 3), np.uint8)
    x = 0
    strips = []
    for i, v in enumerate(videos):
        w = v.shape[2]
        out[:, top:, x : x + w] = v
        if labels:
            strips.append((x, w, str(labels[i])))
        x += w + gap
    if labels:
        strip = Image.new("RGB", (total_w, top), (255, 255, 255))
        draw = ImageDraw.Draw(strip)
        font = ImageFont.load_default()
        for x0, w, text in strips:
            draw.text((x0 + 1, 0), text[: max(1, w // 6)], fill=(0, 0, 0), font=font)
        out[:, :top] = np.asarray(strip)[None]
    return out
