"""Episode sources: NWM, video and LeRobot data read into the episodes `finetune` trains on, on small
fixtures built here (jpgs + traj_data.pkl, mp4 through imageio-ffmpeg, parquet through pyarrow)."""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from worldbagel.data.clip_episode import ClipEpisode
from worldbagel.data.episode_source import SourceConfig, detect_format, load_episodes
from worldbagel.data.sequence_plan import PlanConfig, episode_plans
from worldbagel.errors import ConfigError, DependencyNotInstalled
from worldbagel.video import write_video

H, W = 32, 48


def _frame(value: int) -> np.ndarray:
    """A flat frame of one grey value (survives mp4 compression to within a few levels)."""
    return np.full((H, W, 3), value, np.uint8)


# ------------------------------------------------------------------------------------------------ fixtures
def make_nwm(root, names=("traj_a", "traj_b"), n=6):
    """NWM/GNM layout: <traj>/{i}.jpg + traj_data.pkl (dict of numpy arrays, as the GNM scripts write)."""
    for j, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        position = np.stack([np.arange(n) * 0.25, np.zeros(n)], 1)
        with open(folder / "traj_data.pkl", "wb") as f:
            pickle.dump({"position": position, "yaw": np.zeros(n)}, f)
        for i in range(n):
            Image.fromarray(_frame(20 * i + j)).save(folder / f"{i}.jpg")
    return root


def make_videos(root):
    """A folder with one mp4 (7 frames), one gif (3 frames) and one frame folder (4 pngs)."""
    root.mkdir(parents=True)
    write_video(root / "walk.mp4", np.stack([_frame(30 * i) for i in range(7)]), fps=5)
    write_video(root / "short.gif", np.stack([_frame(60 * i) for i in range(3)]), fps=5)
    (root / "frames").mkdir()
    for i in range(4):
        Image.fromarray(_frame(50 * i)).save(root / "frames" / f"{i}.png")
    return root


ACTION_NAMES = ["x", "y", "grip"]


