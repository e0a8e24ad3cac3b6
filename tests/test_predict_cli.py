"""`worldbagel predict / reason / imagine` on the tiny fixture, and the world-model loader they share."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from worldbagel.cli import main
from worldbagel.errors import ConfigError
from worldbagel.media import read_clip
from worldbagel.video import write_video
from worldbagel.world_model_loader import load_pipeline, model_config, sampler_config


def _model(tiny_dir):
    return ["model=tiny", f"model.path={tiny_dir}", "sampler=fast", "sampler.num_steps=3"]


@pytest.fixture
def clip(tmp_path, frame):
    frames = np.stack([frame, frame[::-1], frame[:, ::-1]])
    return write_video(tmp_path / "clip.gif", frames, fps=4)


def test_predict_writes_the_continuation(tiny_dir, tmp_path, clip, capsys):
    out = tmp_path / "pred"
    args = ["predict", *_model(tiny_dir), f"video={clip}", "actions=[move up,move right]", f"out={out}"]
    assert main(args) == 0
    pngs = sorted((out / "frames").glob("*.png"))
    assert [p.name for p in pngs] == ["000.png", "001.png"]
    assert np.asarray(Image.open(pngs[0])).shape == (64, 64, 3)
    # the clip's 3 frames, then the 2 predicted ones, each inside a 2-pixel border
    assert read_clip(out / "continuation.gif").shape == (3 + 2, 68, 68, 3)
    assert read_clip(out / "continuation.mp4").shape[0] == 3 + 2
    assert "predicted 2 frame(s)" in capsys.readouterr().out


def test_predict_is_seeded_and_continues_a_frame_folder(tiny_dir, tmp_path, frame):
    folder = tmp_path / "frames_in"
    folder.mkdir()
    for i, f in enumerate([frame, frame[::-1]]):
        Image.fromarray(f).save(folder / f"{i}.png")
    outs = []
    for name in ("a", "b"):
        args = [
            "predict",
            *_model(tiny_dir),
            f"video={folder}",
            "frames=1",
            "mp4=false",
            f"out={tmp_path / name}",
        ]
        assert main(args) == 0
        outs.append(np.asarray(Image.open(tmp_path / name / "frames" / "000.png")))
    assert np.array_equal(outs[0], outs[1])
    assert (
        not (tmp_path / "a" / "continuation.mp4").exists() and (tmp_path / "a" / "continuation.gif").exists()
    )


def test_predict_bad_input_names_the_argument(tiny_dir, tmp_path, clip, capsys):
    assert main(["predict", *_model(tiny_dir), "video=/nonexistent.mp4", f"out={tmp_path}"]) == 1
    assert "video='/nonexistent.mp4'" in capsys.readouterr().out
    assert main(["predict", *_model(tiny_dir), f"video={clip}", "frames=3", "actions=[move up]"]) == 1
    assert "frames=3" in capsys.readouterr().out


def test_reason_prints_and_writes_the_answer(tiny_dir, tmp_path, frame, capsys):
    Image.fromarray(frame).save(tmp_path / "obs.png")
    answer = tmp_path / "answer.txt"
    args = ["reason", *_model(tiny_dir), f"image={tmp_path / 'obs.png'}", "question=Where is the goal?"]
    assert main(args + ["max_new_tokens=5", f"out={answer}"]) == 0
    printed = capsys.readouterr().out
    assert answer.read_text().strip() in printed
    assert main(args + ["max_new_tokens=5", "think=true", f"out={answer}"]) == 0
    assert "thought:" in capsys.readouterr().out and answer.read_text().startswith("<think>")
    assert main(args[:-1] + ["question=", "max_new_tokens=5"]) == 1
    assert "question" in capsys.readouterr().out


def test_imagine_writes_real_next_to_imagined(tiny_dir, tmp_path, capsys):
    out = tmp_path / "imag"
    args = ["imagine", *_model(tiny_dir), "env=gridworld", "actions=[move right,2]", "seed=3", f"out={out}"]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["action"] for r in doc["steps"]] == ["move right", "move down"]
    assert {"psnr", "ssim", "state_match", "imagined_reward"} <= set(doc["steps"][0])
    assert 0.0 <= doc["state_accuracy"] <= 1.0
    panel = read_clip(out / "imagine.gif")
    assert panel.shape[0] == 3 and panel.shape[2] > 2 * 64  # real | imagined, first frame + 2 steps
    assert len(list((out / "real").glob("*.png"))) == 3 and len(list((out / "imagined").glob("*.png"))) == 3
    real0 = np.asarray(Image.open(out / "real" / "000.png"))
    assert np.array_equal(real0, np.asarray(Image.open(out / "imagined" / "000.png")))  # same first frame
    assert "imagined vs real" in capsys.readouterr().out
    assert main(["imagine", *_model(tiny_dir), "actions=[fly]", f"out={out}"]) == 1
    assert "actions" in capsys.readouterr().out


def test_imagine_random_actions(tiny_dir, tmp_path):
    out = tmp_path / "rand"
    assert main(["imagine", *_model(tiny_dir), "steps=2", "mp4=false", f"out={out}"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["steps"]) == 2


def test_loader_presets_and_errors(tiny_dir):
    cfg = model_config({"name": "tiny", "path": str(tiny_dir)})
    assert cfg.vae_image_size == [64, 32, 16] and cfg.dtype == "float32"
    assert load_pipeline(cfg) is load_pipeline({"name": "tiny", "path": str(tiny_dir)})  # cached
    assert sampler_config("fast").num_steps == 8
    assert sampler_config({"preset": "fast", "num_steps": 3}).cfg_text_scale == 2.0
    with pytest.raises(ConfigError, match=r"model\.path"):
        model_config("tiny")  # the tiny preset has no folder of its own
    with pytest.raises(ConfigError, match="sampler"):
        sampler_config("turbo")
    with pytest.raises(ConfigError, match="unknown model fields"):
        model_config({"name": "tiny", "folder": "x"})
