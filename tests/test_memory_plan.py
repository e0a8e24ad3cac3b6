"""The memory plan (worldbagel/model/memory_plan.py): exact against the release's meta model and the KV cache's
tensors, within 15 % of measured CPU peaks of small models, and printed by `worldbagel info DIR plan=true`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from worldbagel.model.activation_memory import (
    Shapes,
    TrainingTokens,
    denoise_step_bytes,
    training_activation_bytes,
)
from worldbagel.model.bagel import Bagel
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.memory_plan import PlanOptions, kv_bytes_per_token, memory_plan, weight_bytes

MEASURE = Path(__file__).with_name("memory_measure.py")
TOLERANCE = 0.15


def test_release_plan_counts_the_meta_model_exactly():
    """The plan's weights are the meta model's parameter bytes (14,607,260,128 parameters, 1223 tensors)."""
    config = BagelConfig()
    plan = memory_plan(config, PlanOptions(height=512, width=512))
    with torch.device("meta"):
        model = Bagel(config)
    params = list(model.parameters())
    assert plan.params.total == sum(p.numel() for p in params) == 14_607_260_128
    assert plan.params.tensors == len(params) == 1223
    assert plan.setting("bf16").part("weights") == sum(p.numel() * 2 for p in params)
    assert weight_bytes(plan.params, "fp32") == sum(p.numel() * p.element_size() for p in params)
    # int8: one byte per decoder-linear weight, fp32 scale + int8 zero point per output row, the rest bf16
    linears = [m for m in model.language_model.model.layers.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 28 * 14  # both experts' q, k, v, o, gate, up, down
    quantized = sum(m.weight.numel() for m in linears)
    expected = 2 * (plan.params.total - quantized) + quantized + 5 * sum(m.out_features for m in linears)
    assert plan.setting("int8").part("weights") == expected
    # K/V: one per token (the experts share attention): 2 x 28 layers x 4 kv heads x 128 x 2 bytes
    assert plan.kv_per_token == kv_bytes_per_token(config) == 2 * 28 * 4 * 128 * 2
    # a 512 x 512 frame: 32 x 32 latent tokens, 37 x 37 ViT patches (518 px by the ViT transform), + markers
    assert (plan.frame.vae, plan.frame.vit, plan.frame.text) == (1026, 1371, 10)
    assert not plan.setting("bf16").fits(24) and plan.setting("bf16").fits(40)
    assert plan.setting("int8").fits(24) and plan.setting("nf4").total < plan.setting("int8").total
    assert plan.setting("bf16 TP2").part("weights") < 0.6 * plan.setting("bf16").part("weights")
    assert plan.setting("full + AC").part("activations") < plan.setting("full").part("activations") / 5


def test_plan_options_are_checked():
    from worldbagel.errors import ConfigError

    with pytest.raises(ConfigError, match="cfg_branches"):
        memory_plan(BagelConfig(), PlanOptions(cfg_branches=4))
    with pytest.raises(ConfigError, match="attention"):
        memory_plan(BagelConfig(), PlanOptions(attention="eager"))


def test_kv_cache_bytes_equal_the_cache_tensors(tiny_pipe, frame):
    """The three CFG contexts of a 2-frame history hold exactly the plan's KV bytes (fp32 cache)."""
    text = "move forward"
    ic = tiny_pipe.interleave_contexts([frame, text, frame, text])
    storages = {}
    for ctx in (ic.context, ic.cfg_text_context, ic.cfg_img_context):
        for k, v in ctx.cache.layers:
            for t in (k, v):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    options = PlanOptions(
        height=64,
        width=64,
        context_frames=2,
        text_tokens=len(tiny_pipe.tokenizer.encode(text)),
        vit_image_size=[56, 28, 14],
        act_bytes=4,
    )
    plan = memory_plan(tiny_pipe.model.config, options)
    assert plan.context_tokens == ic.context.num_tokens
    assert plan.setting("bf16").part("KV cache") == sum(storages.values())


