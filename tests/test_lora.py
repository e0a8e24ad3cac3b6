"""LoRA fine-tuning: only adapters train, merge-on-save gives a plain BAGEL folder, clear errors."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
from worldbagel.errors import ConfigError, DependencyNotInstalled
from worldbagel.model.sequence import SpecialIds
from worldbagel.model.transforms import ImageTransform
from worldbagel.train.options import LoraConfig, OptimConfig, TrainConfig

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def parts():
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset("scratch-tiny", seed=0)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = fresh.tokenizer.special
    data = TrainingData(
        toy_episodes(1, steps=3, annotate=True),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(),
        DropoutConfig(0.0, 0.0, 0.0),
        PackingConfig(512, 576, 512),
    )
    return fresh, data


def run(parts, out, lora: LoraConfig, steps=2, ema_decay=0.0):
    from worldbagel.model.bagel import Bagel
    from worldbagel.train.loop import Trainer

    fresh, data = parts
    torch.manual_seed(0)
    model = Bagel(copy.deepcopy(fresh.config))
    model.init_weights()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=steps, ema_decay=ema_decay, optim=OptimConfig(lr=1e-2), lora=lora)
    tr = Trainer(model, data, cfg, out, fresh.vae, fresh.tokenizer)
    tr.train()
    return tr, before


def test_only_adapter_weights_change(parts, tmp_path):
    tr, before = run(parts, tmp_path, LoraConfig(enabled=True, r=4, merge_on_save=False))
    after = tr.model.state_dict()
    lora_keys = [k for k in after if ".lora_" in k]
    assert lora_keys and set(tr.trainable) == {n for n in lora_keys}
    lora_b = [k for k in lora_keys if ".lora_B." in k]
    # peft starts B at zero; the und adapters train from the CE loss (llm2vae is zero and frozen here, so the
    # gen expert's query/output adapters get no gradient yet)
    trained = {k for k in lora_b if after[k].abs().sum() > 0}
    assert "language_model.model.layers.0.self_attn.q_proj.lora_B.default.weight" in trained
    for k, v in after.items():
        if ".lora_" not in k:
            assert torch.equal(v, before[k.replace(".base_layer.", ".")]), k  # every base weight untouched
    from worldbagel.model.weights_file import load_file

    assert all(".lora_" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    base = load_file(tmp_path / "ema.safetensors")
    assert all(torch.equal(base[k], before[k]) for k in before)  # not merged: the base weights


def test_merge_on_save_gives_a_plain_bagel_folder_with_the_same_outputs(parts, tmp_path):
    from worldbagel.model.bagel import Bagel

    tr, _ = run(parts, tmp_path, LoraConfig(enabled=True, r=4, train_modules=["llm2vae"]), steps=3)
    merged = Bagel.from_pretrained(tmp_path)
    assert not any("lora" in k for k in merged.state_dict())
    batch = parts[1].batch(0)
    with torch.no_grad():
        want = tr.model.eval().forward_packed(batch.seq)[0]
        got = merged.forward_packed(batch.seq)[0]
    assert torch.allclose(got, want, atol=1e-5)
    delta = merged.state_dict()["language_model.model.layers.0.self_attn.q_proj.weight"]
    base = tr.model.state_dict()["language_model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.equal(delta, base)  # the adapters were merged in


def test_missing_peft_and_bad_targets(parts, monkeypatch):
    from worldbagel.model.bagel import Bagel
    from worldbagel.train.lora import inject_lora

    model = Bagel(copy.deepcopy(parts[0].config))
    with pytest.raises(ConfigError, match="target_modules"):
        inject_lora(model, LoraConfig(enabled=True, target_modules=["qkv"]))
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(DependencyNotInstalled, match="pip install"):
        inject_lora(model, LoraConfig(enabled=True))
