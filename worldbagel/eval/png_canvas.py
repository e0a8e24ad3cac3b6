"""Drawing helpers shared by the report PNGs (horizon plots, contact sheets): fonts and atomic saves."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import ImageFont

from worldbagel.file_mode import mkstemp


def label_font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled sans font at `size` px (the fixed bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def save_png_atomic(path: str | os.PathLike, save: Callable[[str], None]) -> Path:
    """Call `save(tmp_path)` to write a PNG next to `path`, then move it into place with os.replace.

    A crash mid-write never leaves a truncated PNG at `path`; the temp file is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