def _measure(specs: list[dict]) -> list[dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(MEASURE), json.dumps(specs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _config(name: str) -> BagelConfig:
    if name == "fixture":
        return BagelConfig.from_folder(Path(__file__).parent / "fixtures" / "bagel-tiny")
    from worldbagel.train.presets import build_preset

    return build_preset(name).config


TRAIN = {"what": "train", "model": "scratch-small", "rank": 8, "latent_side": 16, "vit_side": 16, "text": 20}
SPECS = [
    {"what": "denoise", "model": "fixture", "size": 384, "vit_size": 224, "frames": 2},
    {"what": "denoise", "model": "scratch-small", "size": 512, "vit_size": 112, "frames": 1},
    {**TRAIN, "lora": True, "checkpointing": False, "samples": 2},
    {**TRAIN, "lora": True, "checkpointing": True, "samples": 2},
    {**TRAIN, "lora": False, "checkpointing": False, "samples": 2},
    {**TRAIN, "lora": False, "checkpointing": True, "samples": 2},
    {**TRAIN, "lora": True, "checkpointing": False, "samples": 2, "dtype": "bfloat16"},
]


def _predicted(spec: dict, got: dict) -> int:
    shapes = Shapes.of(_config(spec["model"]))
    if spec["what"] == "denoise":  # the CPU path: sdpa attention, fp32
        return denoise_step_bytes(shapes, [got["query"]] * 3, got["pasts"], 4, 4, "sdpa")
    b = 2 if spec.get("dtype") == "bfloat16" else 4
    tokens = TrainingTokens(
        got["tokens"], got["sample_tokens"], got["vit_tokens"], spec["vit_side"] ** 2, got["ce_tokens"]
    )
    return training_activation_bytes(
        shapes, tokens, b, b, spec["lora"], spec["rank"], spec["checkpointing"], "sdpa"
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_activations_within_15_percent_of_measured_cpu_peaks():
    """Peak resident growth of one denoising step (3 CFG branches batched) and of one training forward +
    backward (LoRA / full, with and without checkpointing, fp32 and bf16) against the plan's activations."""
    results = _measure(SPECS)
    report = []
    for spec, got in zip(SPECS, results):
        predicted = _predicted(spec, got)
        report.append((spec, got["grown"], predicted, predicted / got["grown"]))
    bad = [r for r in report if abs(r[3] - 1) > TOLERANCE]
    assert not bad, "\n".join(f"{s}: measured {m:,} B, planned {p:,} B ({q:.2f}x)" for s, m, p, q in bad)
    # checkpointing saves most of a training step's activations, as planned
    assert results[3]["grown"] < 0.5 * results[2]["grown"] and results[5]["grown"] < 0.5 * results[4]["grown"]


def test_optimizer_and_lora_state_equal_the_plan():
    """AdamW's state after a step and peft's adapters at the trainer's default targets: the plan's counts."""
    from worldbagel.train.lora import inject_lora
    from worldbagel.train.options import LoraConfig
    from worldbagel.train.presets import build_preset

    fresh = build_preset("scratch-tiny")
    rank = 4
    options = PlanOptions(height=64, width=64, gpus=1, lora_rank=rank, act_bytes=4)
    plan = memory_plan(fresh.config, options)
    model = fresh.model
    inject_lora(model, LoraConfig(enabled=True, r=rank))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == plan.params.lora * rank
    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())
    assert plan.setting("LoRA").part("optimizer") == state
    assert plan.setting("LoRA").part("gradients") == sum(p.grad.numel() * 4 for p in trainable)


def test_info_prints_the_plan(tmp_path, capsys):
    from worldbagel.cli import main

    BagelConfig().to_folder(tmp_path)
    rc = main(["info", str(tmp_path), "plan=true", "memory.height=256", "memory.width=256", "memory.gpus=4"])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert rc == 0
    assert "Memory plan: 256x256 frames" in out and "14,607,260,128 / 1,223" in out
    assert "258 / 326 / 10" in out  # 16 x 16 latent tokens; the ViT upscales 256 px to 252: 18 x 18 patches
    assert re.search(r"bf16 27\.2 0\.2 \d+\.\d \d+\.\d 2\d\.\d no yes yes yes yes", out), out
    assert "FSDP over 4" in out and re.search(r"full \+ AC [\d. ]+ (no|yes)", out)
    rc = main(["info", str(tmp_path), "plan=true", "memory.cfg_branches=5"])
    assert rc == 1 and "invalid cfg_branches=5" in capsys.readouterr().out
