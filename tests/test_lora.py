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
    from toy_training import toy_training_data

    from worldbagel.train.presets import build_preset

    fresh = build_preset("scratch-tiny", seed=0)
    return fresh, toy_training_data(fresh, PlanConfig(), PackingConfig(512, 576, 512))


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
    with pytest.raises(ConfigError, match="train_modules.*llm2vae"):  # a typo would train nothing
        inject_lora(model, LoraConfig(enabled=True, train_modules=["lm2vae"]))
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(DependencyNotInstalled, match="pip install"):
        inject_lora(model, LoraConfig(enabled=True))


# ------------------------------------------------------------------------- unmerged exports that load
@pytest.fixture(scope="module")
def exports(tiny_dir, tmp_path_factory):
    """LoRA (+ a fully trained llm2vae) trained 3 steps on the tiny fixture, exported unmerged (the run
    folder) and merged (a second export of the same weights)."""
    from worldbagel.model.bagel_folder import load_bagel
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.loop import Trainer
    from worldbagel.train.toy_episodes import toy_episodes

    loaded = load_bagel(tiny_dir)
    encoder = FrameEncoder(loaded.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = loaded.tokenizer.special
    data = TrainingData(
        toy_episodes(1, steps=3, annotate=True),
        encoder,
        loaded.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(),
        DropoutConfig(0.0, 0.0, 0.0),
        PackingConfig(512, 576, 512),
    )
    lora = LoraConfig(enabled=True, r=4, train_modules=["llm2vae"], merge_on_save=False)
    unmerged = tmp_path_factory.mktemp("unmerged")
    torch.manual_seed(0)
    tr = Trainer(
        loaded.model,
        data,
        TrainConfig(steps=3, ema_decay=0.5, optim=OptimConfig(lr=1e-2), lora=lora),
        unmerged,
        loaded.vae,
        loaded.tokenizer,
    )
    tr.train()
    merged = tmp_path_factory.mktemp("merged")
    for f in (
        "adapter_model.safetensors",
        "adapter_config.json",
    ):  # as if an unmerged export was there before
        (merged / f).write_bytes((unmerged / f).read_bytes())
    tr.cfg.lora.merge_on_save = True
    tr.out_dir = merged
    tr.export()
    return unmerged, merged, data.batch(0)


def _outputs(model, batch) -> torch.Tensor:
    """Hidden states, text logits and flow velocities of one packed batch, side by side."""
    with torch.no_grad():
        hidden = model.eval().forward_packed(batch.seq)[0]
        return torch.cat([hidden, model.logits(hidden), model.velocity(hidden)], dim=-1)


def test_unmerged_export_loads_with_its_adapter_applied(exports, tiny_dir, caplog):
    from worldbagel.model.bagel_folder import load_bagel

    unmerged, merged, batch = exports
    with caplog.at_level("INFO", logger="worldbagel.model.lora_adapter"):
        a = load_bagel(unmerged).model
    assert any("adapter_model.safetensors" in r.getMessage() for r in caplog.records)  # says what it applied
    assert not list(merged.glob("adapter_*"))  # a merged export leaves no adapter to apply twice
    b = load_bagel(merged).model
    base = load_bagel(tiny_dir).model
    got, want, plain = _outputs(a, batch), _outputs(b, batch), _outputs(base, batch)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (got - plain).abs().max() > 1e-3  # the fine-tune, not the base
    for k, v in b.state_dict().items():
        assert torch.allclose(a.state_dict()[k], v, atol=1e-6), k


def test_adapter_folder_is_in_peft_format_and_peft_loads_it(exports):
    import json

    import peft
    from peft.utils import set_peft_model_state_dict

    from worldbagel.model.bagel import Bagel
    from worldbagel.model.bagel_folder import load_bagel
    from worldbagel.model.checkpoint import load_pretrained
    from worldbagel.model.weights_file import load_file

    unmerged, merged, batch = exports
    spec = json.loads((unmerged / "adapter_config.json").read_text())
    assert spec["peft_type"] == "LORA" and "task_type" in spec and spec["modules_to_save"] == ["llm2vae"]
    assert spec["r"] == 4 and spec["lora_alpha"] == 32.0
    tensors = load_file(unmerged / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") for k in tensors)
    assert "base_model.model.llm2vae.weight" in tensors

    # peft's own key matching: every adapter key lands on a parameter, none is missing
    base = load_pretrained(Bagel, unmerged, adapter=False)
    config = peft.LoraConfig.from_pretrained(str(unmerged))
    config.base_model_name_or_path = None  # get_peft_model takes it from the model (a Bagel names none)
    probe = peft.get_peft_model(copy.deepcopy(base), config)
    result = set_peft_model_state_dict(probe, tensors)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if ".lora_" in k or "modules_to_save" in k]

    # PeftModel.from_pretrained on the base gives the same model as worldbagel's own loader
    pm = peft.PeftModel.from_pretrained(base, str(unmerged)).merge_and_unload()
    ours = load_bagel(unmerged).model.state_dict()
    peft_state = pm.state_dict()
    assert set(peft_state) == set(ours)
    for k, v in ours.items():
        assert torch.allclose(peft_state[k], v, atol=1e-6), k
    plain = load_pretrained(Bagel, unmerged, adapter=False).state_dict()
    assert any(not torch.equal(plain[k], v) for k, v in ours.items())


def test_adapter_only_folder_finds_its_base_or_says_how(exports, tiny_dir, tmp_path):
    import json
    import os
    import shutil

    from worldbagel.errors import CheckpointError
    from worldbagel.model.bagel_folder import load_bagel

    unmerged, merged, batch = exports
    only = tmp_path / "adapter-only"
    only.mkdir()
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copyfile(unmerged / f, only / f)
    spec = json.loads((only / "adapter_config.json").read_text())
    # trained from tests/fixtures/bagel-tiny: the config names it, and loading finds it there
    assert spec["base_model_name_or_path"] == str(tiny_dir.resolve())
    want = _outputs(load_bagel(merged).model, batch)
    got = _outputs(load_bagel(only).model, batch)
    assert torch.allclose(got, want, atol=1e-5)

    spec["base_model_name_or_path"] = str(tmp_path / "gone")
    (only / "adapter_config.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError) as err:
        load_bagel(only)
    msg = str(err.value)
    assert str(tmp_path / "gone") in msg and "adapter_config.json" in msg and "base=" in msg
    # the base= argument points at it instead
    got = _outputs(load_bagel(only, base=tiny_dir).model, batch)
    assert torch.allclose(got, want, atol=1e-5)
    # a relative path is read from the adapter folder
    spec["base_model_name_or_path"] = os.path.relpath(tiny_dir, only)
    (only / "adapter_config.json").write_text(json.dumps(spec))
    got = _outputs(load_bagel(only).model, batch)
    assert torch.allclose(got, want, atol=1e-5)
    # no base named at all
    spec["base_model_name_or_path"] = None
    (only / "adapter_config.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="names no base_model_name_or_path"):
        load_bagel(only)


def test_earlier_key_format_loads_and_unknown_options_are_refused(exports, tmp_path):
    """Folders exported before the peft format (keys without `base_model.model.`, a five-field config)
    still load; an option the merge does not implement is one clear error."""
    import json
    import shutil

    from worldbagel.errors import CheckpointError
    from worldbagel.model.bagel_folder import load_bagel
    from worldbagel.model.weights_file import load_file, write_file

    unmerged, merged, batch = exports
    old = tmp_path / "old"
    shutil.copytree(unmerged, old)
    tensors = load_file(old / "adapter_model.safetensors")
    lora = {k.removeprefix("base_model.model."): t for k, t in tensors.items() if ".lora_" in k}
    write_file(old / "adapter_model.safetensors", lora)  # llm2vae lives only in the folder's ema.safetensors
    spec = json.loads((old / "adapter_config.json").read_text())
    keep = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules")
    (old / "adapter_config.json").write_text(json.dumps({k: spec[k] for k in keep}))
    got, want = _outputs(load_bagel(old).model, batch), _outputs(load_bagel(merged).model, batch)
    assert torch.allclose(got, want, atol=1e-5)

    (old / "adapter_config.json").write_text(json.dumps({**spec, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora"):
        load_bagel(old)


def test_adapter_with_a_nan_is_refused_naming_the_tensor(exports, tmp_path):
    import shutil

    from worldbagel.errors import CheckpointError
    from worldbagel.model.bagel_folder import load_bagel
    from worldbagel.model.weights_file import load_file, write_file

    unmerged, _, _ = exports
    bad = tmp_path / "bad"
    shutil.copytree(unmerged, bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    name = sorted(k for k in tensors if k.endswith("lora_B.weight"))[0]
    tensors[name][0, 0] = float("nan")
    write_file(bad / "adapter_model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_bagel(bad)
