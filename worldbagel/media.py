"""One reader for images and clips: every command, env and dataset reader that takes user media reads it here.

Users hand worldbagel PNGs, JPEGs, GIFs, videos and folders of frames from anywhere: broken, truncated,
empty, 16-bit, grayscale, palette or RGBA files. Everything read here comes back the same way:

- frames are uint8 RGB arrays [H, W, 3] (a clip: [T, H, W, 3]);
- 16-bit and 32-bit integer images are scaled to 8 bits (65535 -> 255), not clipped (clipping turns a
  16-bit photo white); float images in [0, 1] are scaled by 255;
- grayscale is repeated over the three channels; palette images are expanded through their palette;
- transparent pixels (RGBA, LA, palette transparency) are composited over white, the background image
  viewers show them on, so a transparent background does not turn into whatever colour it happens to hold;
- every failure of PIL, ffmpeg or numpy becomes one `MediaError` that names the argument, the file and the
  problem, and says what to give instead;
- the frames of a clip (frame folder, GIF) must share one size; the error names the first file that differs.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from worldbagel.errors import ConfigError

__all__ = [
    "FRAME_SUFFIXES",
    "VIDEO_SUFFIXES",
    "MediaError",
    "frame_files",
    "iter_video",
    "probe_video",
    "read_clip",
    "read_image",
    "to_rgb8",
]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
"""Image files read as single frames (and as the frames of a frame folder)."""
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv", ".m4v")
"""Video files (GIF through PIL, the rest through imageio-ffmpeg)."""

_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
)


class MediaError(ConfigError):
    """An image or clip given by the user cannot be read, or its frames do not fit together."""


def _fail(argument: str, path: Path | str, problem: str, fix: str = "") -> MediaError:
    fix = fix or "give a readable PNG/JPEG image, an .mp4/.gif video or a folder of frames"
    return MediaError(f"invalid {argument}={str(path)!r}: {problem}; {fix}")


def to_rgb8(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or an array [H, W], [H, W, 1|2|3|4] of any integer or float dtype as uint8 RGB [H, W, 3]."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb8(image)
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"an image array must be [H, W] or [H, W, 1..4], got shape {list(a.shape)}")
    a = _scale_to_unit(a)
    if a.shape[-1] in (2, 4):  # with alpha: over white
        color, alpha = a[..., :-1], a[..., -1:]
        a = color * alpha + (1.0 - alpha)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def _scale_to_unit(a: np.ndarray) -> np.ndarray:
    """Values as float64 in [0, 1], by the dtype's range (not the image's own maximum)."""
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:
            a = a.astype(np.float64) - info.min
            return a / float(info.max - info.min)
        return a.astype(np.float64) / float(info.max)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("the image holds NaN or infinite values")
    return np.clip(a, 0.0, 1.0)


def _pil_to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grayscale PNG/TIFF
        return to_rgb8(np.asarray(im, dtype=np.uint16))
    if mode == "I":  # 32-bit int: PIL also opens some 16-bit PNGs this way; its values stay below 65536
        a = np.asarray(im, dtype=np.int64)
        top = 65535.0 if a.size and a.max() <= 65535 and a.min() >= 0 else float(2**32 - 1)
        return to_rgb8(np.clip(a / top, 0.0, 1.0))
    if mode == "F":
        return to_rgb8(np.asarray(im, dtype=np.float32))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return to_rgb8(np.asarray(im.convert("RGBA")))
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike, argument: str = "image") -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; MediaError naming `argument` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        why = "is a folder, not an image file" if path.is_dir() else "no such file"
        raise _fail(argument, path, why)
    if path.stat().st_size == 0:
        raise _fail(argument, path, "the file is empty")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return _pil_to_rgb8(im)
    except UnidentifiedImageError:
        raise _fail(argument, path, "not an image file PIL can read") from None
    except _PIL_ERRORS as exc:
        raise _fail(argument, path, f"the image is corrupt or truncated ({exc})") from None


def _natural_key(p: Path) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder in natural order (2.png before 10.png)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)


def _gif_frames(path: Path, argument: str) -> Iterator[np.ndarray]:
    try:
        with Image.open(path) as im:
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                im.load()
                yield _pil_to_rgb8(im)
    except UnidentifiedImageError:
        raise _fail(argument, path, "not a GIF file PIL can read") from None
    except _PIL_ERRORS as exc:
        raise _fail(argument, path, f"the GIF is corrupt or truncated ({exc})") from None


def _ffmpeg_frames(path: Path, argument: str) -> Iterator[np.ndarray]:
    # imageio-ffmpeg's generator directly (closed explicitly): imageio's v3 reader leaves its pipes open
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            w, h = next(reader)["size"]
        except (RuntimeError, OSError, StopIteration, KeyError) as exc:
            raise _fail(argument, path, f"ffmpeg cannot read it as a video ({_first_line(exc)})") from None
        while True:
            try:
                buf = next(reader)
            except StopIteration:
                return
            except (RuntimeError, OSError) as exc:
                raise _fail(argument, path, f"ffmpeg stopped decoding it ({_first_line(exc)})") from None
            if len(buf) != w * h * 3:  # the last frame of a truncated file
                raise _fail(argument, path, "the video is truncated (its last frame is incomplete)")
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        reader.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def iter_video(path: str | os.PathLike, argument: str = "video") -> Iterator[np.ndarray]:
    """The frames of a video file (GIF or anything ffmpeg decodes), one at a time, as uint8 RGB [H, W, 3]."""
    path = Path(path)
    if not path.is_file():
        raise _fail(argument, path, "no such file")
    if path.stat().st_size == 0:
        raise _fail(argument, path, "the file is empty")
    frames = _gif_frames(path, argument) if path.suffix.lower() == ".gif" else _ffmpeg_frames(path, argument)
    size = None
    for i, frame in enumerate(frames):
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise _fail(
                argument, path, f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, frame 0 {size[1]}x{size[0]}"
            )
        yield frame
    if size is None:
        raise _fail(argument, path, "the video holds no frames")


def probe_video(path: str | os.PathLike, argument: str = "video") -> tuple[int, tuple[int, int]]:
    """(frame count, (H, W)) of a video file, decoding it once without keeping the frames."""
    count, shape = 0, (0, 0)
    for frame in iter_video(path, argument):
        count, shape = count + 1, frame.shape[:2]
    return count, (int(shape[0]), int(shape[1]))


def read_clip(
    path: str | os.PathLike,
    argument: str = "video",
    last: int | None = None,
    keep: Sequence[int] | None = None,
) -> np.ndarray:
    """An image file, a video file or a folder of frames as uint8 RGB [T, H, W, 3].

    `last` keeps only the last `last` frames (decoding the rest without keeping them); `keep` keeps the frames
    with these numbers, in that order. Raises MediaError naming `argument` for a missing, empty, corrupt or
    truncated file, a folder without frames, or frames of different sizes.
    """
    path = Path(path)
    if last is not None and last < 1:
        raise _fail(argument, path, f"last={last} keeps no frame", "keep at least one frame")
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise _fail(argument, path, f"the folder holds no frames ({', '.join(FRAME_SUFFIXES)})")
        frames = _select(files, last, keep, argument, path)
        return _stack_same_size([read_image(f, argument) for f in frames], frames, argument)
    if not path.exists():
        raise _fail(argument, path, "no such file or folder")
    suffix = path.suffix.lower()
    if suffix in FRAME_SUFFIXES:
        return np.stack(_select([read_image(path, argument)], last, keep, argument, path))
    if suffix not in VIDEO_SUFFIXES:
        raise _fail(argument, path, f"unknown file type {suffix!r}", f"use {FRAME_SUFFIXES + VIDEO_SUFFIXES}")
    if keep is None:  # frames that are not kept are dropped while decoding: a long clip never sits whole
        return np.stack(list(deque(iter_video(path, argument), maxlen=last)))
    wanted = set(keep)
    found = {i: f for i, f in enumerate(iter_video(path, argument)) if i in wanted}
    missing = [k for k in keep if k not in found]
    if missing:
        raise _fail(
            argument, path, f"it decodes to fewer frames than frame {missing[0]}, which was asked for"
        )
    frames = [found[k] for k in keep]
    return np.stack(frames[-last:] if last is not None else frames)


def _select(items: list, last: int | None, keep: Sequence[int] | None, argument: str, path: Path) -> list:
    if keep is not None:
        bad = [k for k in keep if not 0 <= k < len(items)]
        if bad:
            raise _fail(argument, path, f"it has {len(items)} frames; frame {bad[0]} was asked for")
        items = [items[k] for k in keep]
    return items[-last:] if last is not None else items


def _stack_same_size(frames: list[np.ndarray], files: list[Path], argument: str) -> np.ndarray:
    for f, name in zip(frames, files):
        if f.shape != frames[0].shape:
            h0, w0 = frames[0].shape[:2]
            raise _fail(
                argument,
                name,
                f"its frames differ in size: {name.name} is {f.shape[1]}x{f.shape[0]}, {files[0].name} {w0}x{h0}",
                "give frames of one size",
            )
    return np.stack(frames)
