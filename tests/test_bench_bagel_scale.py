"""scripts/bench_bagel_scale.py: the CPU twin runs the BAGEL-scale timing path end to end; on a CUDA machine the
release-shaped model runs (skipped without one)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_bagel_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_bagel_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_twin_times_frames_memory_and_text(tmp_path):
    bench = _bench()
    out = tmp_path / "rows.json"
    argv = ["--tiny", "--device", "cpu", "--sizes", "64,96", "--steps", "3", "--text-tokens", "6"]
    rows = bench.main([*argv, "--context-frames", "2", "--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == rows and [r["size"] for r in rows] == [64, 96]
    for r in rows:
        assert r["seconds_per_frame"] > 0 and r["seconds_per_flow_step"] == pytest.approx(
            r["seconds_per_frame"] / 2
        )
        assert r["peak_memory_gib"] > 0 and r["text_tokens_per_s"] > 0 and r["dtype"] == "torch.float32"
    # 2 frames of clean VAE tokens (16 px per token) + ViT patches + instruction and action texts
    assert rows[0]["latent_tokens"] == 16 and rows[1]["latent_tokens"] == 36
    assert rows[1]["context_tokens"] > rows[0]["context_tokens"] > 2 * 16


def test_cuda_requested_without_a_device_is_a_clear_exit():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        _bench().main(["--device", "cuda"])


@pytest.mark.gpu
def test_release_shapes_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rows = _bench().main(["--sizes", "256", "--steps", "3", "--text-tokens", "4", "--repeats", "1"])
    assert rows[0]["latent_tokens"] == 256 and rows[0]["peak_memory_gib"] > 25  # ~28 GB of bf16 weights
