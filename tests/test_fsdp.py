"""FSDP2 on CPU/gloo: 2 ranks x 1 pack per step train exactly like 1 process x 2 accumulated packs.

The test launches this file with torchrun (2 processes, gloo, 127.0.0.1): STEPS-1 steps, then a second job
resumes from the sharded run's checkpoint for the last step. Losses and exported weights are compared with a
single-process run on the same data stream.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 3


def run(out: str, grad_accum: int, steps: int = STEPS, resume: bool = False) -> None:
    """Train a tiny Bagel on toy episodes (single process, or one rank of a torchrun job)."""
    import torch

    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model import parallelize as par
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig, LLMConfig, VAEConfig, ViTConfig
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.model.vae import FluxVAE
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.loop import Trainer
    from worldbagel.train.options import OptimConfig, TrainConfig
    from worldbagel.train.toy_episodes import toy_episodes

    env = par.init_distributed("cpu")
    try:
        cfg = BagelConfig(
            llm=LLMConfig(
                vocab_size=320,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            ),
            vit=ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            vae=VAEConfig(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1),
        )
        torch.manual_seed(0)
        model = Bagel(cfg)
        model.init_weights()
        torch.nn.init.normal_(model.llm2vae.weight, std=0.02)  # so the MSE reaches every layer at step 1
        vae = FluxVAE.from_config(cfg.vae)
        encoder = FrameEncoder(vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
        data = TrainingData(
            toy_episodes(2, steps=4, annotate=True),
            encoder,
            lambda text: list(text.encode()),  # byte ids; 256..259 are the special tokens
            SpecialIds(256, 257, 258, 259),
            PlanConfig(context_frames=2),
            DropoutConfig(),
            PackingConfig(192, 256, 256),
        )
        train = TrainConfig(
            steps=steps,
            grad_accum=grad_accum,
            save_every=2,
            ema_decay=0.9,
            resume=resume,
            optim=OptimConfig(lr=1e-3),
        )
        Trainer(model, data, train, out, env=env).train()
    finally:
        par.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, steps: int, resume: bool) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        __file__,
        str(out),
        str(steps),
        str(int(resume)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_with_accumulation(tmp_path):
    fsdp_out = tmp_path / "fsdp"
    torchrun(fsdp_out, STEPS - 1, resume=False)
    torchrun(fsdp_out, STEPS, resume=True)  # sharded checkpoint save + load (model, optimizer, EMA)

    single_out = tmp_path / "single"
    run(str(single_out), grad_accum=2)

    def losses(out: Path) -> list[dict]:
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    a, b = losses(single_out), losses(fsdp_out)
    assert [m["step"] for m in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        assert y["tokens"] == x["tokens"]
        for key in ("loss", "loss_ce", "loss_mse", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4), (x["step"], key)

    import torch

    from worldbagel.model.weights_file import load_file

    assert (fsdp_out / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.safetensors").is_file()
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(single_out / name), load_file(fsdp_out / name)
        assert x.keys() == y.keys()
        rel = {k: float((x[k] - y[k]).norm() / (x[k].norm() + 1e-12)) for k in x}
        bad = {k: r for k, r in rel.items() if r > 1e-3 and not ("vit_model" in k and "k_proj.bias" in k)}
        assert not bad, (name, bad)
        assert torch.equal(x["vit_pos_embed.pos_embed"], y["vit_pos_embed.pos_embed"])


if __name__ == "__main__":  # one rank of the torchrun job launched by the test
    run(sys.argv[1], grad_accum=1, steps=int(sys.argv[2]), resume=bool(int(sys.argv[3])))
