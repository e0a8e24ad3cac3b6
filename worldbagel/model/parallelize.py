"""Distributed training: FSDP2 sharding, activation checkpointing and the few collectives the trainer needs.

This module and `dcp_storage` (sharded checkpoint files) are the only ones that import `torch.distributed`.
Launch with torchrun, e.g.

    torchrun --nproc_per_node 8 -m worldbagel.cli finetune model=... data=... train.activation_checkpointing=full

Sharding (`apply_fsdp`) follows the official wrap policy (spec 6.6) with FSDP2's `fully_shard`: every LLM
decoder layer and every ViT encoder layer is its own unit, `lm_head` and `llm2vae` are units too (they run
after `forward_packed`, from the loss), then the root Bagel holds the remaining small tensors (embeddings,
connector, heads, norms, position tables). `forward_packed` is registered as an FSDP forward method so the
root's parameters are gathered for it. Every rank must run the same units in the same order: the loss always
calls both heads (possibly on zero rows) and the data keeps at least one ViT image per pack.

Activation checkpointing (`apply_activation_checkpointing`, per decoder / ViT layer as torchtitan applies it,
non-reentrant `torch.utils.checkpoint`) wraps the layer's `forward` in place so parameter names (and checkpoints)
do not change. `full` keeps only each layer's input and re-runs the layer in backward; `selective` is op-level
selective checkpointing (`create_selective_checkpoint_contexts`): the outputs of matrix multiplications and
attention kernels are kept and everything else (norms, SiLU, rotary, casts, routing copies) is recomputed, so
backward re-runs only cheap element-wise work. Measured peaks: docs/benchmarks.md.

Mixed precision under FSDP (`apply_fsdp(param_dtype=torch.bfloat16)`, what the trainer passes when it computes
in bf16): the sharded parameters stay in their loaded dtype (fp32) and are the master weights the optimizer
updates (its AdamW state is created like them, fp32 and sharded); each unit all-gathers a bf16 copy for forward
and backward, and gradients are reduce-scattered in fp32 onto the fp32 shards.

Sharded state (`sharded_model_state`, `sharded_optimizer_state`): what each rank holds, as DCP's state-dict
helpers give it; worldbagel.model.dcp_storage (the other module that imports torch.distributed) writes and
reads it.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._higher_order_ops import flex_attention
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    noop_context_fn,
)

logger = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single-process env.

    CUDA runs use NCCL and `cuda:LOCAL_RANK`; CPU runs use gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    return DistEnv(rank, world, local, dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ------------------------------------------------------------------------------------------------ sharding
def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """LLM decoder layers and ViT encoder layers of a Bagel (the official FSDP / checkpointing units)."""
    layers = list(model.language_model.model.layers)
    vit = getattr(model, "vit_model", None)
    if vit is not None:
        layers += list(vit.vision_model.encoder.layers)
    return layers


def apply_fsdp(
    model: nn.Module, mesh=None, reshard_after_forward: bool = True, param_dtype: torch.dtype | None = None
) -> nn.Module:
    """Shard a Bagel with FSDP2 `fully_shard` (per decoder / ViT layer, the two output heads, then the root).

    `mesh` defaults to a 1-D mesh over all ranks on the model's device type. `param_dtype` (e.g. bf16 on
    CUDA) sets the compute dtype of gathered parameters; gradients are reduced in fp32, and the sharded
    parameters keep their own dtype (fp32 master weights, which the optimizer and its state follow).
    """
    # lazy: torch.distributed.fsdp takes seconds to import; only FSDP runs need it
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if mesh is None:
        device_type = next(model.parameters()).device.type
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    units = decoder_layers(model) + [model.language_model.lm_head]
    if hasattr(model, "llm2vae"):
        units.append(model.llm2vae)
    for unit in units:
        fully_shard(unit, **kw)
    fully_shard(model, **kw)
    register_fsdp_forward_method(model, "forward_packed")
    logger.info("FSDP2: %d units + root over %d ranks", len(units), dist.get_world_size())
    return model


def apply_activation_checkpointing(model: nn.Module, mode: str = "full") -> int:
    """Checkpoint every decoder / ViT layer: `mode` full, selective or off (see the module docstring).

    Wraps each layer's `forward` in place (parameter names and checkpoints unchanged); calling it again
    replaces the earlier wrapping, and off restores the plain forward. Returns the number of layers wrapped.
    """
    if mode not in ("off", "full", "selective"):
        raise ValueError(f"invalid activation checkpointing mode={mode!r}; expected off, full or selective")
    layers = decoder_layers(model)
    for layer in layers:
        inner = getattr(layer, "_plain_forward", None) or layer.forward
        if mode == "off":
            if "_plain_forward" in vars(layer):
                del layer.forward, layer._plain_forward
            continue
        context = _selective_contexts if mode == "selective" else noop_context_fn

        def forward(*args, _inner=inner, _context=context, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, context_fn=_context, **kwargs)

        layer._plain_forward = inner
        layer.forward = forward
    return 0 if mode == "off" else len(layers)


@functools.cache
def _saved_ops() -> frozenset:
    """Ops whose outputs selective checkpointing keeps: matrix multiplications (the LLM / ViT linears, the CPU
    attention's `baddbmm` / `bmm`) and the fused attention kernels (SDPA, FlexAttention)."""
    aten = torch.ops.aten
    names = (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    ops = {getattr(aten, n).default for n in names if hasattr(aten, n)}

    ops.add(flex_attention)
    return frozenset(ops)


def _selective_contexts():
    """torch.utils.checkpoint `context_fn` of selective mode: save `_saved_ops` outputs, recompute the rest."""
    saved = _saved_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


# ------------------------------------------------------------------------------------------------ collectives
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; identity in a single process). CPU tensors travel via CUDA under NCCL."""
    if not is_distributed():
        return t.clone()
    device = t.device
    work = t.to("cuda", copy=True) if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(device)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_flag(flag: bool) -> bool:
    """True on every rank if it is true on any rank."""
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0]))[0] > 0)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter or state tensor (collective under FSDP)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `reference` (the local shard under FSDP, `full` itself otherwise)."""
    if hasattr(reference, "device_mesh"):
        # lazy: torch.distributed.tensor takes seconds to import; only FSDP runs need it
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(reference.dtype), reference.device_mesh, reference.placements)
    return full.to(reference.device, reference.dtype)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Global gradient norm (clipped to max_norm when > 0); works on sharded gradients."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return float(full_tensor(norm))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU (complete on rank 0; collective under FSDP)."""
    if not is_distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state (given on every rank) into a possibly sharded model, strictly."""
    if not is_distributed():
        model.load_state_dict(state, strict=True)
        return
    # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name: {"state": {name: {key: value}}, "param_groups": [...]}."""
    if is_distributed():
        # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    names = {id(p): n for n, p in model.named_parameters()}
    state = {
        names[id(p)]: {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
        for p, s in optimizer.state.items()
    }
    groups = []
    for g in optimizer.param_groups:
        groups.append(
            {**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
        )
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    """Inverse of `optimizer_state` (the full, name-keyed state given on every rank)."""
    if is_distributed():
        # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
        return
    params = dict(model.named_parameters())
    for group, saved in zip(optimizer.param_groups, osd["param_groups"]):
        for k, v in saved.items():
            if k != "params":
                group[k] = v
    optimizer.state.clear()
    for name, s in osd["state"].items():
        p = params[name]
        optimizer.state[p] = {
            k: (v.to(p.device) if torch.is_tensor(v) and v.dim() else v) for k, v in s.items()
        }


# ------------------------------------------------------------------------------------------------ sharded state
# A sharded checkpoint (worldbagel.train.sharded_checkpoint) holds these tensors as each rank has them: under
# FSDP the DTensor shards of the parameters, of the optimizer state and of the EMA, never gathered. The
# files are written and read by worldbagel.model.dcp_storage.


def sharded_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as this rank holds it (DTensor shards under FSDP), aliasing the parameters."""
    if not is_distributed():
        return dict(model.state_dict())
    # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)


def load_sharded_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state shaped like `sharded_model_state(model)` back into the model, strictly."""
    if not is_distributed():
        model.load_state_dict(state, strict=True)
        return
    # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(strict=True))


def sharded_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name, each tensor as this rank holds it (no gather).

    An optimizer that has not stepped yet gets its state created first (torch's helper runs one step with
    zero gradients and learning rate 0, which leaves the parameters unchanged), so a resume has tensors of
    the right shapes to read into.
    """
    # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer)


def load_sharded_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    """Inverse of `sharded_optimizer_state`."""
    # lazy: torch.distributed.checkpoint takes seconds to import; only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, osd)


def broadcast_int(value: int) -> int:
    """Rank 0's `value` on every rank (identity in a single process)."""
    if not is_distributed():
        return value
    t = torch.tensor([value if dist.get_rank() == 0 else 0], dtype=torch.int64)
    return int(all_reduce_sum(t)[0])
