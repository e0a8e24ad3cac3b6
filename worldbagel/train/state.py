"""Training checkpoints: atomic, pickle-free, and complete enough to continue a run exactly.

A checkpoint is a folder `<out>/checkpoints/step-<NNNNNNNN>/` in one of two layouts. A single process
writes whole tensors:

    model.safetensors      the raw weights of the training module (LoRA-injected names when LoRA is on)
    ema.safetensors        EMA shadows of the trainable weights (absent when the EMA is off)
    optimizer.safetensors  optimizer tensors, keyed `<parameter name>::<state key>`
    rng.safetensors        torch CPU (and CUDA) generator states
    state.json             step, data cursor, schedule, optimizer scalars and groups, python and numpy RNG
                           states, config snapshot

A sharded (FSDP, torchrun) run writes each rank's shards instead, so no rank ever gathers the full state:

    shards/shard-<rank+1>-model-00001-of-00001.safetensors
                           written by torch.distributed.checkpoint (DCP) in its safetensors layout
                           (worldbagel.model.dcp_storage): each rank's pieces of `model/<name>`,
                           `optimizer/<name>::<state key>` and `ema/<name>`, with their offsets in the
                           whole tensors in the file's JSON metadata
    rng/rank-<RRRRR>.safetensors
                           each rank's torch generator states, its python/numpy states in the metadata
    state.json             as above (without "rng"), plus "format": "sharded", the rank count and the
                           byte size of every shard file (checked before reading, so a missing or cut file
                           is found before anything is loaded)

Both layouts are pickle-free (safetensors and JSON): DCP's default `.metadata` file would be a pickle, but
the safetensors storage keeps its layout in the files' headers. state.json is written last and is the
marker of a complete checkpoint written by this module: a folder without it is never read, so a resume
never loads a random folder that happens to hold shard files.

Every checkpoint is written to a hidden temporary folder and moved into place with os.replace, so a folder
named `step-*` is always complete; a run killed at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldbagel.errors import CheckpointError
from worldbagel.model.weights_file import load_file, read_header, read_tensors, write_file

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{8})$")
SEP = "::"
SHARDED = "sharded"
"""state.json "format" of a sharded checkpoint (absent: whole tensors)."""
SHARDS = "shards"
RNG_DIR = "rng"
MODEL_KEY, OPTIMIZER_KEY, EMA_KEY = "model/", "optimizer/", "ema/"
"""Key prefixes of the model, optimizer and EMA entries in a sharded checkpoint."""


@dataclass
class TrainState:
    """The scalar state of a run."""

    step: int = 0
    """Optimizer steps done."""
    cursor: int = 0
    """Global pack counter of the data stream (packs consumed by all ranks)."""
    tokens: int = 0
    """Tokens trained on so far (all ranks)."""
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ rng
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(json-able python/numpy states, torch generator states as uint8 tensors)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    js = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return js, tensors


def set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)


# ------------------------------------------------------------------------------------------------ optimizer
def split_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Name-keyed optimizer state -> (its tensors as they are, keyed `<name>::<key>`; json-able rest)."""
    tensors, scalars = {}, {}
    for name, s in osd["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"{name}{SEP}{k}"] = v
            else:
                scalars[f"{name}{SEP}{k}"] = v
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]
    ]
    return tensors, {"scalars": scalars, "param_groups": groups}


def flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Name-keyed optimizer state -> (CPU tensors for safetensors, json-able rest)."""
    tensors, js = split_optimizer(osd)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, js


def unflatten_optimizer(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *js["scalars"].items()]:
        name, k = key.rsplit(SEP, 1)
        state.setdefault(name, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in js["param_groups"]]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------ folders
def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def remove_partial_checkpoints(out_dir: str | Path) -> int:
    """Delete temporary folders left by a save that was killed; returns how many."""
    root = checkpoint_root(out_dir)
    stale = [p for p in root.glob(".step-*.tmp-*") if p.is_dir()] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """The folder of checkpoint `step`."""
    return checkpoint_root(out_dir) / f"step-{step:08d}"


def _temp_folder(out_dir: str | Path, step: int, token: int) -> tuple[Path, Path]:
    """(hidden temporary folder, final folder) of checkpoint `step`; `token` (a pid) keeps writers apart."""
    final = checkpoint_path(out_dir, step)
    return final.parent / f".{final.name}.tmp-{token}", final


def _commit(tmp: Path, final: Path, payload: dict[str, Any], out_dir: str | Path, keep: int) -> Path:
    """Write state.json (the completeness marker) into `tmp`, move it to `final`, prune old checkpoints."""
    with open(tmp / "state.json", "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a re-run of the same step: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def _payload(state: TrainState, optimizer_json: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": state.step,
        "cursor": state.cursor,
        "tokens": state.tokens,
        "extra": state.extra,
        "optimizer": optimizer_json,
        "config": config,
    }


def save_checkpoint(
    out_dir: str | Path,
    state: TrainState,
    model_state: dict[str, torch.Tensor],
    optim_state: dict,
    ema_state: dict[str, torch.Tensor] | None,
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step-<state.step>` (whole tensors) atomically and prune all but the newest `keep`."""
    tmp, final = _temp_folder(out_dir, state.step, os.getpid())
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_file(tmp / "model.safetensors", model_state)
        if ema_state is not None:
            write_file(tmp / "ema.safetensors", ema_state)
        opt_tensors, opt_json = flatten_optimizer(optim_state)
        write_file(tmp / "optimizer.safetensors", opt_tensors)
        rng_json, rng_tensors = rng_state()
        write_file(tmp / "rng.safetensors", rng_tensors)
        payload = {**_payload(state, opt_json, config), "rng": rng_json}
        return _commit(tmp, final, payload, out_dir, keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ sharded
def sharded_entries(
    model_state: dict[str, torch.Tensor],
    optimizer_tensors: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """The flat dict of a sharded checkpoint (`model/...`, `optimizer/...`, `ema/...`), aliasing the inputs."""
    out = {MODEL_KEY + k: v for k, v in model_state.items()}
    out.update({OPTIMIZER_KEY + k: v for k, v in optimizer_tensors.items()})
    out.update({EMA_KEY + k: v for k, v in (ema_state or {}).items()})
    return out


def start_sharded_checkpoint(out_dir: str | Path, step: int, token: int, create: bool) -> Path:
    """The temporary folder every rank writes checkpoint `step` into; the main rank (`create`) makes it
    empty, the others wait for it (a barrier) before writing."""
    tmp, _ = _temp_folder(out_dir, step, token)
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / RNG_DIR).mkdir(parents=True)
    return tmp


def write_rank_rng(tmp: str | Path, rank: int) -> None:
    """This rank's generator states: torch tensors in the file, python/numpy states in its metadata."""
    js, tensors = rng_state()
    write_file(
        Path(tmp) / RNG_DIR / f"rank-{rank:05d}.safetensors", tensors, metadata={"rng": json.dumps(js)}
    )


def finish_sharded_checkpoint(
    tmp: str | Path,
    out_dir: str | Path,
    state: TrainState,
    optimizer_json: dict[str, Any],
    config: dict[str, Any],
    world_size: int,
    has_ema: bool,
    keep: int = 2,
) -> Path:
    """After every rank wrote its shards and RNG into `tmp` (main rank only): record the shard files and
    their sizes in state.json and move the folder into place."""
    tmp = Path(tmp)
    _, final = _temp_folder(out_dir, state.step, 0)
    try:
        shards = {p.name: p.stat().st_size for p in sorted((tmp / SHARDS).iterdir())}
        rngs = sorted(p.name for p in (tmp / RNG_DIR).iterdir())
        if len(rngs) != world_size:
            raise CheckpointError(
                f"{tmp}: {len(rngs)} RNG files for {world_size} ranks: a rank failed to write"
            )
        payload = {
            **_payload(state, optimizer_json, config),
            "format": SHARDED,
            "world_size": world_size,
            "ema": has_ema,
            "shards": shards,
        }
        return _commit(tmp, final, payload, out_dir, keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    model_state: dict[str, torch.Tensor] | None
    """Whole tensors; None for a sharded checkpoint (read with `dcp_storage.load_sharded` from `shards`)."""
    optim_state: dict
    """Whole optimizer state; for a sharded checkpoint only its json part ({"scalars", "param_groups"})."""
    ema_state: dict[str, torch.Tensor] | None
    rng_json: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    sharded: bool = False
    has_ema: bool = False
    world_size: int = 1
    """Ranks of the run that wrote it."""

    @property
    def shards(self) -> Path:
        return self.path / SHARDS


_REQUIRED_KEYS = ("step", "cursor", "optimizer", "rng")
_REQUIRED_SHARDED = ("step", "cursor", "optimizer", "world_size", "shards")


def load_checkpoint(path: str | Path, rank: int = 0) -> LoadedCheckpoint:
    """Read a checkpoint folder written by `save_checkpoint` or `finish_sharded_checkpoint`.

    For a sharded one this reads state.json, checks that every shard file is there with its recorded size,
    and reads rank `rank`'s RNG states (rank 0's when the writing run had fewer ranks); the shards
    themselves are read by the caller (a collective). Raises CheckpointError naming the file (and key) when
    any part is missing, truncated or malformed.
    """
    path = Path(path)
    state_file = path / "state.json"
    try:
        payload = json.loads(state_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read training checkpoint {state_file}: {exc}") from exc
    sharded = isinstance(payload, dict) and payload.get("format") == SHARDED
    required = _REQUIRED_SHARDED if sharded else _REQUIRED_KEYS
    missing = [k for k in required if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CheckpointError(
            f"training checkpoint {state_file} lacks {missing}: it was not written by save_checkpoint"
        )
    if isinstance(payload.get("format"), str) and not sharded:
        raise CheckpointError(
            f"training checkpoint {state_file} has format {payload['format']!r}; this version reads "
            f"{SHARDED!r} or whole-tensor checkpoints (no format key)"
        )
    try:
        state = TrainState(
            int(payload["step"]),
            int(payload["cursor"]),
            int(payload.get("tokens", 0)),
            payload.get("extra", {}),
        )
        if sharded:
            return _sharded_checkpoint(path, payload, state, rank)
        optim_state = unflatten_optimizer(load_file(path / "optimizer.safetensors"), payload["optimizer"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"training checkpoint {state_file} is malformed ({type(exc).__name__}: {exc})"
        ) from None
    ema_file = path / "ema.safetensors"
    ema_state = load_file(ema_file) if ema_file.is_file() else None
    return LoadedCheckpoint(
        path=path,
        state=state,
        model_state=load_file(path / "model.safetensors"),
        optim_state=optim_state,
        ema_state=ema_state,
        rng_json=payload["rng"],
        rng_tensors=load_file(path / "rng.safetensors"),
        config=payload.get("config", {}),
        has_ema=ema_state is not None,
    )


def _sharded_checkpoint(path: Path, payload: dict, state: TrainState, rank: int) -> LoadedCheckpoint:
    for name, size in payload["shards"].items():
        shard = path / SHARDS / name
        if not shard.is_file() or shard.stat().st_size != int(size):
            found = f"{shard.stat().st_size} bytes" if shard.is_file() else "missing"
            raise CheckpointError(
                f"training checkpoint {path}: shard file {shard} is {found}, state.json recorded {size} bytes"
            )
    world = int(payload["world_size"])
    rng_file = path / RNG_DIR / f"rank-{rank if rank < world else 0:05d}.safetensors"
    header = read_header(rng_file, f"(training checkpoint {path})")
    try:
        rng_json = json.loads(header.metadata["rng"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"RNG file {rng_file} lacks its python/numpy states ({exc})") from None
    return LoadedCheckpoint(
        path=path,
        state=state,
        model_state=None,
        optim_state=payload["optimizer"],
        ema_state=None,
        rng_json=rng_json,
        rng_tensors=dict(read_tensors(header)),
        config=payload.get("config", {}),
        sharded=True,
        has_ema=bool(payload.get("ema", False)),
        world_size=world,
    )


def load_latest_checkpoint(
    out_dir: str | Path, read: Callable[[Path], LoadedCheckpoint] = load_checkpoint
) -> LoadedCheckpoint | None:
    """The newest checkpoint of `out_dir` that reads completely, or None when there is none.

    `read` reads one folder (default `load_checkpoint`; a sharded run passes one that also loads its
    shards, so a shard that fails to load falls back too). A newer one that cannot be read (a disk fault, a
    hand-edited state.json) is skipped with a warning that names it and says which one is used instead;
    when none reads, the error lists every failure.
    """
    found = list_checkpoints(out_dir)
    failures: list[str] = []
    for path in reversed(found):
        try:
            ck = read(path)
        except CheckpointError as exc:
            logger.warning("checkpoint %s is unreadable (%s); trying the previous one", path.name, exc)
            failures.append(str(exc))
            continue
        if failures:
            logger.warning(
                "resuming from %s: the %d newer checkpoint(s) could not be read", path, len(failures)
            )
        return ck
    if failures:
        raise CheckpointError(
            f"no checkpoint in {checkpoint_root(out_dir)} can be read: "
            + "; ".join(failures)
            + ". Delete the folder to start again, or restore a checkpoint from a backup."
        )
    return None
