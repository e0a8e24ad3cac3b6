"""worldbagel.bench.bagel_scale (scripts/bench_bagel_scale.py): the CPU twin runs the BAGEL-scale timing path end
to end; on a CUDA machine the release-shaped model runs (skipped without one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worldbagel.bench.bagel_scale import ScaleOptions, measure_scale
from worldbagel.errors import ConfigError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bagel-tiny"


def test_cpu_twin_times_frames_memory_and_text():
    options = ScaleOptions(
        tiny=True, device="cpu", sizes=(64, 96), steps=3, text_tokens=6, context_frames=2, repeats=1
    )
    rows = measure_scale(options, FIXTURE)
    assert [r["size"] for r in rows] == [64, 96]
    for r in rows:
        assert r["seconds_per_frame"] > 0 and r["seconds_per_flow_step"] == pytest.approx(
            r["seconds_per_frame"] / 2
        )
        assert r["seconds_per_frame_unbatched"] > 0  # batch_cfg="both": one forward per branch timed too
        assert r["peak_memory_gib"] > 0 and r["text_tokens_per_s"] > 0 and r["dtype"] == "torch.float32"
    # 2 frames of clean VAE tokens (16 px per token) + ViT patches + instruction and action texts
    assert rows[0]["latent_tokens"] == 16 and rows[1]["latent_tokens"] == 36
    assert rows[1]["context_tokens"] > rows[0]["context_tokens"] > 2 * 16


def test_cuda_requested_without_a_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        measure_scale(ScaleOptions(device="cuda"), FIXTURE)


@pytest.mark.gpu
def test_release_shapes_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    options = ScaleOptions(device="cuda", sizes=(256,), steps=3, text_tokens=4, repeats=1)
    rows = measure_scale(options, FIXTURE)
    assert rows[0]["latent_tokens"] == 256 and rows[0]["peak_memory_gib"] > 25  # ~28 GB of bf16 weights
