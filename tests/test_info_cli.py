"""`worldbagel info MODEL_DIR`: config table, parameters per expert (headers or meta model), files, errors."""

from __future__ import annotations

import re

import pytest

from worldbagel.cli import main
from worldbagel.model.bagel import Bagel, count_parameters
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.folder_info import inspect_folder


def _run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["info", *argv])
    out = capsys.readouterr().out
    return rc, re.sub(r"\s+", " ", out)


def test_info_prints_config_parameters_and_files(tiny_dir, capsys):
    rc, out = _run(capsys, str(tiny_dir))
    assert rc == 0
    assert "Qwen2MoTDecoderLayer" in out and "64 / 160" in out and "32 x [1, 2, 2, 2] / 1" in out
    assert "1,036,480" in out and "1,271,427" in out and "2,307,907" in out
    assert "ema.safetensors" in out and "F32 (1.04 M)" in out and "vocab.json" in out
    assert "safetensors headers" in out


def test_header_counts_equal_the_meta_model_counts(tiny_dir, capsys):
    from_headers = inspect_folder(tiny_dir)
    from_meta = inspect_folder(tiny_dir, read_weights=False)
    assert from_headers.source == "safetensors headers" and from_meta.source == "meta-device model"
    assert from_headers.parts == from_meta.parts and from_headers.vae_params == from_meta.vae_params
    assert from_headers.bagel_params == 1_036_480
    assert from_headers.parts["und"] == from_headers.parts["gen"]  # MoT: the experts are twins
    # the same split as Bagel's own count (coarser groups)
    model = Bagel.from_pretrained(tiny_dir)
    coarse = count_parameters(model)
    p = from_headers.parts
    assert (coarse["llm_und"], coarse["llm_gen"], coarse["llm_embed_head"], coarse["vit"]) == (
        p["und"],
        p["gen"],
        p["embed_head"],
        p["vit"],
    )
    assert coarse["connector_heads"] == p["und_heads"] + p["gen_heads"]
    rc, out = _run(capsys, str(tiny_dir), "weights=false")
    assert rc == 0 and "meta-device model" in out and "1,036,480" in out


def test_release_sized_config_matches_the_spec_sanity_numbers(tmp_path):
    """A config-only folder of the 7B release: counts from the meta model equal spec §1.6."""
    BagelConfig().to_folder(tmp_path)
    info = inspect_folder(tmp_path)  # builds on the meta device: no 14 B parameters allocated
    p = info.parts
    assert p["und"] + p["gen"] + p["embed_head"] == 14_141_252_608
    assert p["vit"] == 402_552_736
    assert p["und_heads"] == 16_980_992 + 4900 * 3584
    assert p["gen_heads"] == 13_769_728 + 462_400 + 4096 * 3584
    assert info.vae_params == 83_819_683  # the FLUX.1 autoencoder


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    rc, out = _run(capsys, str(tmp_path / "nope"))
    assert rc == 1
    assert "nope" in out and "does not exist" in out and "llm_config.json" in out


def test_folder_without_configs_names_the_file(tmp_path, capsys):
    rc, out = _run(capsys, str(tmp_path))
    assert rc == 1 and "llm_config.json" in out


@pytest.mark.parametrize("argv", [["--cfg"]])
def test_cfg_flag_prints_the_config(tiny_dir, capsys, argv):
    rc, out = _run(capsys, str(tiny_dir), *argv)
    assert rc == 0 and "model_dir" in out and "weights: true" in out