def make_lerobot(root, lengths=(5, 4), camera="observation.images.front", image_camera=False, version="v2.1"):
    """A LeRobot v2.x dataset: meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl, one parquet per episode
    and one mp4 per episode for the camera (or, with image_camera, PNG bytes in the parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fps = 10
    features = {
        "action": {"dtype": "float32", "shape": [3], "names": {"motors": ACTION_NAMES}},
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        camera: {
            "dtype": "image" if image_camera else "video",
            "shape": [H, W, 3],
            "names": ["height", "width", "channel"],
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": version,
        "robot_type": "toyarm",
        "total_episodes": len(lengths),
        "fps": fps,
        "chunks_size": 1000,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    tasks = ["pick the cube", "open the drawer"]
    (root / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks))
    )
    episodes = [{"episode_index": e, "tasks": [tasks[e % 2]], "length": n} for e, n in enumerate(lengths)]
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(m) + "\n" for m in episodes))
    (root / "data" / "chunk-000").mkdir(parents=True)
    index = 0
    for e, n in enumerate(lengths):
        frames = np.stack([_frame(40 * t + 10 * e) for t in range(n)])
        cols = {
            "action": pa.array([[0.1 * t, -0.25 * e, 1.0] for t in range(n)], pa.list_(pa.float32())),
            "observation.state": pa.array([[0.0, 0.0]] * n, pa.list_(pa.float32())),
            "timestamp": pa.array([t / fps for t in range(n)], pa.float32()),
            "frame_index": pa.array(list(range(n)), pa.int64()),
            "episode_index": pa.array([e] * n, pa.int64()),
            "index": pa.array(list(range(index, index + n)), pa.int64()),
            "task_index": pa.array([e % 2] * n, pa.int64()),
        }
        index += n
        if image_camera:
            cells = []
            for f in frames:
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, format="PNG")
                cells.append({"bytes": buf.getvalue(), "path": None})
            cols[camera] = pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            video = root / "videos" / "chunk-000" / camera / f"episode_{e:06d}.mp4"
            write_video(video, frames, fps=fps)
        pq.write_table(pa.table(cols), root / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
    return root


def finetune_args(data, out, *extra):
    return [
        "finetune",
        "model=scratch-tiny",
        f"data={data}",
        f"out={out}",
        "train.steps=1",
        "plan.vit=false",
        "packing.expected_tokens=256",
        "packing.max_tokens=320",
        "packing.max_tokens_per_sample=256",
        *extra,
    ]


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- detection
def test_detect_format_of_each_layout_and_one_error_when_ambiguous_or_unknown(tmp_path):
    assert detect_format(make_nwm(tmp_path / "nwm")) == "nwm"
    assert detect_format(make_videos(tmp_path / "vid")) == "video"
    assert detect_format(tmp_path / "vid" / "walk.mp4") == "video"
    assert detect_format(tmp_path / "vid" / "frames") == "video"
    assert detect_format(make_lerobot(tmp_path / "lr")) == "lerobot"
    (tmp_path / "traj").mkdir()
    (tmp_path / "traj" / "index.json").write_text("{}")
    assert detect_format(tmp_path / "traj") == "trajectories"
    (tmp_path / "lr" / "index.json").write_text("{}")  # both markers: refuse to guess
    with pytest.raises(ConfigError, match=r"lerobot \(meta/info.json\).*trajectories|trajectories.*lerobot"):
        detect_format(tmp_path / "lr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="cannot tell its format.*notes.txt"):
        load_episodes(tmp_path / "junk")
    with pytest.raises(ConfigError, match="source.format"):
        SourceConfig(format="hdf5")


# ----------------------------------------------------------------------------------------------------- nwm
def test_nwm_source_writes_relative_poses_as_text(tmp_path):
    make_nwm(tmp_path / "nwm", n=7)
    cfg = SourceConfig(format="nwm", frame_skip=2)
    cfg.nwm.metric_waypoint_spacing = 0.25
    episodes = load_episodes(tmp_path / "nwm", cfg)
    assert [e.id for e in episodes] == ["traj_a", "traj_b"]
    ep = episodes[0]
    assert ep.length == 3 and ep.action_texts == ["dx 1.00 dy 0.00 dyaw 0.0"] * 3  # 0.5 m / (0.25 m * 2)
    assert [int(f.mean()) for f in ep.frames] == pytest.approx([0, 40, 80, 120], abs=2)  # frames 0, 2, 4, 6
    assert load_episodes(tmp_path / "nwm", SourceConfig(), splits=["test"]) == []  # the split filter applies


# --------------------------------------------------------------------------------------------------- video
def test_video_folder_reads_videos_gifs_and_frame_folders_lazily(tmp_path):
    root = make_videos(tmp_path / "vid")
    episodes = {e.id: e for e in load_episodes(root, SourceConfig(format="video"))}
    assert sorted(episodes) == ["frames", "short", "walk"]
    walk = episodes["walk"]
    assert isinstance(walk, ClipEpisode) and walk.length == 6 and walk.frame_hw == (H, W)
    assert walk.action_texts == [""] * 6 and walk.actions == [None] * 6
    frames = walk.read_frames()
    assert frames.shape == (7, H, W, 3) and walk._frames is None  # decoded for the caller, not kept
    assert [int(f.mean()) for f in frames] == pytest.approx([30 * i for i in range(7)], abs=3)
    assert episodes["short"].length == 2 and episodes["frames"].length == 3
    assert int(episodes["frames"].load_frame(2).mean()) == 100
    cfg = SourceConfig(format="video", frame_skip=2, frame_size=[16, 24])
    skipped = load_episodes(root / "walk.mp4", cfg)[0]
    assert skipped.length == 3 and skipped.read_frames().shape == (4, 16, 24, 3)
    assert [int(f.mean()) for f in skipped.read_frames()] == pytest.approx([0, 60, 120, 180], abs=3)


def test_video_folder_errors_name_the_folder_and_list_it(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ConfigError, match="data=.*empty.*readme.md"):
        load_episodes(tmp_path / "empty", SourceConfig(format="video"))
    with pytest.raises(ConfigError, match="data=.*nope"):
        load_episodes(tmp_path / "nope.mp4", SourceConfig(format="video"))
    (tmp_path / "one").mkdir()
    write_video(tmp_path / "one" / "still.gif", _frame(10)[None], fps=5)
    with caplog.at_level(logging.WARNING):
        assert load_episodes(tmp_path / "one", SourceConfig(format="video")) == []
    assert "at least 2 frames" in caplog.text


def test_clips_without_actions_train_as_continuations(tmp_path):
    """An empty action text adds no item: the target follows the context frame directly, as in predict."""
    (ep,) = load_episodes(make_videos(tmp_path / "vid") / "walk.mp4")
    plans = episode_plans(0, ep, PlanConfig(context_frames=2, horizon=2, vit=False))
    assert plans and all(item.role != "action" for p in plans for item in p.items)
    assert [(i.kind, i.role) for i in plans[0].items] == [
        ("vae", "context"),
        ("vae", "context"),
        ("vae", "target"),
        ("vae", "copy"),
        ("vae", "target"),
    ]
    nwm = load_episodes(make_nwm(tmp_path / "nwm"))[0]  # episodes with actions keep their action items
    roles = [
        i.role for i in episode_plans(0, nwm, PlanConfig(context_frames=2, horizon=2, vit=False))[0].items
    ]
    assert roles.count("action") == 3


# ------------------------------------------------------------------------------------------------- lerobot
def test_lerobot_actions_become_number_texts_and_frames_follow_timestamps(tmp_path):
    root = make_lerobot(tmp_path / "lr")
    a, b = load_episodes(root, SourceConfig(format="lerobot"))
    assert (a.id, a.length, b.length) == ("episode_000000", 4, 3)
    assert a.action_texts == ["0.00 0.00 1.00", "0.10 0.00 1.00", "0.20 0.00 1.00", "0.30 0.00 1.00"]
    assert b.action_texts[1] == "0.10 -0.25 1.00" and b.actions[1] == pytest.approx([0.1, -0.25, 1.0])
    assert (
        a.annotations[0] == {"instruction": "pick the cube"}
        and b.annotations[0]["instruction"] == "open the drawer"
    )
    assert a.infos[2] == {"frame_index": 2, "timestamp": pytest.approx(0.2)}
    assert (
        a.frame_hw == (H, W)
        and a.env_id == "lerobot/toyarm"
        and a.metadata["camera"] == "observation.images.front"
    )
    assert [int(f.mean()) for f in b.read_frames()] == pytest.approx([10, 50, 90, 130], abs=3)
    cfg = SourceConfig(format="lerobot", frame_skip=2)
    cfg.lerobot.names = True
    cfg.lerobot.decimals = 1
    cfg.lerobot.episodes = [0]
    (ep,) = load_episodes(root, cfg)
    assert ep.length == 2 and ep.infos[1]["frame_index"] == 2
    assert (
        ep.action_texts[0] == "x 0.0 y 0.0 grip 1.0, x 0.1 y 0.0 grip 1.0"
    )  # the 2 actions between kept frames
    assert [int(f.mean()) for f in ep.read_frames()] == pytest.approx([0, 80, 160], abs=3)


def test_lerobot_image_camera_stored_in_the_parquet(tmp_path):
    root = make_lerobot(tmp_path / "lr", lengths=(3,), camera="observation.image", image_camera=True)
    (ep,) = load_episodes(root)
    assert [int(f.mean()) for f in ep.read_frames()] == [0, 40, 80]  # png: lossless


def test_lerobot_errors_name_the_missing_file_or_column(tmp_path, monkeypatch):
    root = make_lerobot(tmp_path / "lr")
    lr = SourceConfig(format="lerobot")
    bad = SourceConfig(format="lerobot")
    bad.lerobot.action_columns = ["action", "effort"]
    with pytest.raises(ConfigError, match=r"action_columns.*no column \['effort'\].*observation.state"):
        load_episodes(root, bad)
    bad = SourceConfig(format="lerobot")
    bad.lerobot.camera = "observation.images.wrist"
    with pytest.raises(ConfigError, match=r"camera.*observation.images.front"):
        load_episodes(root, bad)
    (root / "videos" / "chunk-000" / "observation.images.front" / "episode_000001.mp4").unlink()
    with pytest.raises(ConfigError, match=r"episode_000001.mp4 is missing .*episode_000000.mp4"):
        load_episodes(root, lr)
    (root / "data" / "chunk-000" / "episode_000000.parquet").unlink()
    with pytest.raises(ConfigError, match=r"episode_000000.parquet is missing .*episode_000001.parquet"):
        load_episodes(root, lr)
    (root / "meta" / "episodes.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"episodes.jsonl is missing .*info.json"):
        load_episodes(root, lr)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(ConfigError, match=r"info.json is missing .*tasks.jsonl"):
        load_episodes(root, lr)
    two = make_lerobot(tmp_path / "two", lengths=(3,))
    info = json.loads((two / "meta" / "info.json").read_text())
    info["features"]["observation.images.wrist"] = dict(info["features"]["observation.images.front"])
    (two / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(
        ConfigError, match=r"cameras \['observation.images.front', 'observation.images.wrist'\]"
    ):
        load_episodes(two)
    info["codebase_version"] = "v3.0"
    (two / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="v3.0"):
        load_episodes(two)
    shutil.rmtree(two)
    make_lerobot(two, lengths=(3,))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # pyarrow not installed
    with pytest.raises(DependencyNotInstalled, match=r"worldbagel\[lerobot\]"):
        load_episodes(two)


def test_eval_reads_lerobot_through_the_same_reader(tmp_path):
    from worldbagel.eval.heldout import load_heldout
    from worldbagel.eval.options import DatasetConfig

    root = make_lerobot(tmp_path / "lr")
    episodes = load_heldout(DatasetConfig(name="lerobot", format="lerobot", path=str(root)))
    assert [e.action_texts[0] for e in episodes] == ["0.00 0.00 1.00", "0.00 -0.25 1.00"]
    assert int(episodes[0].load_frame(4).mean()) == pytest.approx(160, abs=3)


# ----------------------------------------------------------------------------------- finetune end to end
@pytest.mark.parametrize("fmt", ["nwm", "video", "lerobot"])
def test_finetune_trains_on_each_format(fmt, tmp_path, capsys):
    from worldbagel.cli import main

    data = {"nwm": make_nwm, "video": make_videos, "lerobot": make_lerobot}[fmt](tmp_path / "data")
    out = tmp_path / "run"
    extra = ["source.nwm.metric_waypoint_spacing=0.25"] if fmt == "nwm" else []
    assert main(finetune_args(data, out, f"source.format={fmt}", *extra)) == 0
    episodes = {"nwm": 2, "video": 3, "lerobot": 2}[fmt]
    assert f"on {episodes} episodes" in capsys.readouterr().out
    (step,) = _metrics(out)
    assert step["step"] == 1 and np.isfinite(step["loss"]) and step["loss_mse"] > 0
    assert any((out / "latent_cache").iterdir())  # frames went through the unchanged latent cache


def test_finetune_detects_the_format_and_names_bad_data(tmp_path, capsys):
    from worldbagel.cli import main

    data = make_lerobot(tmp_path / "lr", lengths=(4,))
    assert main(finetune_args(data, tmp_path / "run")) == 0  # source.format=auto
    assert "on 1 episodes" in capsys.readouterr().out
    (data / "index.json").write_text("{}")
    assert main(finetune_args(data, tmp_path / "run2")) != 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert "several formats" in printed and "source.format" in printed


def test_training_data_sizes_clips_without_decoding_and_never_keeps_them(tmp_path):
    """The data stream reads a clip's size from `frame_hw` and decodes it once per encoding, not kept."""
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.presets import build_preset

    (ep,) = load_episodes(make_videos(tmp_path / "vid") / "walk.mp4")
    decode, calls = ep.decode, []
    ep.decode = lambda: calls.append(1) or decode()
    fresh = build_preset("scratch-tiny", seed=0)
    s = fresh.tokenizer.special
    data = TrainingData(
        [ep],
        FrameEncoder(fresh.vae, ImageTransform(64, 32, 16)),
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=2, vit=False),
    )
    assert len(data.plans) == 5 and calls == []  # 7 frames, windows of 2 context + 1 target
    assert data.features(0).latents.shape[0] == 7 and calls == [1] and ep._frames is None


def test_a_clip_whose_size_differs_from_info_json_is_named(tmp_path):
    from worldbagel.data.trajectory import CorruptEpisode

    root = make_lerobot(tmp_path / "lr", lengths=(3,))
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.images.front"]["shape"] = [64, 64, 3]  # the sizes plans are made for
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (ep,) = load_episodes(root)
    with pytest.raises(CorruptEpisode, match=r"episode_000000.mp4: frames are 32x48.*64x64.*frame_size"):
        ep.read_frames()
    cfg = SourceConfig(frame_size=[64, 64])
    assert load_episodes(root, cfg)[0].read_frames().shape == (3, 64, 64, 3)
