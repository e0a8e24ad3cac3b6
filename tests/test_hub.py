"""Repo ids (`ByteDance-Seed/BAGEL-7B-MoT`) resolve from the local Hugging Face cache; nothing is downloaded.

The cache is built in the test with huggingface_hub's real layout (models--org--name/refs/main,
snapshots/<sha>/<file> -> ../../blobs/<hash>), holding the tiny fixture, and read by huggingface_hub itself.
"""

from __future__ import annotations

import hashlib
import os
import re

import pytest
import torch

from worldbagel.cli import main
from worldbagel.errors import CheckpointError
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.model.hub import looks_like_repo_id, resolve_model_folder
from worldbagel.world_model_loader import clear_pipeline_cache, load_pipeline

REPO = "ByteDance-Seed/BAGEL-7B-MoT"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id, source, files=None):
    """Put `source`'s files (or only `files`) into `cache` as huggingface_hub lays out a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        if files is not None and f.name not in files:
            continue
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.symlink_to(f.resolve())
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in tmp_path, used by huggingface_hub in this process."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads HF_HUB_CACHE once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_from_pretrained_reads_a_repo_id_from_the_cache(tiny_dir, hf_cache):
    snapshot = _cache_repo(hf_cache, REPO, tiny_dir)
    assert resolve_model_folder(REPO) == snapshot
    pipe = BagelPipeline.from_pretrained(REPO)
    direct = BagelPipeline.from_pretrained(tiny_dir)
    a, b = pipe.model.state_dict(), direct.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_path_repo_id_loads_through_the_config_path(tiny_dir, hf_cache):
    _cache_repo(hf_cache, REPO, tiny_dir)
    clear_pipeline_cache()
    try:
        pipe = load_pipeline({"name": "tiny", "path": REPO})
        assert pipe.model.config.llm.hidden_size == 64
    finally:
        clear_pipeline_cache()


def test_info_takes_a_repo_id(tiny_dir, hf_cache, capsys):
    snapshot = _cache_repo(hf_cache, REPO, tiny_dir)
    assert main(["info", REPO]) == 0
    out = re.sub(r"\s+", "", capsys.readouterr().out)
    assert str(snapshot).replace(" ", "") in out and "1,036,480" in out


def test_absent_repo_prints_the_download_command(hf_cache):
    with pytest.raises(CheckpointError) as err:
        BagelPipeline.from_pretrained(REPO)
    text = str(err.value)
    assert f"hf download {REPO} --local-dir models/BAGEL-7B-MoT" in text
    assert "model.path=models/BAGEL-7B-MoT" in text


def test_absent_repo_through_the_cli_names_the_argument(hf_cache, capsys):
    assert main(["info", "acme/not-cached"]) == 1
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "model_dir='acme/not-cached'" in out and "hf download acme/not-cached --local-dir" in out


def test_incomplete_snapshot_is_not_used(tiny_dir, hf_cache):
    """A snapshot whose cached file listing names files that are not on disk is an interrupted download."""
    try:
        from huggingface_hub._snapshot_download import TreeCacheEntry, write_tree_cache
    except ImportError:
        pytest.skip("this huggingface_hub keeps no file listing of a snapshot")
    snapshot = _cache_repo(hf_cache, REPO, tiny_dir, files={"llm_config.json"})
    entry = TreeCacheEntry(size=1, blob_id="0" * 40, lfs_sha256=None, lfs_size=None, xet_hash=None)
    write_tree_cache(
        str(snapshot.parents[1]), SHA, dict.fromkeys(["llm_config.json", "ema.safetensors"], entry)
    )
    with pytest.raises(CheckpointError, match="hf download"):
        resolve_model_folder(REPO)


def test_a_local_folder_wins_over_a_repo_id(tiny_dir, hf_cache, tmp_path, monkeypatch):
    _cache_repo(hf_cache, REPO, tiny_dir, files={"llm_config.json"})  # the cached one is not loadable
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ByteDance-Seed").mkdir()
    (tmp_path / REPO).symlink_to(tiny_dir.resolve())
    assert resolve_model_folder(REPO) == tmp_path.joinpath(REPO).relative_to(tmp_path)
    assert BagelPipeline.from_pretrained(REPO).model.config.llm.hidden_size == 64


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (REPO, True),
        ("org/name.v2", True),
        ("/models/BAGEL", False),
        ("./BAGEL", False),
        ("a/b/c", False),
        ("BAGEL-7B-MoT", False),
        ("org/../x", False),
        ("org--x/name", False),
    ],
)
def test_repo_id_shape(value, expected):
    assert looks_like_repo_id(value) is expected
