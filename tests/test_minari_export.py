"""`worldbagel collect ... minari.dataset_id=...`: the collection also written as a Minari dataset, read back with
minari itself and compared with what the worldbagel writer recorded."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from worldbagel.cli import main
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.errors import DependencyNotInstalled
from worldbagel.rollout import build_env

minari = pytest.importorskip("minari")

DATASET = "worldbagel/grid-oracle-v0"


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))  # minari reads it on every call
    return root


def _collect(out, *extra):
    return main(
        ["collect", "env=gridworld", "policy=oracle", "episodes=3", "max_steps=6", f"out={out}", *extra]
    )


def test_collect_writes_a_minari_dataset_equal_to_the_recording(tmp_path, minari_root, capsys):
    out = tmp_path / "grid"
    assert _collect(out, f"minari.dataset_id={DATASET}", "minari.author=tester") == 0
    assert "minari.load_dataset('worldbagel/grid-oracle-v0')" in re.sub(r"\s+", " ", capsys.readouterr().out)
    assert (minari_root / "worldbagel" / "grid-oracle-v0" / "data").is_dir()

    dataset = minari.load_dataset(DATASET)
    recorded = sorted(TrajectoryDataset(out, verify="full"), key=lambda e: e.id)
    assert dataset.total_episodes == 3 and dataset.total_steps == sum(e.length for e in recorded)
    assert dataset.spec.env_spec.id == "WorldBagel/GridWorld-v0"
    assert str(dataset.action_space) == "Discrete(4)" and dataset.observation_space.shape == (64, 64, 3)
    for mine, theirs in zip(recorded, dataset.iterate_episodes()):
        assert np.array_equal(theirs.observations, mine.frames)  # lossless by default
        assert theirs.actions.tolist() == mine.actions
        assert np.array_equal(theirs.rewards, mine.rewards)
        assert theirs.terminations.tolist() == mine.terminated.tolist()
        assert theirs.truncations.tolist() == mine.truncated.tolist()
    assert any(e.terminated.any() for e in recorded) and any(e.truncated.any() for e in recorded)
    assert dataset.storage.metadata["author"] == {"tester"}


def test_a_bad_id_fails_before_collecting(tmp_path, minari_root, capsys):
    out = tmp_path / "grid"
    assert _collect(out, "minari.dataset_id=grid oracle") == 1
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "minari.dataset_id='grid oracle'" in text and "namespace/name-v0" in text
    assert not out.exists()  # nothing was recorded
    assert _collect(out, "minari.dataset_id=worldbagel/grid-oracle") == 1  # no version
    assert "namespace/name-v0" in re.sub(r"\s+", " ", capsys.readouterr().out)


def test_an_existing_id_is_refused_and_kept(tmp_path, minari_root, capsys):
    assert _collect(tmp_path / "a", f"minari.dataset_id={DATASET}") == 0
    capsys.readouterr()
    assert _collect(tmp_path / "b", f"minari.dataset_id={DATASET}") == 1
    assert "minari delete worldbagel/grid-oracle-v0" in re.sub(r"\s+", " ", capsys.readouterr().out)
    assert minari.load_dataset(DATASET).total_episodes == 3
    assert not (tmp_path / "b").exists()


def test_a_failed_export_leaves_no_dataset(tmp_path, minari_root, monkeypatch):
    from worldbagel.data import minari_export

    assert _collect(tmp_path / "a") == 0
    monkeypatch.setattr(minari_export, "CHUNK_BYTES", 1)  # one episode per chunk: the failure comes mid-way
    real = minari_export._buffer

    def failing(episode, index, space):
        if index == 2:
            raise OSError("disk full")
        return real(episode, index, space)

    monkeypatch.setattr(minari_export, "_buffer", failing)
    with pytest.raises(OSError, match="disk full"):
        minari_export.export_minari(tmp_path / "a", DATASET, build_env("WorldBagel/GridWorld-v0"))
    assert not (minari_root / "worldbagel" / "grid-oracle-v0").exists()
    monkeypatch.setattr(minari_export, "_buffer", real)
    exported = minari_export.export_minari(tmp_path / "a", DATASET, build_env("WorldBagel/GridWorld-v0"))
    assert exported.total_episodes == 3  # chunked: one create, then appends


def test_missing_minari_names_the_extra(monkeypatch):
    from worldbagel.data.minari_export import check_new_dataset_id

    monkeypatch.setitem(sys.modules, "minari", None)  # import minari -> ImportError
    with pytest.raises(DependencyNotInstalled, match=r"worldbagel\[minari\]"):
        check_new_dataset_id(DATASET)
