"""FSDP2 mixed precision on CPU/gloo: bf16 compute copies of fp32 master weights, fp32 gradients and AdamW state.

The test launches this file with torchrun (2 processes, gloo, 127.0.0.1). Each rank builds a tiny Bagel, the
Trainer shards it with `apply_fsdp(param_dtype=torch.bfloat16)` (train.amp=bf16), runs one optimizer step and
writes what it saw: the dtype of the sharded parameters, of the weights a layer computes with, of the sharded
gradients and of the optimizer state. A second case trains LoRA adapters on a bf16 frozen base under FSDP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def observe(out: str, case: str) -> dict:
    """One optimizer step of a sharded tiny Bagel; returns the dtypes seen (one rank of a torchrun job).

    `case`: full (full fine-tuning, bf16 compute), lora (LoRA on a bf16 frozen base), fp32 (no mixed precision:
    the reference loss)."""
    import torch
    from torch.distributed.tensor import DTensor

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
    from worldbagel.train.options import LoraConfig, OptimConfig, TrainConfig
    from worldbagel.train.toy_episodes import toy_episodes

    env = par.DistEnv(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["LOCAL_RANK"]),
        torch.device("cpu"),
    )
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
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    encoder = FrameEncoder(
        FluxVAE.from_config(cfg.vae), ImageTransform(64, 32, 16), ImageTransform(56, 28, 14)
    )
    data = TrainingData(
        toy_episodes(2, steps=4, annotate=True),
        encoder,
        lambda text: list(text.encode()),
        SpecialIds(256, 257, 258, 259),
        PlanConfig(context_frames=2),
        DropoutConfig(),
        PackingConfig(192, 256, 256),
    )
    lora = case == "lora"
    lora_cfg = LoraConfig(enabled=lora, base_dtype="bfloat16", train_modules=["llm2vae"] if lora else [])
    amp = "none" if case == "fp32" else "bf16"
    train = TrainConfig(steps=1, amp=amp, ema_decay=0.0, lora=lora_cfg, optim=OptimConfig(lr=1e-3))
    trainer = Trainer(model, data, train, Path(out) / f"run-{case}", env=env)

    proj = model.language_model.model.layers[0].self_attn.o_proj  # called as a module (q/k/v are fused)
    weight = proj.base_layer if lora else proj
    seen = {}

    def record(module, args) -> None:
        seen.setdefault("compute", str(module.weight.dtype))

    weight.register_forward_pre_hook(record)
    trainable = dict(trainer._named_trainable())
    before = {n: p.to_local().detach().clone() for n, p in trainable.items()}
    trainer._seed_step(0)
    metrics = trainer._step()
    grads = {str(p.grad.to_local().dtype) for p in trainable.values() if p.grad is not None}
    trainer.optimizer.step()
    state = {str(v.to_local().dtype) for s in trainer.optimizer.state.values() for v in s.values() if v.dim()}
    # a small tensor may have no rows on this rank
    local = {n: p for n, p in trainable.items() if p.to_local().numel()}
    moved = [n for n, p in local.items() if not torch.equal(before[n], p.to_local())]
    return {
        "sharded": sorted({str(p.to_local().dtype) for p in trainable.values()}),
        "frozen": sorted({str(p.to_local().dtype) for p in model.parameters() if not p.requires_grad}),
        "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "compute": seen["compute"],
        "grads": sorted(grads),
        "optimizer": sorted(state),
        "moved": len(moved),
        "still": sorted(set(local) - set(moved)),
        "local": len(local),
        "trainable": len(trainable),
        "loss": metrics["loss"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp_bf16_compute_keeps_fp32_master_weights_and_state(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        __file__,
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        full, lora, fp32 = (
            json.loads((tmp_path / f"rank{rank}-{case}.json").read_text())
            for case in ("full", "lora", "fp32")
        )
        # full fine-tuning: fp32 shards (master weights), bf16 gathered weights, fp32 gradients and AdamW state
        assert full["all_dtensor"] and full["sharded"] == ["torch.float32"]
        assert full["compute"] == "torch.bfloat16" and fp32["compute"] == "torch.float32"
        assert full["grads"] == ["torch.float32"] and full["optimizer"] == ["torch.float32"]
        # every weight whose shard is on this rank moved, except ViT position rows no 56 px image reaches
        assert full["moved"] > 0.9 * full["trainable"]
        assert set(full["still"]) <= {"vit_model.vision_model.embeddings.position_embedding.weight"}
        # LoRA: the frozen base stays bf16, adapters and train_modules are fp32 master weights
        assert lora["frozen"] == ["torch.bfloat16"] and lora["sharded"] == ["torch.float32"]
        assert lora["compute"] == "torch.bfloat16"
        assert lora["grads"] == ["torch.float32"] and lora["optimizer"] == ["torch.float32"]
        assert lora["moved"] > 0 and lora["trainable"] < full["trainable"]
        assert lora["still"] and all(".lora_A." in n for n in lora["still"])  # A waits for a non-zero B
        # the adapters start at zero: the bf16 base computes what FSDP's bf16 copies of the fp32 weights do
        assert lora["loss"] == pytest.approx(full["loss"], rel=1e-6)
        assert full["loss"] == pytest.approx(fp32["loss"], rel=2e-2) and full["loss"] != fp32["loss"]


if __name__ == "__main__":  # one rank of the torchrun job launched by the test
    from worldbagel.model import parallelize as par

    par.init_distributed("cpu")
    try:
        for case in ("full", "lora", "fp32"):
            seen = observe(sys.argv[1], case)
            Path(sys.argv[1], f"rank{os.environ['RANK']}-{case}.json").write_text(json.dumps(seen))
    finally:
        par.shutdown()
