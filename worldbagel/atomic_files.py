"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written file.

The text goes to a temporary file next to the target (`file_mode.mkstemp`: the mode a plain `open()` would
give), is flushed and fsynced, and is moved over the target with `os.replace`; a failure removes the
temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from worldbagel.file_mode import mkstemp

__all__ = ["atomic_write_text"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    fd, tmp = mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
