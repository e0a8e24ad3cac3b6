"""Temporary files and folders that end up with the modes of ordinary ones (the user's umask).

Atomic writes create a temporary file or folder next to the target and move it into place with
`os.replace`. `tempfile.mkstemp` makes its file 0600 and `tempfile.mkdtemp` its folder 0700 on purpose
(they are meant to stay private), and the move keeps that mode: a dataset or a run folder written that way
could not be read by a collaborator or by a container running as another uid. These wrappers create the
same temporary names and then give them the mode `open()` / `mkdir()` would have: 0o666 & ~umask for files,
0o777 & ~umask for folders.
"""

from __future__ import annotations

import os
import tempfile
import threading

__all__ = ["current_umask", "mkdtemp", "mkstemp"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (/proc/self/status on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it: set and restore at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def mkstemp(suffix: str | None = None, prefix: str | None = None, dir: str | os.PathLike | None = None):
    """`tempfile.mkstemp` whose file has mode 0o666 & ~umask; returns (fd, path) like mkstemp."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=dir)
    try:
        os.chmod(path, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def mkdtemp(
    suffix: str | None = None, prefix: str | None = None, dir: str | os.PathLike | None = None
) -> str:
    """`tempfile.mkdtemp` whose folder has mode 0o777 & ~umask; returns its path like mkdtemp."""
    path = tempfile.mkdtemp(suffix=suffix, prefix=prefix, dir=dir)
    try:
        os.chmod(path, 0o777 & ~current_umask())
    except BaseException:
        os.rmdir(path)
        raise
    return path
