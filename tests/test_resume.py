"""Exact resume: a run killed with SIGKILL and resumed logs the same loss curve as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 10
KILL_AFTER = 4  # kill once this checkpoint exists


def run_training(out: str, resume: bool, steps: int = STEPS) -> None:
    """A small but complete run: from-scratch preset, posterior sampling, CFG dropout, grad accumulation."""
    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.loop import Trainer
    from worldbagel.train.options import OptimConfig, TrainConfig
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset("scratch-tiny", seed=0)
    encoder = FrameEncoder(
        fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14), sample_posterior=True
    )
    s = fresh.tokenizer.special
    data = TrainingData(
        toy_episodes(2, steps=4, annotate=True),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=2, min_context_frames=1),
        DropoutConfig(),
        PackingConfig(256, 320, 256),
        seed=3,
    )
    cfg = TrainConfig(
        steps=steps,
        grad_accum=2,
        save_every=2,
        keep_checkpoints=3,
        ema_decay=0.9,
        resume=resume,
        seed=3,
        optim=OptimConfig(lr=1e-3, warmup_steps=3, schedule="cosine"),
    )
    Trainer(fresh.model, data, cfg, out, fresh.vae, fresh.tokenizer).train()


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_resume; test_resume.run_training({str(killed)!r}, False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = killed / "checkpoints" / f"step-{KILL_AFTER:08d}" / "state.json"
    deadline = time.time() + 300
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"training subprocess exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail("no checkpoint after 300 s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = [m["step"] for m in metrics(killed)]
    assert max(done_before) < STEPS  # really interrupted mid-way

    reference = tmp_path / "reference"
    run_training(str(reference), False)
    run_training(str(killed), True)

    ref, got = metrics(reference), metrics(killed)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    for a, b in zip(ref, got):
        for key in ("loss", "loss_ce", "loss_mse", "grad_norm", "lr", "tokens", "epoch"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)
    from worldbagel.model.weights_file import load_file

    # Two processes may round differently in the last bit (BLAS kernels depend on memory alignment), so
    # weights are compared by relative error; the ViT key biases are skipped: their true gradient is exactly 0
    # (softmax ignores a per-query constant) and AdamW turns the remaining rounding noise into +-lr steps. The
    # ViT key weights see only the tokens' deviation from their mean (the same invariance), so the noise is
    # amplified there too: 2.0e-4 on this session's Xeon (deterministic, also at older commits), so 1e-3.
    def tolerance(k: str) -> float | None:
        if "vit_model" in k and "k_proj" in k:
            return None if k.endswith("bias") else 1e-3
        return 1e-4

    for name in ("ema.safetensors", "model.safetensors"):
        x, y = load_file(reference / name), load_file(killed / name)
        assert x.keys() == y.keys()
        rel = {k: float((x[k] - y[k]).norm() / (x[k].norm() + 1e-12)) for k in x}
        bad = {k: r for k, r in rel.items() if tolerance(k) is not None and r > tolerance(k)}
        assert not bad, (name, bad)
