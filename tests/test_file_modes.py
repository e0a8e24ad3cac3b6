"""Files and folders written through temporary names (atomic writes) get the user's umask, not 0600 / 0700."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from worldbagel.atomic_files import atomic_write_text
from worldbagel.cli import main
from worldbagel.video import write_video


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it():
    from worldbagel.file_mode import current_umask

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027
    finally:
        os.umask(old)


def test_temp_files_and_folders_follow_the_umask(tmp_path):
    from worldbagel.file_mode import mkdtemp, mkstemp

    old = os.umask(0o002)
    try:
        fd, name = mkstemp(prefix=".x-", dir=tmp_path)
        os.close(fd)
        assert _mode(name) == 0o664
        assert _mode(mkdtemp(prefix=".d-", dir=tmp_path)) == 0o775
    finally:
        os.umask(old)


def test_collected_dataset_is_readable_by_others(tmp_path, umask_022):
    out = tmp_path / "data"
    assert (
        main(
            [
                "collect",
                "episodes=2",
                f"out={out}",
                "env.kwargs.size=5",
                "env.kwargs.obs_size=40",
                "preview=true",
            ]
        )
        == 0
    )
    files = [p for p in out.rglob("*") if p.is_file()]
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert any(p.name == "index.json" for p in files) and any(p.name == "preview.mp4" for p in files)
    assert len(folders) >= 5  # the dataset, two episodes and their frame folders
    assert {str(p.relative_to(out)): oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}
    assert {str(p.relative_to(out)): oct(_mode(p)) for p in folders if _mode(p) != 0o755} == {}


def test_atomic_text_and_video_writes_follow_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    write_video(tmp_path / "v.gif", frames, fps=2)
    write_video(tmp_path / "v.mp4", frames, fps=2)
    assert {p.name: oct(_mode(p)) for p in tmp_path.iterdir()} == {
        "a.json": "0o644",
        "v.gif": "0o644",
        "v.mp4": "0o644",
    }
