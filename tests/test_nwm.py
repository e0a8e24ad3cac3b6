"""NWM/GNM layout reader: pose -> relative action conversion with known answers, splits, bad trajectories, and
the restricted unpickler that reads traj_data.pkl."""

from __future__ import annotations

import base64
import logging
import math
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from worldbagel.actions import ContinuousActionCodec
from worldbagel.data.nwm import NWMDataset, load_traj_data, poses_to_actions, read_split, wrap_angle
from worldbagel.data.safe_pickle import UnsafePickle, load_arrays
from worldbagel.errors import ConfigError


def test_known_answers_in_robot_frame():
    # Start at the origin facing +y (yaw 90 deg). Move 0.5 m along +y: straight ahead.
    # Then, still facing +y, move 0.5 m along -x: to the robot's left; turn to face -x (yaw 180 deg).
    position = np.array([[0.0, 0.0], [0.0, 0.5], [-0.5, 0.5]])
    yaw = np.array([math.pi / 2, math.pi / 2, math.pi])
    a = poses_to_actions(position, yaw, metric_waypoint_spacing=0.25)
    assert a.dtype == np.float32 and a.shape == (2, 3)
    np.testing.assert_allclose(a[0], [2.0, 0.0, 0.0], atol=1e-6)  # 0.5 m / 0.25 m = 2 steps forward
    np.testing.assert_allclose(a[1], [0.0, 2.0, math.pi / 2], atol=1e-6)  # 2 steps left, +90 deg


def test_yaw_wraps_across_pi():
    position = np.zeros((3, 2))
    yaw = np.array([math.radians(170), math.radians(-170), math.radians(170)])
    a = poses_to_actions(position, yaw)
    np.testing.assert_allclose(np.degrees(a[:, 2]), [20.0, -20.0], atol=1e-4)
    assert wrap_angle(3 * math.pi) == pytest.approx(-math.pi)


def test_frame_skip_normalises_by_skip():
    position = np.stack([np.arange(7) * 0.1, np.zeros(7)], 1)  # 0.1 m per frame along +x, facing +x
    a = poses_to_actions(position, np.zeros(7), metric_waypoint_spacing=0.1, frame_skip=3)
    np.testing.assert_allclose(a, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], atol=1e-6)


def test_random_poses_integrate_back():
    # Integrating the relative actions reproduces the trajectory: checks the rotation's sign convention.
    rng = np.random.default_rng(0)
    n = 20
    yaw = np.cumsum(rng.uniform(-0.5, 0.5, n))
    position = np.cumsum(rng.uniform(-0.3, 0.3, (n, 2)), axis=0)
    a = poses_to_actions(position, yaw, metric_waypoint_spacing=0.2).astype(np.float64)
    p, h = position[0].copy(), yaw[0]
    for dx, dy, dyaw in a:
        p = p + 0.2 * np.array([math.cos(h) * dx - math.sin(h) * dy, math.sin(h) * dx + math.cos(h) * dy])
        h = h + dyaw
    np.testing.assert_allclose(p, position[-1], atol=1e-4)
    assert wrap_angle(h - yaw[-1]) == pytest.approx(0.0, abs=1e-4)


def test_bad_arguments_name_themselves():
    with pytest.raises(ConfigError, match="metric_waypoint_spacing"):
        poses_to_actions(np.zeros((2, 2)), np.zeros(2), metric_waypoint_spacing=0)
    with pytest.raises(ConfigError, match="frame_skip"):
        poses_to_actions(np.zeros((2, 2)), np.zeros(2), frame_skip=0)
    with pytest.raises(ConfigError, match="position"):
        poses_to_actions(np.zeros((3, 2)), np.zeros(2))


def _make_traj(root, name, n=5, step=0.25, size=(12, 16), jump_at=None, missing_frame=None):
    folder = root / name
    folder.mkdir(parents=True)
    position = np.stack([np.arange(n) * step, np.zeros(n)], 1)
    if jump_at is not None:
        position[jump_at:, 0] += 50.0
    with open(folder / "traj_data.pkl", "wb") as f:
        pickle.dump({"position": position, "yaw": np.zeros(n)}, f)
    for i in range(n):
        if i != missing_frame:
            Image.fromarray(np.full((*size, 3), i * 20, np.uint8)).save(folder / f"{i}.jpg")


