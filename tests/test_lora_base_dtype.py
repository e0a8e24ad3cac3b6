"""LoRA on a bf16 frozen base: frozen weights in train.lora.base_dtype, adapters and train_modules in fp32."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from worldbagel.data.sequence_plan import PackingConfig, PlanConfig  # noqa: E402
from worldbagel.errors import ConfigError  # noqa: E402
from worldbagel.train.lora import base_dtype  # noqa: E402
from worldbagel.train.options import LoraConfig, OptimConfig, TrainConfig  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "bagel-tiny"


@pytest.fixture(scope="module")
def tiny():
    from toy_training import toy_training_data

    from worldbagel.train.presets import build_preset

    fresh = build_preset("scratch-tiny", seed=0)
    return fresh.model, toy_training_data(fresh, PlanConfig(context_frames=1), PackingConfig(256, 512, 256))


def lora_trainer(tiny, out, **lora):
    from worldbagel.train.loop import Trainer

    model, data = tiny
    cfg = TrainConfig(
        steps=1,
        ema_decay=0.0,
        lora=LoraConfig(enabled=True, train_modules=["llm2vae"], **lora),
        optim=OptimConfig(lr=1e-2),
    )
    return Trainer(copy.deepcopy(model), data, cfg, out)


def test_bf16_base_trains_only_fp32_adapters(tiny, tmp_path):
    tr = lora_trainer(tiny, tmp_path, base_dtype="bfloat16")
    params = dict(tr.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("llm2vae.") for n in trainable)
    assert {params[n].dtype for n in trainable} == {torch.float32}
    frozen = {n for n in params if n not in trainable}
    assert {params[n].dtype for n in frozen} == {torch.bfloat16}
    assert tr.amp  # a bf16 base computes under bf16 autocast, on the CPU too
    before = {n: p.detach().clone() for n, p in params.items()}

    tr._seed_step(0)
    out = tr._step()
    tr.optimizer.step()
    assert torch.isfinite(torch.tensor(out["loss"])) and out["grad_norm"] > 0
    changed = {n for n, p in params.items() if not torch.equal(before[n], p)}
    assert changed and changed <= trainable
    assert any(".lora_B." in n for n in changed) and "llm2vae.weight" in changed
    assert {params[n].dtype for n in trainable} == {torch.float32}  # still fp32 after the update
    assert {params[n].dtype for n in frozen} == {torch.bfloat16}
    # optimizer state lives only with the fp32 trainable weights
    state = [v for s in tr.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert state and {v.dtype for v in state} == {torch.float32}


def test_auto_keeps_an_fp32_base_on_the_cpu(tiny, tmp_path):
    tr = lora_trainer(tiny, tmp_path)
    assert {p.dtype for p in tr.model.parameters()} == {torch.float32} and not tr.amp
    assert base_dtype("auto", torch.device("cpu")) == torch.float32
    assert base_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert base_dtype("float32", torch.device("cuda", 0)) == torch.float32


def test_bad_base_dtype_settings_are_named(tiny, tmp_path):
    with pytest.raises(ConfigError, match="train.lora.base_dtype"):
        LoraConfig(base_dtype="float16")
    from worldbagel.train.loop import Trainer

    model, data = tiny
    cfg = TrainConfig(amp="none", lora=LoraConfig(enabled=True, base_dtype="bfloat16"))
    with pytest.raises(ConfigError, match="train.amp"):
        Trainer(copy.deepcopy(model), data, cfg, tmp_path)


def test_finetune_reads_the_base_in_the_lora_base_dtype():
    from worldbagel.commands.finetune import load_model
    from worldbagel.config import FinetuneConfig, ModelConfig

    def loaded(dtype, lora):
        cfg = FinetuneConfig(
            model=ModelConfig(name="tiny", path=str(FIXTURE), dtype=dtype, device="cpu"),
            data="unused",
            out="unused",
            train=TrainConfig(lora=LoraConfig(enabled=lora, base_dtype="bfloat16")),
        )
        model, _, _ = load_model(cfg, torch.device("cpu"))
        return {p.dtype for p in model.parameters()}

    assert loaded(None, True) == {torch.bfloat16}  # read straight into bf16, no fp32 copy
    assert loaded(None, False) == {torch.float32}  # full fine-tuning keeps fp32 master weights
    assert loaded("float32", True) == {torch.float32}  # an explicit model.dtype wins at load time
