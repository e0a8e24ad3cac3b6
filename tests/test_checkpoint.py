"""Loading the official-layout folder strictly, the dtype policy, bit-exact save round trips, clear errors."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from worldbagel import Bagel
from worldbagel.errors import CheckpointError, ConfigError
from worldbagel.model.bagel_folder import load_bagel
from worldbagel.model.checkpoint import load_pretrained, resolve_dtype, save_pretrained
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.weights_file import read_header, read_tensors, write_file

TINY_PARAMS = 1_036_480


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_bagel(tiny_dir)


@pytest.fixture(scope="module")
def ema(tiny_dir) -> dict[str, torch.Tensor]:
    return load_file(tiny_dir / "ema.safetensors")


def _copy(tiny_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_dir, dst)
    return dst


# ------------------------------------------------------------------------------------------ loading
def test_fixture_loads_strictly_and_consumes_every_tensor(loaded, ema, tiny_dir):
    model = loaded.model
    assert sum(p.numel() for p in model.parameters()) == TINY_PARAMS
    sd = model.state_dict()
    assert set(sd) == set(ema)
    for k, v in ema.items():
        assert sd[k].dtype == torch.float32 and torch.equal(sd[k], v), k
    ae_numel = sum(e.numel for e in read_header(tiny_dir / "ae.safetensors").entries.values())
    assert sum(p.numel() for p in loaded.vae.parameters()) == ae_numel == 1_271_427
    assert not model.training
    assert model.pretrained_dir == tiny_dir
    assert loaded.tokenizer.special.bos_token_id == 389
    assert loaded.config == BagelConfig.from_folder(tiny_dir)


def test_meta_build_leaves_nothing_on_meta_and_keeps_frozen_tables(loaded):
    model = loaded.model
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not model.latent_pos_embed.pos_embed.requires_grad
    assert not model.vit_pos_embed.pos_embed.requires_grad
    assert model.language_model.lm_head.weight.requires_grad
    rope = model.language_model.model.rotary_emb
    head_dim = loaded.config.llm.head_dim
    want = 1.0 / loaded.config.llm.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    torch.testing.assert_close(rope.inv_freq, want)
    assert rope.inv_freq.dtype == torch.float32


def test_classmethod_delegates(tiny_dir, ema):
    model = Bagel.from_pretrained(tiny_dir)
    assert torch.equal(
        model.state_dict()["language_model.lm_head.weight"], ema["language_model.lm_head.weight"]
    )


def test_dtype_policy(tiny_dir, tmp_path, ema):
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, "cuda") is None
    assert resolve_dtype("keep", "cpu") is None
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("int3", "cpu")
    # a bf16-stored folder: kept with "keep", fp32 by default on CPU
    folder = _copy(tiny_dir, tmp_path)
    save_file({k: v.to(torch.bfloat16) for k, v in ema.items()}, folder / "ema.safetensors")
    kept = load_pretrained(Bagel, folder, dtype="keep")
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    assert kept.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    default = load_pretrained(Bagel, folder)
    assert {p.dtype for p in default.parameters()} == {torch.float32}
    k = "language_model.lm_head.weight"
    assert torch.equal(default.state_dict()[k], ema[k].to(torch.bfloat16).float())
    cast = load_pretrained(Bagel, tiny_dir, dtype="bfloat16")
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------------------------------ saving
def test_save_load_round_trip_is_bit_identical(loaded, tiny_dir, tmp_path):
    out = save_pretrained(loaded.model, tmp_path / "saved", loaded.vae, loaded.tokenizer)
    for name in (
        "llm_config.json",
        "vit_config.json",
        "vae_config.json",
        "ema.safetensors",
        "ae.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    again = load_bagel(out)
    assert again.config == loaded.config
    a, b = loaded.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va, vb = loaded.vae.state_dict(), again.vae.state_dict()
    assert va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va)
    text = "go forward"
    assert again.tokenizer.special == loaded.tokenizer.special
    assert again.tokenizer.encode(text) == loaded.tokenizer.encode(text)
    # the files themselves equal the official ones tensor by tensor (read with the safetensors library)
    for name in ("ema.safetensors", "ae.safetensors"):
        ref, got = load_file(tiny_dir / name), load_file(out / name)
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), name


def test_save_without_vae_copies_from_the_source_folder_and_overwrites_in_place(tiny_dir, tmp_path, ema):
    model = Bagel.from_pretrained(tiny_dir)
    out = tmp_path / "plain"
    model.save_pretrained(out)
    assert (out / "ae.safetensors").read_bytes() == (tiny_dir / "ae.safetensors").read_bytes()
    assert (out / "vocab.json").is_file()
    # fine-tune-like change, saved over the existing folder
    with torch.no_grad():
        model.llm2vae.bias.add_(1.0)
    save_pretrained(model, out)
    again = Bagel.from_pretrained(out)
    assert torch.equal(again.llm2vae.bias, ema["llm2vae.bias"] + 1.0)


def test_save_bf16_keeps_bf16(tiny_dir, tmp_path):
    model = load_pretrained(Bagel, tiny_dir, dtype="bf16")
    out = save_pretrained(model, tmp_path / "bf16")
    assert set(read_header(out / "ema.safetensors").dtype_counts()) == {"BF16"}


# ------------------------------------------------------------------------------------------ errors
def test_missing_folder_and_missing_files_are_named(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_bagel(tmp_path / "nope")
    assert "ema.safetensors" in str(info.value)  # says what the folder should contain
    for name in ("ema.safetensors", "ae.safetensors", "llm_config.json"):
        folder = _copy(tiny_dir, tmp_path / name)
        (folder / name).unlink()
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_bagel(folder)
    folder = _copy(tiny_dir, tmp_path / "tok")
    for f in ("vocab.json", "merges.txt"):
        (folder / f).unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_bagel(folder)


def test_extra_key_is_named(tiny_dir, tmp_path, ema):
    folder = _copy(tiny_dir, tmp_path)
    save_file({**ema, "language_model.model.extra.weight": torch.zeros(3)}, folder / "ema.safetensors")
    with pytest.raises(CheckpointError) as info:
        Bagel.from_pretrained(folder)
    msg = str(info.value)
    assert (
        "ema.safetensors" in msg
        and "language_model.model.extra.weight" in msg
        and "1 key(s) unexpected" in msg
    )


def test_missing_keys_are_listed_with_a_count(tiny_dir, tmp_path, ema):
    folder = _copy(tiny_dir, tmp_path)
    kept = {k: v for k, v in ema.items() if not k.startswith("vit_model.vision_model.encoder.layers.1.")}
    save_file(kept, folder / "ema.safetensors")
    with pytest.raises(CheckpointError) as info:
        Bagel.from_pretrained(folder)
    msg = str(info.value)
    assert (
        "16 key(s) missing" in msg
        and "(+11 more)" in msg
        and "vit_model.vision_model.encoder.layers.1." in msg
    )


def test_wrong_shape_is_named(tiny_dir, tmp_path, ema):
    folder = _copy(tiny_dir, tmp_path)
    bad = dict(ema)
    bad["llm2vae.weight"] = torch.zeros(64, 32)
    save_file(bad, folder / "ema.safetensors")
    with pytest.raises(CheckpointError) as info:
        Bagel.from_pretrained(folder)
    msg = str(info.value)
    assert "llm2vae.weight file [64, 32] vs model [64, 64]" in msg and "ema.safetensors" in msg


@pytest.mark.parametrize("cut", [4, 1000, -10])
def test_truncated_safetensors_is_a_clear_error(tiny_dir, tmp_path, cut):
    folder = _copy(tiny_dir, tmp_path)
    data = (tiny_dir / "ema.safetensors").read_bytes()
    (folder / "ema.safetensors").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        Bagel.from_pretrained(folder)
    assert "ema.safetensors" in str(info.value)


def test_garbage_header_is_a_clear_error(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    (folder / "ae.safetensors").write_bytes(struct.pack("<Q", 16) + b"not json at all!" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"ae\.safetensors is corrupt"):
        load_bagel(folder)


def test_bad_config_json_is_named(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    (folder / "vit_config.json").write_text("{ nope")
    with pytest.raises(CheckpointError, match="vit_config.json"):
        load_bagel(folder)


def test_tokenizer_larger_than_embedding_is_rejected(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    cfg = json.loads((folder / "llm_config.json").read_text())
    cfg["vocab_size"] = 300
    (folder / "llm_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="393 ids"):
        load_bagel(folder)


# ------------------------------------------------------------------------------------------ weights files
def test_weights_files_interoperate_with_the_safetensors_library(tmp_path):
    tensors = {
        "a.bf16": torch.randn(3, 5).to(torch.bfloat16),
        "b.f32": torch.randn(7),
        "c.i64": torch.arange(6).reshape(2, 3),
        "d.bool": torch.tensor([True, False, True]),
        "e.f16": torch.randn(2, 2, 2).half(),
        "f.scalar": torch.tensor(3.5),
        "g.empty": torch.zeros(0, 4),
    }
    ours = tmp_path / "ours.safetensors"
    write_file(ours, tensors, metadata={"format": "pt"})
    with safe_open(ours, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got, v), k
    theirs = tmp_path / "theirs.safetensors"
    save_file(tensors, theirs)
    got = dict(read_tensors(read_header(theirs)))
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    cast = dict(read_tensors(read_header(theirs), ["a.bf16", "c.i64"], dtype=torch.float32))
    assert cast["a.bf16"].dtype == torch.float32 and cast["c.i64"].dtype == torch.int64
