"""Save and resume a sharded (FSDP) run's model, optimizer and EMA without gathering them on any rank.

Each rank passes the tensors it holds (DTensor shards of the parameters, of the AdamW moments and of the
EMA shadows) to `dcp_storage.save_sharded` / `load_sharded` (torch.distributed.checkpoint), which write and
read only that rank's pieces; the folder layout, the JSON part and the RNG files are worldbagel.train.state's.
On resume the same tensors are filled in place, so a rank's host memory never holds more than its own shard
plus about one tensor. The rank count may change between save and resume (DCP reshards), and a single
process may resume a sharded checkpoint.

Trust: a sharded checkpoint is safetensors files and JSON only (nothing is unpickled), and it is read only
when its folder holds the state.json this module's writer puts there last.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from worldbagel.errors import CheckpointError, WorldBagelError
from worldbagel.model import parallelize as par
from worldbagel.model.dcp_storage import load_sharded, save_sharded
from worldbagel.train.ema import EMA
from worldbagel.train.state import (
    SHARDS,
    LoadedCheckpoint,
    TrainState,
    checkpoint_path,
    finish_sharded_checkpoint,
    load_checkpoint,
    sharded_entries,
    split_optimizer,
    start_sharded_checkpoint,
    unflatten_optimizer,
    write_rank_rng,
)

logger = logging.getLogger(__name__)

#: param_group entries that pick an optimizer kernel for this run's tensors (fused needs plain tensors,
#: FSDP's DTensors use foreach): kept from the running optimizer, not taken from the checkpoint.
KERNEL_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def _parts(model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None):
    """(model, optimizer tensors, optimizer json, EMA) as this rank holds them, aliasing the live tensors."""
    opt_tensors, opt_json = split_optimizer(par.sharded_optimizer_state(model, optimizer))
    return par.sharded_model_state(model), opt_tensors, opt_json, (ema.state_dict() if ema else None)


def save_sharded_checkpoint(
    out_dir: str | Path,
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    env: par.DistEnv,
    config: dict,
    keep: int,
) -> Path:
    """Write checkpoint `step-<state.step>` from every rank's shards (collective); returns its folder."""
    token = par.broadcast_int(os.getpid())  # the main rank's pid names the temporary folder
    tmp = start_sharded_checkpoint(out_dir, state.step, token, create=env.is_main)
    par.barrier()  # the folder exists before any rank writes into it
    model_state, opt_tensors, opt_json, ema_state = _parts(model, optimizer, ema)
    save_sharded(sharded_entries(model_state, opt_tensors, ema_state), tmp / SHARDS)
    write_rank_rng(tmp, env.rank)
    par.barrier()  # every rank's files are complete
    if env.is_main:
        finish_sharded_checkpoint(
            tmp, out_dir, state, opt_json, config, env.world_size, ema is not None, keep
        )
    par.barrier()
    return checkpoint_path(out_dir, state.step)


def read_on_every_rank(path: Path, rank: int) -> LoadedCheckpoint:
    """`load_checkpoint` on every rank at once: when it fails on any rank it fails on all of them, so
    `load_latest_checkpoint` falls back to the same previous checkpoint everywhere."""
    ck, error = None, None
    try:
        ck = load_checkpoint(path, rank=rank)
    except CheckpointError as exc:
        error = exc
    if par.broadcast_flag(error is not None):
        raise error or CheckpointError(f"training checkpoint {path} cannot be read on another rank")
    assert ck is not None
    return ck


def load_sharded_checkpoint(
    ck: LoadedCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> None:
    """Fill the model, optimizer and EMA from sharded checkpoint `ck` (collective).

    Raises CheckpointError (on every rank) when a shard cannot be read or lacks a tensor, and
    WorldBagelError when the run has an EMA and the checkpoint does not.
    """
    if ema is not None and not ck.has_ema:
        raise WorldBagelError(f"checkpoint {ck.path} has no EMA but train.ema_decay > 0")
    model_state, opt_tensors, _, ema_state = _parts(model, optimizer, ema)
    load_sharded(sharded_entries(model_state, opt_tensors, ema_state), ck.shards)  # fills them in place
    par.load_sharded_model_state(model, model_state)
    osd = unflatten_optimizer(opt_tensors, ck.optim_state)
    par.load_sharded_optimizer_state(model, optimizer, with_kernel_flags(osd, optimizer))


def with_kernel_flags(osd: dict, optimizer: torch.optim.Optimizer) -> dict:
    """`osd` with the running optimizer's kernel flags (KERNEL_FLAGS) in its param groups."""
    groups = [
        {**saved, **{k: now[k] for k in KERNEL_FLAGS if k in now}}
        for saved, now in zip(osd["param_groups"], optimizer.param_groups)
    ]
    return {**osd, "param_groups": groups}


def warn_if_resharded(ck: LoadedCheckpoint, world_size: int, grad_accum: int) -> None:
    """Log that a run resumed on another rank count is no longer the original one."""
    if ck.world_size != world_size:
        logger.warning(
            "checkpoint %s was written by %d rank(s) and this run has %d: a step now takes %d packs instead "
            "of %d, so the run goes on, but not as the original run would have",
            ck.path,
            ck.world_size,
            world_size,
            world_size * grad_accum,
            ck.world_size * grad_accum,
        )
