"""Training checkpoints: atomic, pickle-free, and complete enough to continue a run exactly.

A checkpoint is a folder `<out>/checkpoints/step-<NNNNNNNN>/`:

    model.safetensors      the raw weights of the training module (LoRA-injected names when LoRA is on)
    ema.safetensors        EMA shadows of the trainable weights (absent when the EMA is off)
    optimizer.safetensors  optimizer tensors, keyed `<parameter name>::<state key>`
    rng.safetensors        torch CPU (and CUDA) generator states
    state.json             step, data cursor, schedule, optimizer scalars and groups, python and numpy RNG
                           states, config snapshot

It is written to a hidden temporary folder and moved into place with os.replace, so a folder named
`step-*` is always complete; a run killed at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldbagel.errors import CheckpointError
from worldbagel.model.weights_file import load_file, write_file

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{8})$")
SEP = "::"


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
def flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Name-keyed optimizer state -> (tensors for safetensors, json-able rest)."""
    tensors, scalars = {}, {}
    for name, s in osd["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"{name}{SEP}{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{name}{SEP}{k}"] = v
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]
    ]
    return tensors, {"scalars": scalars, "param_groups": groups}


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


def save_checkpoint(
    out_dir: str | Path,
    state: TrainState,
    model_state: dict[str, torch.Tensor],
    optim_state: dict,
    ema_state: dict[str, torch.Tensor] | None,
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step-<state.step>` atomically and prune all but the newest `keep`."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
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
        payload = {
            "step": state.step,
            "cursor": state.cursor,
            "tokens": state.tokens,
            "extra": state.extra,
            "optimizer": opt_json,
            "rng": rng_json,
            "config": config,
        }
        with open(tmp / "state.json", "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    model_state: dict[str, torch.Tensor]
    optim_state: dict
    ema_state: dict[str, torch.Tensor] | None
    rng_json: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    config: dict[str, Any]


_REQUIRED_KEYS = ("step", "cursor", "optimizer", "rng")


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint folder written by `save_checkpoint`.

    Raises CheckpointError naming the file (and key) when any part is missing, truncated or malformed.
    """
    path = Path(path)
    state_file = path / "state.json"
    try:
        payload = json.loads(state_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read training checkpoint {state_file}: {exc}") from exc
    missing = [k for k in _REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CheckpointError(
            f"training checkpoint {state_file} lacks {missing}: it was not written by save_checkpoint"
        )
    ema_file = path / "ema.safetensors"
    try:
        state = TrainState(
            int(payload["step"]),
            int(payload["cursor"]),
            int(payload.get("tokens", 0)),
            payload.get("extra", {}),
        )
        optim_state = unflatten_optimizer(load_file(path / "optimizer.safetensors"), payload["optimizer"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"training checkpoint {state_file} is malformed ({type(exc).__name__}: {exc})"
        ) from None
    return LoadedCheckpoint(
        path=path,
        state=state,
        model_state=load_file(path / "model.safetensors"),
        optim_state=optim_state,
        ema_state=load_file(ema_file) if ema_file.is_file() else None,
        rng_json=payload["rng"],
        rng_tensors=load_file(path / "rng.safetensors"),
        config=payload.get("config", {}),
    )


def load_latest_checkpoint(out_dir: str | Path) -> LoadedCheckpoint | None:
    """The newest checkpoint of `out_dir` that reads completely, or None when there is none.

    A newer one that cannot be read (a disk fault, a hand-edited state.json) is skipped with a warning
    that names it and says which one is used instead; when none reads, the error lists every failure.
    """
    found = list_checkpoints(out_dir)
    failures: list[str] = []
    for path in reversed(found):
        try:
            ck = load_checkpoint(path)
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
