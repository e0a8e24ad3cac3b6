"""One writer per output folder: an exclusive, advisory lock held for the whole run.

`collect`, `finetune`, `train-vae` and `eval` write into a folder that a later run resumes from. Two runs
writing the same folder at once interleave their index entries, checkpoints and metrics lines without
noticing, so each of them holds `exclusive_folder(out)` while it runs.

The lock is `flock` on `<folder>/.worldbagel.lock`. The kernel releases an flock when its holder exits,
however it exits (SIGKILL included), so a lock left by a dead process is simply taken over by the next
run; the file itself stays and only records who holds it (pid, host, command, start time), which the
error shows to the second writer. File descriptors are not inherited by child processes (PEP 446), so
worker processes never keep a dead parent's lock alive. Where `fcntl` is missing (Windows) the lock is a
no-op, said once in the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from worldbagel.errors import WorldBagelError

logger = logging.getLogger(__name__)

LOCK_NAME = ".worldbagel.lock"


class FolderLocked(WorldBagelError):
    """Another live process is writing the same output folder."""


def _holder_text(raw: str) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, command: str, argument: str = "out") -> Iterator[Path]:
    """Create `folder` if needed and hold its writer lock until the block ends.

    A folder this call created is removed again when the run wrote nothing into it (a failed start leaves
    no empty run folder behind).

    Raises FolderLocked at once (no waiting) when another live process holds it; the message names the
    folder, the holder and the fix. `argument` is the config field the folder came from, for that message.
    """
    path = Path(folder)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # lazy: POSIX only (there is no fcntl on Windows)
    except ImportError:  # pragma: no cover - non-POSIX
        logger.warning("no fcntl on this platform: %s is not protected against a second writer", path)
        yield path
        return
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            raise FolderLocked(
                f"invalid {argument}={str(path)!r}: it is being written by {holder}. Wait for that run to "
                f"finish (or stop it), or give another {argument}=..."
            ) from None
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if previous.strip():
            logger.warning(
                "%s: taking over the lock left by %s, which ended without releasing it",
                path,
                _holder_text(previous),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "argv": sys.argv[1:],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # an empty file: nobody holds it; the flock goes with the close below
            if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:  # a run that wrote nothing
                os.unlink(path / LOCK_NAME)
                path.rmdir()
    finally:
        os.close(fd)
