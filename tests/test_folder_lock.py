"""One writer per output folder: a second live writer fails fast; a dead writer's lock is taken over."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from worldbagel.folder_lock import LOCK_NAME, FolderLocked, exclusive_folder

HOLDER = """
import sys, time
from pathlib import Path
from worldbagel.folder_lock import exclusive_folder
with exclusive_folder(sys.argv[1], "holder"):
    Path(sys.argv[2]).write_text("ready")
    time.sleep(60)
"""


def _start_holder(folder, tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "holder process died"
        assert time.monotonic() < deadline, "holder never took the lock"
        time.sleep(0.05)
    return proc


def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    proc = _start_holder(out, tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(FolderLocked) as err, exclusive_folder(out, "collect"):
            pass
        assert time.monotonic() - t0 < 2
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "out=" in msg and str(out) in msg
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_writer_is_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    proc = _start_holder(out, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="worldbagel.folder_lock"), exclusive_folder(out, "collect"):
        assert f"pid {os.getpid()}" not in caplog.text
    assert f"pid {proc.pid}" in caplog.text and "taking over" in caplog.text
    assert (out / LOCK_NAME).read_text() == ""  # released on exit: the next run takes it silently


def test_same_process_second_open_is_refused_and_release_frees_it(tmp_path):
    out = tmp_path / "run"
    with exclusive_folder(out, "finetune"), pytest.raises(FolderLocked), exclusive_folder(out, "finetune"):
        pass
    with exclusive_folder(out, "finetune") as path:  # released: free again
        assert path == out


def test_a_run_that_wrote_nothing_leaves_no_folder_behind(tmp_path):
    fresh, kept, existing = tmp_path / "fresh", tmp_path / "kept", tmp_path / "existing"
    with pytest.raises(RuntimeError), exclusive_folder(fresh, "eval"):
        raise RuntimeError("failed start")
    assert not fresh.exists()
    with exclusive_folder(kept, "eval"):
        (kept / "metrics.json").write_text("{}")
    assert sorted(p.name for p in kept.iterdir()) == [LOCK_NAME, "metrics.json"]
    existing.mkdir()
    with exclusive_folder(existing, "eval"):
        pass
    assert existing.is_dir()  # a folder the user made stays


def test_train_vae_refuses_a_locked_out_folder(tmp_path, capsys):
    from worldbagel.cli import main

    out = tmp_path / "vae"
    with exclusive_folder(out, "another train-vae"):
        rc = main(["train-vae", "data=tests/fixtures/none", f"out={out}"])
    assert rc == 1
    text = capsys.readouterr().out
    assert "being written by" in text and "another train-vae" in text


def test_eval_refuses_a_locked_out_folder(tmp_path, capsys):
    from worldbagel.cli import main

    out = tmp_path / "eval"
    with exclusive_folder(out, "another eval"):
        rc = main(["eval", f"out={out}", "tasks=[frames]", "dataset.episodes=1"])
    text = capsys.readouterr().out.replace("\n", "")
    assert rc == 1 and "being written by" in text and "another eval" in text
    assert not (out / "metrics.json").exists()
