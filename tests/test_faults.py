"""Faults end cleanly: unreadable checkpoints fall back, a second writer is refused, OS errors name the path."""

from __future__ import annotations

import json
import logging

import pytest
from test_resume import metrics, run_training

from worldbagel.errors import CheckpointError
from worldbagel.folder_lock import FolderLocked, exclusive_folder
from worldbagel.train.state import list_checkpoints


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A run of 4 steps with checkpoints at steps 2 and 4 (copied per test)."""
    out = tmp_path_factory.mktemp("run") / "out"
    run_training(str(out), False, steps=4)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_resume_falls_back_when_the_newest_checkpoint_is_truncated(four_steps, tmp_path, caplog):
    out = _copy(four_steps, tmp_path / "out")
    newest = out / "checkpoints" / "step-00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="worldbagel.train.state"):
        run_training(str(out), True, steps=5)
    assert "step-00000004 is unreadable" in caplog.text and "truncated" in caplog.text
    steps = [m["step"] for m in metrics(out)]
    assert steps == [1, 2, 3, 4, 5]  # lines after step 2 were re-made from the step-2 checkpoint


def test_state_json_without_rng_is_named_and_skipped(four_steps, tmp_path, caplog):
    out = _copy(four_steps, tmp_path / "out")
    state = out / "checkpoints" / "step-00000004" / "state.json"
    payload = json.loads(state.read_text())
    del payload["rng"]
    state.write_text(json.dumps(payload))
    with caplog.at_level(logging.WARNING, logger="worldbagel.train.state"):
        run_training(str(out), True, steps=5)
    assert "lacks ['rng']" in caplog.text
    # with no readable checkpoint left, one error lists every failure
    for p in list_checkpoints(out):
        (p / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be read"):
        run_training(str(out), True, steps=6)


def test_finetune_refuses_a_second_writer(four_steps, tmp_path):
    out = _copy(four_steps, tmp_path / "out")
    with exclusive_folder(out, "other finetune"), pytest.raises(FolderLocked, match="being written by"):
        run_training(str(out), True, steps=5)
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]  # nothing written by the refused run


def test_unavailable_cuda_device_names_model_device_cpu(tmp_path):
    import torch

    from worldbagel.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the CPU-only error cannot happen")
    from worldbagel.errors import ConfigError
    from worldbagel.model.checkpoint import load_bagel

    with pytest.raises(ConfigError, match=r"model.device='cuda:3'.*use model.device=cpu"):
        load_bagel("tests/fixtures/bagel-tiny", device="cuda:3")
    rc = main(["info", "tests/fixtures/bagel-tiny"])  # the fixture itself is fine
    assert rc == 0


def test_cli_turns_disk_full_into_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    from worldbagel.cli import main
    from worldbagel.commands import info

    def full(cfg, console):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "index.json"))

    monkeypatch.setattr(info, "run", full)
    rc = main(["info", "tests/fixtures/bagel-tiny"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "index.json" in out and "disk is full" in out and "Traceback" not in out
