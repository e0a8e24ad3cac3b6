"""One reader for images and clips: every broken file gives one error naming the argument and the file, and
every pixel format comes back as the same uint8 RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worldbagel.cli import main
from worldbagel.media import MediaError, read_clip, read_image, to_rgb8
from worldbagel.video import write_video


def _png_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, format="PNG")
    return buf.getvalue()


def _frames(t=4, h=32, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture
def broken_images(tmp_path):
    good = _png_bytes(_frames(1)[0])
    files = {
        "corrupt.png": good[:40] + bytes(range(256)) * 4,  # a valid signature, then garbage
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "text.png": b"this is not an image\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, sorted(files)


def test_every_broken_image_is_one_error_naming_argument_and_file(broken_images):
    folder, names = broken_images
    for name in names:
        with pytest.raises(MediaError) as err:
            read_image(folder / name, "image")
        assert f"image='{folder / name}'" in str(err.value), name


@pytest.mark.parametrize("command", ["generate", "reason"])
def test_generate_and_reason_report_broken_images_without_a_traceback(broken_images, command, capsys):
    folder, names = broken_images
    for name in names:
        extra = (
            ["prompt=hi", "model=tiny", "model.path=tests/fixtures/bagel-tiny"]
            if command == "generate"
            else []
        )
        extra += ["question=what?"] if command == "reason" else []
        rc = main([command, f"image={folder / name}", *extra])
        out = capsys.readouterr().out
        assert rc == 1, (command, name, out)
        assert name in out.replace("\n", "") and "Traceback" not in out


@pytest.fixture
def broken_clips(tmp_path):
    write_video(tmp_path / "good.mp4", _frames(6), fps=5)
    good = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_bytes(b"not a video at all\n" * 10)
    write_video(tmp_path / "good.gif", _frames(3), fps=5)
    gif = (tmp_path / "good.gif").read_bytes()
    (tmp_path / "corrupt.gif").write_bytes(gif[:30] + b"\x00" * 20 + gif[50 : len(gif) // 2])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "0.png").write_bytes(_png_bytes(_frames(1, 32, 32)[0]))
    (mixed / "1.png").write_bytes(_png_bytes(_frames(1, 16, 32)[0]))
    bad = tmp_path / "one_bad"
    bad.mkdir()
    (bad / "0.png").write_bytes(_png_bytes(_frames(1)[0]))
    (bad / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return tmp_path, {
        "truncated.mp4": "ffmpeg cannot read",  # its index (moov) is at the end: the cut removed it
        "empty.mp4": "empty",
        "text.mp4": "ffmpeg cannot read",
        "corrupt.gif": "corrupt or truncated",
        "mixed": "differ in size",
        "one_bad": "1.png",
    }


def test_every_broken_clip_is_one_error_naming_the_file_and_problem(broken_clips):
    folder, cases = broken_clips
    assert read_clip(folder / "good.mp4").shape[0] == 6
    for name, problem in cases.items():
        with pytest.raises(MediaError) as err:
            read_clip(folder / name, "video")
        msg = str(err.value)
        assert "invalid video=" in msg and name in msg and problem in msg.replace(str(folder), ""), (
            name,
            msg,
        )


def test_predict_reports_broken_clips_without_a_traceback(broken_clips, capsys):
    folder, cases = broken_clips
    for name in cases:
        rc = main(["predict", f"video={folder / name}", "frames=1"])
        out = capsys.readouterr().out
        assert rc == 1 and name in out.replace("\n", "") and "Traceback" not in out, (name, out)


def test_pixel_formats_are_scaled_not_saturated(tmp_path):
    ramp16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp16).save(tmp_path / "gray16.png")  # PIL writes a 16-bit grayscale PNG
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode.startswith("I")
    got = read_image(tmp_path / "gray16.png")
    assert got.dtype == np.uint8 and got.shape == (8, 64, 3)
    assert got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and abs(int(got[0, 32, 0]) - 130) <= 1
    assert (got == 255).mean() < 0.05  # a 16-bit image is not saturated to white

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "gray8.png")
    assert np.array_equal(read_image(tmp_path / "gray8.png"), np.repeat(gray[..., None], 3, -1))

    rgb = _frames(1, 8, 8)[0]
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as im:
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "palette.png"), expected)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert (out[:2] == [200, 0, 0]).all() and (out[2:] == 255).all()  # transparent over white

    assert np.array_equal(to_rgb8(np.ones((2, 2), np.float32) * 0.5), np.full((2, 2, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_rgb8(np.full((2, 2, 3), np.nan, np.float32))


def test_window_reads_keep_only_the_last_frames(tmp_path):
    frames = _frames(8, 16, 16)
    write_video(tmp_path / "clip.gif", frames, fps=5)
    full = read_clip(tmp_path / "clip.gif")
    assert np.array_equal(read_clip(tmp_path / "clip.gif", last=3), full[-3:])
    assert np.array_equal(read_clip(tmp_path / "clip.gif", keep=[6, 0]), full[[6, 0]])
    with pytest.raises(MediaError, match="frame 9"):
        read_clip(tmp_path / "clip.gif", keep=[9])