def test_dataset_reads_splits_and_skips_bad_trajectories(tmp_path, caplog):
    data, splits = tmp_path / "recon", tmp_path / "splits"
    _make_traj(data, "good_a", n=5)
    _make_traj(data, "good_b", n=4)
    _make_traj(data, "missing_img", n=4, missing_frame=2)
    _make_traj(data, "jump", n=4, jump_at=2)
    (data / "bad_pickle").mkdir()
    (data / "bad_pickle" / "traj_data.pkl").write_bytes(pickle.dumps({"position": [[0, 0]]}))
    (splits / "train").mkdir(parents=True)
    (splits / "test").mkdir(parents=True)
    names = "good_a\nmissing_img\njump\nbad_pickle\nnot_there\n\n"
    (splits / "train" / "traj_names.txt").write_text(names)
    (splits / "test" / "traj_names.txt").write_text("good_b\n")
    assert read_split(splits, "test") == ["good_b"]
    with caplog.at_level(logging.WARNING, logger="worldbagel.data.nwm"):
        ds = NWMDataset(data, split_dir=splits, split="train", metric_waypoint_spacing=0.25)
    assert ds.ids == ["good_a"]
    reasons = dict(ds.skipped)
    assert "2.jpg" in reasons["missing_img"]
    assert "out of bounds" in reasons["jump"]
    assert "'position' and 'yaw'" in reasons["bad_pickle"]
    assert "missing" in reasons["not_there"]
    assert len(caplog.records) == 4
    ep = ds[0]
    assert ep.length == 4 and ep.frames.shape == (5, 12, 16, 3)
    assert ep.action_texts == ["dx 1.00 dy 0.00 dyaw 0.0"] * 4
    assert ep.actions[0] == pytest.approx([1.0, 0.0, 0.0])
    assert ep.infos[2] == {"position": [0.5, 0.0], "yaw": 0.0, "frame": 2}
    assert ep.env_id == "nwm/recon" and ep.split == "train"
    assert abs(int(ep.frames[3].mean()) - 60) <= 2  # jpg 3 was filled with 60
    test = NWMDataset(data, split_dir=splits, split="test", metric_waypoint_spacing=0.25, frame_size=(6, 8))
    assert test.ids == ["good_b"] and test[0].frames.shape == (4, 6, 8, 3)


