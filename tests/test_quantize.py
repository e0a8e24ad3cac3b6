"""Weight-only quantisation (worldbagel/model/quantize.py, `model.quantize`): int8 on the CPU fixture stays close
to fp32, is deterministic and stores the bytes the memory plan predicts; nf4 is CUDA-only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldbagel.errors import ConfigError
from worldbagel.inference.generate import generate_text
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.model.memory_plan import count_params, weight_bytes
from worldbagel.model.quantize import quantizable_linears, stored_bytes
from worldbagel.model.transforms import ImageTransform

pytest.importorskip("torchao", reason="int8 needs torchao (the dev extra installs it)")

TRANSFORMS = {"vae_transform": ImageTransform(64, 32, 16), "vit_transform": ImageTransform(56, 28, 14)}


def _run(pipe, frame):
    """Latents of a 6-step guided generation and 8 greedy text tokens with their logits."""
    ic = pipe.interleave_contexts([frame, "move forward"])
    out = pipe.generate_image(
        ic, config=SamplerConfig(num_steps=6), generator=torch.Generator().manual_seed(0), decode=False
    )
    text = generate_text(ic.context.fork(), max_new_tokens=8, return_logits=True)
    return out.latents, text.ids, torch.stack(text.logits)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def test_int8_is_close_to_fp32_deterministic_and_as_small_as_planned(tiny_dir):
    fp32 = BagelPipeline.from_pretrained(tiny_dir, **TRANSFORMS)
    weights = {n: m.weight.detach().clone() for n, m in quantizable_linears(fp32.model).items()}
    int8 = BagelPipeline.from_pretrained(tiny_dir, quantize="int8", **TRANSFORMS)
    again = BagelPipeline.from_pretrained(tiny_dir, quantize="int8", **TRANSFORMS)
    frame = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")

    # every weight is within half a quantisation step of its fp32 value: |w_q - w| <= max|w_row| / 254
    for name, m in quantizable_linears(int8.model).items():
        step = weights[name].abs().amax(1, keepdim=True) / 127
        assert m.weight.qdata.dtype == torch.int8, name
        assert ((m.weight.dequantize() - weights[name]).abs() <= step / 2 * (1 + 1e-5)).all(), name
    # Tolerance: a linear whose weights are rounded by at most step/2 (uniform error, std step/sqrt(12)) has
    # outputs off by a relative RMS of e = step / (sqrt(12) rms(w_row)), measured per row of the fixture's
    # weights (~0.6 %). Errors of the ~4 quantised stages per layer (q/k/v, o, gate/up, down) add in
    # quadrature through the residual stream: sqrt(4 layers) e. Three times that is allowed.
    e = float(
        torch.stack(
            [
                (w.abs().amax(1) / 127 / math.sqrt(12) / w.pow(2).mean(1).sqrt()).mean()
                for w in weights.values()
            ]
        ).mean()
    )
    tolerance = 3 * math.sqrt(4 * fp32.model.config.llm.num_hidden_layers) * e
    ref_latents, ref_ids, ref_logits = _run(fp32, frame)
    latents, ids, logits = _run(int8, frame)
    assert 0 < _rel(latents, ref_latents) < tolerance and 0 < _rel(logits, ref_logits) < tolerance
    assert ids == ref_ids
    latents2, ids2, logits2 = _run(again, frame)
    assert torch.equal(latents, latents2) and ids == ids2 and torch.equal(logits, logits2)

    planned = weight_bytes(count_params(fp32.model.config), "int8", dense_bytes=4)  # fp32 elsewhere
    assert (
        stored_bytes(int8.model)
        == planned
        < stored_bytes(fp32.model)
        == 4 * sum(p.numel() for p in fp32.model.parameters())
    )


def test_model_config_quantize_reaches_the_loader(tiny_dir):
    from worldbagel.world_model_loader import load_pipeline

    pipe = load_pipeline({"name": "tiny", "path": str(tiny_dir), "quantize": "int8"})
    assert pipe.model.quantization == "int8"
    assert type(pipe.model.language_model.model.layers[0].mlp.down_proj.weight).__name__ == "Int8Tensor"
    assert type(pipe.model.language_model.lm_head.weight) is torch.nn.Parameter  # lm_head stays dense
    with pytest.raises(ConfigError, match="model.quantize='int4'"):
        load_pipeline({"name": "tiny", "path": str(tiny_dir), "quantize": "int4"})


def test_nf4_on_cpu_is_a_clear_error(tiny_dir):
    with pytest.raises(ConfigError, match="nf4.*CUDA only"):
        BagelPipeline.from_pretrained(tiny_dir, quantize="nf4", **TRANSFORMS)


@pytest.mark.gpu
def test_nf4_on_cuda_matches_bf16_and_the_plan(tiny_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("bitsandbytes", reason="nf4 needs bitsandbytes (the quant extra)")
    kw = {"dtype": "bfloat16", "device": "cuda", **TRANSFORMS}
    bf16 = BagelPipeline.from_pretrained(tiny_dir, **kw)
    nf4 = BagelPipeline.from_pretrained(tiny_dir, quantize="nf4", **kw)
    frame = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
    ref, _, ref_logits = _run(bf16, frame)
    got, _, logits = _run(nf4, frame)
    # 4-bit weights: ~7 levels per sign in a block, relative weight error up to ~10 %; outputs stay correlated
    assert torch.isfinite(got).all() and _rel(got.float(), ref.float()) < 0.5
    assert (
        torch.nn.functional.cosine_similarity(logits.flatten().float(), ref_logits.flatten().float(), 0) > 0.9
    )
    planned = weight_bytes(count_params(bf16.model.config), "nf4")
    assert abs(stored_bytes(nf4.model) - planned) < 0.02 * planned
