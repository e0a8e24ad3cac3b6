"""Faults end cleanly: unreadable checkpoints fall back, a second writer is refused, OS errors name the path."""

from __future__ import annotations

import json
import logging
import sys

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
    from worldbagel.model.bagel_folder import load_bagel

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


# ------------------------------------------------------------------------------------------------ collect
def _grid_collect(root, episodes, **kw):
    from functools import partial

    from worldbagel.data.collect import collect
    from worldbagel.policies import make_policy
    from worldbagel.rollout import build_env

    env_factory = partial(build_env, "WorldBagel/GridWorld-v0", {"size": 5, "obs_size": 40})
    kw.setdefault("max_steps", 3)
    return collect(
        env_factory,
        partial(make_policy, "random", seed=0),
        root,
        episodes=episodes,
        env_id="WorldBagel/GridWorld-v0",
        **kw,
    )


def test_collect_stops_at_the_first_disk_full_error_with_finished_episodes_indexed(
    tmp_path, monkeypatch, caplog
):
    import errno

    from worldbagel.data import episode_writer
    from worldbagel.data.trajectory import read_index

    real = episode_writer.EpisodeWriter._write_frame
    frames = []

    def filling(self, obs):
        frames.append(1)
        if len(frames) > 9:  # 3 episodes of 1 + 3 frames fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self._tmp / "frames"))
        return real(self, obs)

    monkeypatch.setattr(episode_writer.EpisodeWriter, "_write_frame", filling)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError) as err:
        _grid_collect(tmp_path / "data", 50)
    assert err.value.errno == errno.ENOSPC
    assert frames.count(1) == 10  # stopped at the first failure, no attempt at the 47 others
    assert caplog.text.count("Traceback") == 0 and "episode ep-" not in caplog.text
    assert [e["id"] for e in read_index(tmp_path / "data")] == ["ep-000000", "ep-000001"]
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".tmp-")]


def test_collect_refuses_a_second_writer(tmp_path):
    out = tmp_path / "data"
    with exclusive_folder(out, "collect"), pytest.raises(FolderLocked, match="being written by"):
        _grid_collect(out, 2)
    assert not (out / "index.json").exists()


def test_collect_resume_repairs_entries_that_disagree_with_their_folder(tmp_path, caplog):
    from worldbagel.data.trajectory import TrajectoryDataset, read_index, write_index

    out = tmp_path / "data"
    first = _grid_collect(out, 3)
    entries = read_index(out)
    entries[1] = {**entries[1], "length": entries[1]["length"] + 5}  # describes another episode
    write_index(out, entries)
    (out / "ep-000002" / "episode.json").unlink()  # a folder lost its metadata
    with caplog.at_level(logging.WARNING, logger="worldbagel.data.collect"):
        again = _grid_collect(out, 3)
    assert "2 index entries" in caplog.text and "ep-000001, ep-000002" in caplog.text
    assert [e["id"] for e in again.written] == ["ep-000001", "ep-000002"]
    assert read_index(out) == first.written  # the same episodes again (seeded), now described truly
    assert len(TrajectoryDataset(out)) == 3


def test_collect_with_another_seed_is_refused_naming_the_seed_used(tmp_path):
    from worldbagel.errors import ConfigError

    out = tmp_path / "data"
    _grid_collect(out, 2, seed=100)
    with pytest.raises(ConfigError, match=r"invalid seed=0: .*ep-000000 has seed 100.*seed=100"):
        _grid_collect(out, 3, seed=0)
    assert len(_grid_collect(out, 3, seed=100).written) == 1


WORKER_PARENT = """
import sys
from functools import partial
from worldbagel.data.collect import collect
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env
env = partial(build_env, "WorldBagel/GridWorld-v0", {"size": 5, "obs_size": 40})
collect(env, partial(make_policy, "random", seed=0), sys.argv[1], episodes=100000, workers=2,
        env_id="WorldBagel/GridWorld-v0")
"""


def _children(pid: int) -> set[int]:
    import glob

    kids = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            kids |= {int(x) for x in f.read().split()}
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_collect_workers_exit_when_their_parent_is_killed(tmp_path):
    import subprocess
    import time

    out = tmp_path / "data"
    parent = subprocess.Popen([sys.executable, "-c", WORKER_PARENT, str(out)])
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(p.name.startswith("ep-") for p in out.iterdir())):
            assert parent.poll() is None and time.monotonic() < deadline, "collect never wrote an episode"
            time.sleep(0.1)
        workers = _children(parent.pid)
        assert len(workers) >= 2
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)]


WORKER_ORPHANED_AT_START = """
import os, sys, time
from functools import partial
from worldbagel.data.collect import _init_process
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env
env = partial(build_env, "WorldBagel/GridWorld-v0", {"size": 5, "obs_size": 40})
# the collecting process is given as a pid that is not this process's parent: as if it had died (and this
# worker been re-parented) while the worker was still importing
_init_process(env, partial(make_policy, "random", seed=0), None, os.getppid() + 1)
time.sleep(30)
print("still alive")
"""


def test_a_collect_worker_orphaned_before_its_initializer_still_exits():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", WORKER_ORPHANED_AT_START], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "still alive" not in done.stdout, done.stderr[-2000:]
