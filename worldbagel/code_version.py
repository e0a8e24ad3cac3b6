"""Which code produced a run: the package version and, for a git checkout of the source, its commit.

    code_version()  ->  {"version": "0.1.0", "git_sha": "3f2c...", "git_dirty": False}

`git_sha` is `git rev-parse HEAD` of the checkout the package is imported from (an editable install), and
`git_dirty` whether tracked files differ from that commit. Both are None when the package is not imported from
a git checkout of its own (a wheel in site-packages, even inside someone else's repository), when git is not
installed, or when git fails: recording the version never stops a run.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from pathlib import Path

from worldbagel import __version__

logger = logging.getLogger(__name__)

GIT_TIMEOUT_S = 5.0

SOURCE_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding the `worldbagel` package: the repository root of a source checkout."""


def package_version() -> str:
    return __version__


def _git(root: Path, *args: str) -> str | None:
    """stdout of `git -C root args...`, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # no git binary, a hung repository, ...
        logger.debug("git %s failed: %s", " ".join(args), exc)
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path = SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(commit SHA, dirty) of the git checkout whose top level is `root`; (None, None) otherwise."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None, None  # not a checkout, or `root` only sits inside another repository
    sha = _git(root, "rev-parse", "HEAD")
    if sha is None:
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return sha, (bool(status) if status is not None else None)


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str | bool | None]:
    """{"version", "git_sha", "git_dirty"} of the running package (computed once per process)."""
    sha, dirty = git_state()
    return {"version": package_version(), "git_sha": sha, "git_dirty": dirty}
