"""`worldbagel generate` on the tiny fixture folder."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worldbagel.cli import main


def _args(tiny_dir, tmp_path, *extra):
    return [
        "generate",
        "model=tiny",
        f"model.path={tiny_dir}",
        "sampler=fast",
        "sampler.num_steps=3",
        f"out={tmp_path / 'out.png'}",
        *extra,
    ]


def test_generate_image_from_image_and_text(tiny_dir, tmp_path, frame):
    Image.fromarray(frame).save(tmp_path / "in.png")
    assert main(_args(tiny_dir, tmp_path, f"image={tmp_path / 'in.png'}", "prompt=move up")) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (64, 64, 3)


def test_generate_text_answer(tiny_dir, tmp_path, frame, capsys):
    Image.fromarray(frame).save(tmp_path / "in.png")
    args = _args(
        tiny_dir, tmp_path, f"image={tmp_path / 'in.png'}", "prompt=where is the goal?", "output=text"
    )
    args[-4] = f"out={tmp_path / 'answer.txt'}"
    assert main(args + ["max_new_tokens=4"]) == 0
    assert (tmp_path / "answer.txt").read_text().strip() in capsys.readouterr().out


def test_generate_bad_input_names_the_argument(tiny_dir, tmp_path, capsys):
    assert main(_args(tiny_dir, tmp_path, "image=/nonexistent.png", "prompt=x")) == 1
    assert "image='/nonexistent.png'" in capsys.readouterr().out
    assert main(_args(tiny_dir, tmp_path, "output=video", "prompt=x")) == 1
    assert "output" in capsys.readouterr().out


def test_generate_bad_sampler_knob_names_the_field(tiny_dir, tmp_path, capsys):
    assert main(_args(tiny_dir, tmp_path, "prompt=x", "sampler.cfg_renorm_type=local")) == 2  # a config error
    out = capsys.readouterr().out
    assert "cfg_renorm_type='local'" in out and "text_channel" in out
    assert not (tmp_path / "out.png").exists()
