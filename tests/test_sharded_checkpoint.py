"""Sharded checkpoints and the streamed export, in one process (the 2-rank runs are in test_fsdp.py).

DCP runs here without a process group (a single process writes or reads every shard), which exercises the
same storage classes, file layout and checks as a torchrun job.
"""

from __future__ import annotations

import json
import weakref

import pytest
import torch

from worldbagel.errors import CheckpointError
from worldbagel.model.dcp_storage import load_sharded, save_sharded
from worldbagel.model.weights_file import (
    StreamedTensors,
    TensorSpec,
    file_order,
    load_file,
    read_header,
    write_file,
)
from worldbagel.train import state as st


def _specs(tensors: dict[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {k: TensorSpec(t.dtype, tuple(t.shape)) for k, t in tensors.items()}


# ------------------------------------------------------------------------------------------------ streamed writer
def test_streamed_write_matches_the_dict_writer_and_fetches_one_tensor_at_a_time(tmp_path):
    from safetensors.torch import load_file as official_load

    torch.manual_seed(0)
    tensors = {
        "w": torch.randn(3, 4),
        "ids": torch.arange(5, dtype=torch.int64),
        "half": torch.randn(2).bfloat16(),
        "empty": torch.zeros(0, 3),
    }
    write_file(tmp_path / "dict.safetensors", tensors, metadata={"format": "pt"})
    fetched, alive = [], []

    def fetch(name: str) -> torch.Tensor:
        assert all(r() is None for r in alive), f"{fetched[-1]} is still held when {name} is fetched"
        fetched.append(name)
        t = tensors[name].clone()
        alive.append(weakref.ref(t))
        return t

    write_file(
        tmp_path / "stream.safetensors", StreamedTensors(_specs(tensors), fetch), metadata={"format": "pt"}
    )
    assert (tmp_path / "stream.safetensors").read_bytes() == (tmp_path / "dict.safetensors").read_bytes()
    assert fetched == file_order(_specs(tensors)) and len(fetched) == len(tensors)
    back = official_load(str(tmp_path / "stream.safetensors"))
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_streamed_tensor_unlike_its_header_entry_is_refused_and_nothing_is_left(tmp_path):
    specs = {"a": TensorSpec(torch.float32, (2, 2)), "b": TensorSpec(torch.float32, (3,))}
    wrong = {"a": torch.zeros(2, 2), "b": torch.zeros(4)}
    with pytest.raises(CheckpointError, match=r"tensor 'b' is torch.float32 \[4\] but its header entry says"):
        write_file(tmp_path / "x.safetensors", StreamedTensors(specs, wrong.__getitem__))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ DCP storage
def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model/layer.weight": torch.randn(64, 32, generator=g),
        "model/layer.bias": torch.randn(64, generator=g),
        "optimizer/layer.weight::step": torch.tensor(3.0),
        "ema/layer.weight": torch.randn(64, 32, generator=g).bfloat16(),
    }


def test_shards_are_pickle_free_safetensors_and_read_back_exactly(tmp_path):
    saved = _state()
    save_sharded(saved, tmp_path / "shards")
    files = sorted((tmp_path / "shards").iterdir())
    assert [f.name for f in files] == ["shard-00001-model-00001-of-00001.safetensors"]  # no pickled .metadata
    header = read_header(files[0])  # the project's own strict parser
    assert set(header.entries) == set(saved)
    assert json.loads(header.metadata["DCP_SHARDING_INFO"])["model/layer.weight"] == {"saved_offsets": [0, 0]}
    loaded = {k: torch.zeros_like(v) for k, v in saved.items()}
    targets = {k: v.data_ptr() for k, v in loaded.items()}
    load_sharded(loaded, tmp_path / "shards")
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert {k: v.data_ptr() for k, v in loaded.items()} == targets  # filled in place


def test_part_of_a_stored_piece_is_read_into_its_place(tmp_path):
    """A resume on another rank count asks for part of a stored piece (and may cast): read via one buffer."""
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    from worldbagel.model.dcp_storage import _read_piece

    saved = _state()
    save_sharded(saved, tmp_path / "shards")
    header = read_header(next((tmp_path / "shards").iterdir()))
    key = "model/layer.weight"
    req = ReadItem(
        LoadItemType.TENSOR,
        MetadataIndex(key),
        torch.Size([0, 0]),
        MetadataIndex(key),
        torch.Size([10, 4]),
        torch.Size([5, 8]),
    )
    target = torch.zeros(5, 8, dtype=torch.float64)
    with open(header.path, "rb") as f:
        _read_piece(f, header, req, target)
    assert torch.equal(target, saved[key][10:15, 4:12].double())


@pytest.mark.gpu
def test_cuda_tensors_are_written_and_read_back_through_host_memory(tmp_path):
    """Shards of CUDA tensors (an FSDP run on GPUs): each is copied to the host as it is written, and read
    into a host buffer then copied onto its device."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    saved = {k: v.cuda() for k, v in _state().items()}
    save_sharded(saved, tmp_path / "shards")
    loaded = {k: torch.zeros_like(v) for k, v in saved.items()}
    load_sharded(loaded, tmp_path / "shards")
    assert all(loaded[k].is_cuda and torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_tensor_missing_from_the_shards_is_one_checkpoint_error(tmp_path):
    save_sharded(_state(), tmp_path / "shards")
    wanted = {**{k: torch.zeros_like(v) for k, v in _state().items()}, "model/extra.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"sharded training state in .*shards.*extra\.weight"):
        load_sharded(wanted, tmp_path / "shards")


# ------------------------------------------------------------------------------------------------ folder layout
def _sharded_checkpoint(out, step: int, seed: int = 0):
    tmp = st.start_sharded_checkpoint(out, step, token=123, create=True)
    save_sharded(_state(seed), tmp / st.SHARDS)
    st.write_rank_rng(tmp, 0)
    optimizer_json = {"scalars": {}, "param_groups": [{"lr": 0.1, "params": ["layer.weight"]}]}
    state = st.TrainState(step=step, cursor=2 * step, tokens=10 * step)
    return st.finish_sharded_checkpoint(tmp, out, state, optimizer_json, {"seed": seed}, 1, True, keep=3)


def test_sharded_checkpoint_folder_records_its_shards_and_reads_back(tmp_path):
    path = _sharded_checkpoint(tmp_path, 2)
    assert path == st.checkpoint_path(tmp_path, 2) and not list(st.checkpoint_root(tmp_path).glob(".*"))
    payload = json.loads((path / "state.json").read_text())
    assert payload["format"] == "sharded" and payload["world_size"] == 1 and payload["ema"] is True
    assert payload["shards"] == {p.name: p.stat().st_size for p in (path / "shards").iterdir()}
    torch.manual_seed(5)
    expected = torch.get_rng_state()
    ck = st.load_checkpoint(path)
    assert ck.sharded and ck.has_ema and ck.model_state is None and (ck.state.step, ck.state.cursor) == (2, 4)
    assert ck.optim_state["param_groups"][0]["lr"] == 0.1
    st.set_rng_state(ck.rng_json, ck.rng_tensors)
    assert not torch.equal(torch.get_rng_state(), expected)  # the saved states, not the current ones
    loaded = {k: torch.zeros_like(v) for k, v in _state().items()}
    load_sharded(loaded, ck.shards)
    assert torch.equal(loaded["model/layer.weight"], _state()["model/layer.weight"])


def test_a_cut_or_missing_shard_is_named_and_resume_falls_back(tmp_path, caplog):
    _sharded_checkpoint(tmp_path, 2, seed=0)
    newest = _sharded_checkpoint(tmp_path, 4, seed=1)
    shard = next((newest / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:-16])
    with pytest.raises(
        CheckpointError, match=rf"shard file .*{shard.name} is \d+ bytes, state.json recorded"
    ):
        st.load_checkpoint(newest)
    ck = st.load_latest_checkpoint(tmp_path)
    assert ck.path.name == "step-00000002" and "step-00000004 is unreadable" in caplog.text
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name} is missing"):
        st.load_checkpoint(newest)


def test_a_folder_of_shards_without_state_json_is_never_read(tmp_path):
    """state.json is the marker of a complete checkpoint written by worldbagel: shard files alone (a
    killed save moved by hand, another program's DCP folder) are not a checkpoint."""
    _sharded_checkpoint(tmp_path, 2)
    stray = st.checkpoint_path(tmp_path, 6)
    save_sharded(_state(), stray / st.SHARDS)
    assert [p.name for p in st.list_checkpoints(tmp_path)] == ["step-00000002"]
    assert st.load_latest_checkpoint(tmp_path).path.name == "step-00000002"


# ------------------------------------------------------------------------------------------------ export
def _lora_state() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    raw = {
        "m.q_proj.base_layer.weight": torch.randn(4, 3, generator=g),
        "m.q_proj.base_layer.bias": torch.randn(4, generator=g),
        "m.q_proj.lora_A.default.weight": torch.randn(2, 3, generator=g),
        "m.q_proj.lora_B.default.weight": torch.randn(4, 2, generator=g),
        "llm2vae.weight": torch.randn(5, 4, generator=g),
        "m.norm.weight": torch.randn(3, generator=g).bfloat16(),
    }
    trainable = ("m.q_proj.lora_A.default.weight", "m.q_proj.lora_B.default.weight", "llm2vae.weight")
    return raw, {k: raw[k] + 1 for k in trainable}


@pytest.mark.parametrize("merge", [True, False])
def test_streamed_export_writes_what_the_whole_state_gives_and_every_rank_fetches_alike(tmp_path, merge):
    """The writing rank and the others (write=False) fetch the same tensors in the same order (under FSDP
    each fetch is a collective); the files equal lora.py's functions applied to the whole state."""
    pytest.importorskip("peft")
    from worldbagel.train.export import ExportWeights, export_folder
    from worldbagel.train.lora import adapter_state, merge_lora_state
    from worldbagel.train.options import LoraConfig
    from worldbagel.train.presets import preset_config

    raw, ema = _lora_state()
    lora = LoraConfig(enabled=True, r=2, alpha=4.0, target_modules=["q_proj"], train_modules=["llm2vae"])
    lora.merge_on_save = merge
    calls: dict[bool, list[tuple[str, str]]] = {True: [], False: []}

    def weights(write: bool) -> ExportWeights:
        def raw_of(k):
            calls[write].append(("raw", k))
            return raw[k]

        def ema_of(k):
            calls[write].append(("ema", k))
            return ema.get(k, raw[k])

        return ExportWeights(_specs(raw), raw_of, ema_of)

    out = tmp_path / "out"
    export_folder(out, preset_config("scratch-tiny"), weights(True), lora)
    export_folder(tmp_path / "other", preset_config("scratch-tiny"), weights(False), lora, write=False)
    assert calls[True] == calls[False] and calls[True]
    assert not (tmp_path / "other").exists()
    if merge:
        want_raw, want_ema = merge_lora_state(raw, lora), merge_lora_state({**raw, **ema}, lora)
        assert not (out / "adapter_model.safetensors").exists()
    else:
        want_raw = {k.replace(".base_layer.", "."): v for k, v in raw.items() if ".lora_" not in k}
        want_ema = {**want_raw, "llm2vae.weight": ema["llm2vae.weight"]}
        got = load_file(out / "adapter_model.safetensors")
        want = adapter_state({**raw, **ema}, lora)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    for name, want in (("model.safetensors", want_raw), ("ema.safetensors", want_ema)):
        got = load_file(out / name)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