def test_dataset_without_split_dir_scans_folders_and_clip_codec(tmp_path):
    _make_traj(tmp_path, "b", n=3)
    _make_traj(tmp_path, "a", n=4, jump_at=2)
    ds = NWMDataset(tmp_path, metric_waypoint_spacing=0.25, codec=ContinuousActionCodec(clip=True))
    assert ds.ids == ["a", "b"]
    assert ds[0].action_texts[1] == "dx 10.00 dy 0.00 dyaw 0.0"  # 50 m jump clipped in the text only
    assert ds[0].actions[1][0] == pytest.approx(201.0)
    with pytest.raises(ConfigError, match="traj_names.txt"):
        NWMDataset(tmp_path, split_dir=tmp_path / "nope")
    with pytest.raises(ConfigError, match="root"):
        NWMDataset(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- safe loading
# traj_data.pkl files as numpy 1.26.4 (numpy.core paths) and numpy 2.4.6 (numpy._core paths) write them with
# pickle protocols 2, 4 (Python 3's default) and 5: {"position": [[0, 0], [0.25, 0], [0.5, 0.1], [0.75, 0.2]],
# "yaw": [0, 0.1, 0.2, 0.3]}, float64 arrays. Bytes produced by each numpy release, base64-encoded.
REAL_PICKLES = {
    ("1.26.4", 2): (
        "gAJ9cQAoWAgAAABwb3NpdGlvbnEBY251bXB5LmNvcmUubXVsdGlhcnJheQpfcmVjb25zdHJ1Y3QKcQJjbnVtcHkKbmRhcnJheQpxA0sAhXEEY19jb2RlY3MKZW5jb2RlCnEFWAEAAABicQZYBgAAAGxhdGluMXEHhnEIUnEJh3EKUnELKEsBSwRLAoZxDGNudW1weQpkdHlwZQpxDVgCAAAAZjhxDomIh3EPUnEQKEsDWAEAAAA8cRFOTk5K/////0r/////SwB0cRJiiWgFWFEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAw5A/AAAAAAAAAAAAAAAAAADDoD/CmsKZwpnCmcKZwpnCuT8AAAAAAADDqD/CmsKZwpnCmcKZwpnDiT9xE2gHhnEUUnEVdHEWYlgDAAAAeWF3cRdoAmgDSwCFcRhoCYdxGVJxGihLAUsEhXEbaBCJaAVYLwAAAAAAAAAAAAAAwprCmcKZwpnCmcKZwrk/wprCmcKZwpnCmcKZw4k/MzMzMzMzw5M/cRxoB4ZxHVJxHnRxH2J1Lg=="
    ),
    ("1.26.4", 4): (
        "gASVHQEAAAAAAAB9lCiMCHBvc2l0aW9ulIwVbnVtcHkuY29yZS5tdWx0aWFycmF5lIwMX3JlY29uc3RydWN0lJOUjAVudW1weZSMB25kYXJyYXmUk5RLAIWUQwFilIeUUpQoSwFLBEsChpRoBYwFZHR5cGWUk5SMAmY4lImIh5RSlChLA4wBPJROTk5K/////0r/////SwB0lGKJQ0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA0D8AAAAAAAAAAAAAAAAAAOA/mpmZmZmZuT8AAAAAAADoP5qZmZmZmck/lHSUYowDeWF3lGgEaAdLAIWUaAmHlFKUKEsBSwSFlGgRiUMgAAAAAAAAAACamZmZmZm5P5qZmZmZmck/MzMzMzMz0z+UdJRidS4="
    ),
    ("1.26.4", 5): (
        "gAWVAwEAAAAAAAB9lCiMCHBvc2l0aW9ulIwSbnVtcHkuY29yZS5udW1lcmljlIwLX2Zyb21idWZmZXKUk5QolkAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAANA/AAAAAAAAAAAAAAAAAADgP5qZmZmZmbk/AAAAAAAA6D+amZmZmZnJP5SMBW51bXB5lIwFZHR5cGWUk5SMAmY4lImIh5RSlChLA4wBPJROTk5K/////0r/////SwB0lGJLBEsChpSMAUOUdJRSlIwDeWF3lGgEKJYgAAAAAAAAAAAAAAAAAAAAmpmZmZmZuT+amZmZmZnJPzMzMzMzM9M/lGgLSwSFlGgPdJRSlHUu"
    ),
    ("2.4.6", 2): (
        "gAJ9cQAoWAgAAABwb3NpdGlvbnEBY251bXB5Ll9jb3JlLm11bHRpYXJyYXkKX3JlY29uc3RydWN0CnECY251bXB5Cm5kYXJyYXkKcQNLAIVxBGNfY29kZWNzCmVuY29kZQpxBVgBAAAAYnEGWAYAAABsYXRpbjFxB4ZxCFJxCYdxClJxCyhLAUsESwKGcQxjbnVtcHkKZHR5cGUKcQ1YAgAAAGY4cQ6JiIdxD1JxEChLA1gBAAAAPHERTk5OSv////9K/////0sAdHESYoloBVhRAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAMOQPwAAAAAAAAAAAAAAAAAAw6A/wprCmcKZwpnCmcKZwrk/AAAAAAAAw6g/wprCmcKZwpnCmcKZw4k/cRNoB4ZxFFJxFXRxFmJYAwAAAHlhd3EXaAJoA0sAhXEYaAmHcRlScRooSwFLBIVxG2gQiWgFWC8AAAAAAAAAAAAAAMKawpnCmcKZwpnCmcK5P8KawpnCmcKZwpnCmcOJPzMzMzMzM8OTP3EcaAeGcR1ScR50cR9idS4="
    ),
    ("2.4.6", 4): (
        "gASVHgEAAAAAAAB9lCiMCHBvc2l0aW9ulIwWbnVtcHkuX2NvcmUubXVsdGlhcnJheZSMDF9yZWNvbnN0cnVjdJSTlIwFbnVtcHmUjAduZGFycmF5lJOUSwCFlEMBYpSHlFKUKEsBSwRLAoaUaAWMBWR0eXBllJOUjAJmOJSJiIeUUpQoSwOMATyUTk5OSv////9K/////0sAdJRiiUNAAAAAAAAAAAAAAAAAAAAAAAAAAAAAANA/AAAAAAAAAAAAAAAAAADgP5qZmZmZmbk/AAAAAAAA6D+amZmZmZnJP5R0lGKMA3lhd5RoBGgHSwCFlGgJh5RSlChLAUsEhZRoEYlDIAAAAAAAAAAAmpmZmZmZuT+amZmZmZnJPzMzMzMzM9M/lHSUYnUu"
    ),
    ("2.4.6", 5): (
        "gAWVBAEAAAAAAAB9lCiMCHBvc2l0aW9ulIwTbnVtcHkuX2NvcmUubnVtZXJpY5SMC19mcm9tYnVmZmVylJOUKJZAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADQPwAAAAAAAAAAAAAAAAAA4D+amZmZmZm5PwAAAAAAAOg/mpmZmZmZyT+UjAVudW1weZSMBWR0eXBllJOUjAJmOJSJiIeUUpQoSwOMATyUTk5OSv////9K/////0sAdJRiSwRLAoaUjAFDlHSUUpSMA3lhd5RoBCiWIAAAAAAAAAAAAAAAAAAAAJqZmZmZmbk/mpmZmZmZyT8zMzMzMzPTP5RoC0sEhZRoD3SUUpR1Lg=="
    ),
}


@pytest.mark.parametrize("written_by", sorted(REAL_PICKLES))
def test_traj_data_written_by_numpy_1_and_2_loads(written_by, tmp_path):
    path = tmp_path / "traj_data.pkl"
    path.write_bytes(base64.b64decode(REAL_PICKLES[written_by]))
    position, yaw = load_traj_data(path)
    np.testing.assert_allclose(position, [[0, 0], [0.25, 0], [0.5, 0.1], [0.75, 0.2]])
    np.testing.assert_allclose(yaw, [0, 0.1, 0.2, 0.3])


class _WritesMarker:
    """Unpickling this runs code: it writes `marker` (as a hostile traj_data.pkl could run anything)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_pickle_that_would_run_code_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "marker.txt"
    payload = pickle.dumps({"position": np.zeros((3, 2)), "yaw": _WritesMarker(marker)})
    pickle.loads(payload)  # the payload is live: a plain pickle.load runs it
    assert marker.read_text() == "ran"
    marker.unlink()
    _make_traj(tmp_path / "data", "good", n=4)
    _make_traj(tmp_path / "data", "hostile", n=4)
    hostile = tmp_path / "data" / "hostile" / "traj_data.pkl"
    hostile.write_bytes(payload)
    with pytest.raises(UnsafePickle, match=re.escape(str(hostile)) + ".*builtins.exec"):
        load_traj_data(hostile)
    with pytest.raises(UnsafePickle, match="hostile"):  # stops the read, not skipped like a corrupt file
        NWMDataset(tmp_path / "data")
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'touch MARKER'\ntR.",  # protocol 0: os.system("touch MARKER")
        b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",  # an allowed name with a codec other than latin1
        b"cnumpy\nload\n(S'x.npy'\ntR.",  # numpy, but not an array constructor
    ],
    ids=["os.system", "codec-rot13", "numpy.load"],
)
def test_other_globals_are_refused_before_they_are_called(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "traj_data.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickle, match="refusing to load .*traj_data.pkl"):
        load_arrays(path)
    assert list(tmp_path.iterdir()) == [path]
