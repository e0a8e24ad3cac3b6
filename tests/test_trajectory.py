"""Trajectory format: write/read round trip, validation (corrupt episodes skipped and reported), atomicity."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from worldbagel.data.trajectory import (
    CorruptEpisode,
    Episode,
    EpisodeWriter,
    TrajectoryDataset,
    read_index,
    rebuild_index,
    remove_partial,
    to_jsonable,
)
from worldbagel.errors import ConfigError, WorldBagelError


def _write(root, eid, t=4, h=12, w=10, seed=0, split="train", annotate=False):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t + 1, h, w, 3), dtype=np.uint8)
    with EpisodeWriter(
        root, eid, env_id="Test-v0", split=split, seed=seed, metadata={"policy": "oracle"}
    ) as wr:
        wr.start(frames[0], {"agent": (0, 0), "distance": t, "big": np.zeros((100, 100))})
        for i in range(t):
            wr.add_step(
                np.int64(i % 4),
                frames[i + 1],
                reward=0.5,
                terminated=i == t - 1,
                truncated=False,
                info={"agent": (i + 1, np.int64(0)), "distance": t - i - 1, "success": i == t - 1},
                action_text=f"move {i % 4}",
                instruction="reach the goal" if annotate else None,
                qa=[{"q": "where is the goal?", "a": "right"}] if annotate and i == 0 else None,
                thought="go right" if annotate else None,
            )
        entry = wr.finish()
    return frames, entry


def test_round_trip(tmp_path):
    frames, entry = _write(tmp_path, "ep-000000", annotate=True)
    assert entry["length"] == 4 and entry["num_frames"] == 5 and entry["success"] is True
    ds = TrajectoryDataset(tmp_path)
    assert len(ds) == 1 and ds.skipped == [] and ds.ids == ["ep-000000"]
    ep = ds[0]
    assert ep._frames is None  # lazy
    assert np.array_equal(ep.frames, frames) and ep.frames.dtype == np.uint8
    assert ep.actions == [0, 1, 2, 3] and ep.action_texts == ["move 0", "move 1", "move 2", "move 3"]
    assert ep.rewards.tolist() == [0.5] * 4 and ep.terminated.tolist() == [False, False, False, True]
    assert len(ep.infos) == 5 and ep.infos[0] == {"agent": [0, 0], "distance": 4}  # big array dropped
    assert ep.infos[4]["success"] is True
    assert ep.annotations[0] == {
        "instruction": "reach the goal",
        "qa": [{"q": "where is the goal?", "a": "right"}],
        "thought": "go right",
    }
    assert ep.annotations[1] == {"instruction": "reach the goal", "thought": "go right"}
    assert ep.env_id == "Test-v0" and ep.seed == 0 and ep.metadata["metadata"]["policy"] == "oracle"
    assert ep.metadata["return"] == pytest.approx(2.0)


def test_files_are_readable_with_standard_tools(tmp_path):
    from PIL import Image

    frames, _ = _write(tmp_path, "ep-000000")
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["format"] == "worldbagel-trajectories" and index["episodes"][0]["id"] == "ep-000000"
    lines = (tmp_path / "ep-000000" / "steps.jsonl").read_text().splitlines()
    assert json.loads(lines[2])["action_text"] == "move 2"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ep-000000" / "frames" / "000003.png")), frames[3])


def test_corrupt_episodes_are_skipped_and_reported(tmp_path, caplog):
    for i in range(5):
        _write(tmp_path, f"ep-{i:06d}", seed=i)
    (tmp_path / "ep-000001" / "frames" / "000002.png").unlink()  # missing frame
    steps = tmp_path / "ep-000002" / "steps.jsonl"
    steps.write_text(steps.read_text().replace('"reward"', '"rew', 1))  # bad json (size changes too)
    meta = tmp_path / "ep-000003" / "episode.json"
    doc = json.loads(meta.read_text())
    doc["length"] = 9
    meta.write_text(json.dumps(doc))  # length mismatch
    with caplog.at_level(logging.WARNING, logger="worldbagel.data.trajectory"):
        ds = TrajectoryDataset(tmp_path)
    assert ds.ids == ["ep-000000", "ep-000004"]
    skipped = dict(ds.skipped)
    assert set(skipped) == {"ep-000001", "ep-000002", "ep-000003"}
    assert "000002.png" in skipped["ep-000001"]
    assert "steps.jsonl" in skipped["ep-000002"]
    assert "9" in skipped["ep-000003"]
    assert sum("skipping episode" in r.message for r in caplog.records) == 3


def test_bad_json_with_same_size_is_caught(tmp_path):
    _write(tmp_path, "ep-000000")
    steps = tmp_path / "ep-000000" / "steps.jsonl"
    text = steps.read_text()
    steps.write_text(text.replace("{", "[", 1))  # same byte count, broken JSON
    ds = TrajectoryDataset(tmp_path)
    assert len(ds) == 0 and "not valid JSON" in ds.skipped[0][1]


def test_full_verify_catches_undecodable_frame_and_checksum(tmp_path):
    _write(tmp_path, "ep-000000")
    _write(tmp_path, "ep-000001", seed=1)
    png = tmp_path / "ep-000000" / "frames" / "000003.png"
    png.write_bytes(b"\x89PNG garbage")
    steps = tmp_path / "ep-000001" / "steps.jsonl"
    steps.write_text(steps.read_text().replace("move 1", "move 9"))  # same size, different content
    assert len(TrajectoryDataset(tmp_path)) == 2  # fast check sees neither ...
    lazy = TrajectoryDataset(tmp_path)[0]
    with pytest.raises(CorruptEpisode, match="000003.png cannot be decoded"):
        _ = lazy.frames  # ... but lazy loading never hands out a broken frame
    full = TrajectoryDataset(tmp_path, verify="full")
    assert len(full) == 0
    reasons = dict(full.skipped)
    assert "000003.png" in reasons["ep-000000"] and "checksum" in reasons["ep-000001"]


def test_writer_is_atomic_and_abort_leaves_nothing(tmp_path):
    _write(tmp_path, "ep-000000")
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(RuntimeError), EpisodeWriter(tmp_path, "ep-000001") as wr:
        wr.start(frames[0])
        wr.add_step(0, frames[1], 0.0, False, False)
        assert not (tmp_path / "ep-000001").exists()  # nothing visible before finish
        assert [e["id"] for e in read_index(tmp_path)] == ["ep-000000"]
        raise RuntimeError("simulated crash mid-episode")
    assert not (tmp_path / "ep-000001").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert [e["id"] for e in read_index(tmp_path)] == ["ep-000000"]
    assert not list(tmp_path.glob(".index.json-*"))  # no temp index left behind


def test_rewrite_replaces_episode_and_keeps_one_index_entry(tmp_path):
    _write(tmp_path, "ep-000000", t=3)
    frames, _ = _write(tmp_path, "ep-000000", t=5, seed=9)
    assert [e["id"] for e in read_index(tmp_path)] == ["ep-000000"]
    ds = TrajectoryDataset(tmp_path)
    assert ds[0].length == 5 and np.array_equal(ds[0].frames, frames)


def test_rebuild_index_and_remove_partial(tmp_path):
    _write(tmp_path, "ep-000000")
    _write(tmp_path, "ep-000001", seed=1)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CorruptEpisode, match="rebuild_index"):
        TrajectoryDataset(tmp_path)
    assert rebuild_index(tmp_path) == ["ep-000000", "ep-000001"]
    assert TrajectoryDataset(tmp_path, verify="full").ids == ["ep-000000", "ep-000001"]
    (tmp_path / ".tmp-ep-000002-abc" / "frames").mkdir(parents=True)  # what a killed writer leaves
    assert remove_partial(tmp_path) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="episode_id"):
        EpisodeWriter(tmp_path, "../escape")
    with EpisodeWriter(tmp_path, "ep-x") as wr:
        with pytest.raises(WorldBagelError, match="start"):
            wr.add_step(0, np.zeros((4, 4, 3), np.uint8), 0.0, False, False)
        with pytest.raises(ConfigError, match="uint8 RGB"):
            wr.start(np.zeros((4, 4, 3), np.float32))
        wr.start(np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(ConfigError, match=r"must be \(4, 4, 3\)"):
            wr.add_step(0, np.zeros((5, 4, 3), np.uint8), 0.0, False, False)
        wr.add_step(0, np.zeros((4, 4, 3), np.uint8), 0.0, True, False)
        with pytest.raises(WorldBagelError, match="after the episode ended"):
            wr.add_step(0, np.zeros((4, 4, 3), np.uint8), 0.0, False, False)
    with pytest.raises(ConfigError, match="no index.json"):
        TrajectoryDataset(tmp_path / "nowhere")


def test_splits_filter_and_resize(tmp_path):
    _write(tmp_path, "a", split="train")
    _write(tmp_path, "b", split="eval")
    assert TrajectoryDataset(tmp_path, splits=["eval"]).ids == ["b"]
    ds = TrajectoryDataset(tmp_path, frame_size=(6, 5))
    assert ds[0].frames.shape == (5, 6, 5, 3)


def test_episode_from_arrays_and_to_jsonable():
    ep = Episode.from_arrays("mem", np.zeros((3, 4, 4, 3)), [0, 1], ["a", "b"])
    assert ep.length == 2 and ep.frames.shape == (3, 4, 4, 3) and len(ep.infos) == 3
    with pytest.raises(ConfigError, match="T\\+1"):
        Episode.from_arrays("bad", np.zeros((2, 4, 4, 3)), [0, 1], ["a", "b"])
    assert to_jsonable({"a": np.float32(1.5), "b": (np.int8(2), np.array([1, 2])), 3: np.bool_(True)}) == {
        "a": 1.5,
        "b": [2, [1, 2]],
        "3": True,
    }
    assert to_jsonable(float("nan")) is None
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_preview_mp4_and_jpg_frames(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    frames[:, :, :8] = 200
    with EpisodeWriter(tmp_path, "ep-0", frame_format="jpg", preview_fps=5) as wr:
        wr.start(frames[0])
        for f in frames[1:]:
            wr.add_step(0, f, 0.0, False, False)
        wr.finish()
    from worldbagel.media import read_clip

    assert read_clip(tmp_path / "ep-0" / "preview.mp4").shape[0] == 4
    ep = TrajectoryDataset(tmp_path, verify="full")[0]
    assert ep.frame_paths[0].suffix == ".jpg"
    assert np.abs(ep.frames.astype(int) - frames.astype(int)).mean() < 3
