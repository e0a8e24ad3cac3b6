"""Tensor-parallel inference: the LLM experts' attention heads and MLPs split over ranks (torch DTensor).

    torchrun --nproc_per_node 2 -m worldbagel.cli generate model=bagel-7b model.path=DIR model.tensor_parallel=2 ...

For cards too small for one copy of the weights. In every decoder layer, for both experts (torchtitan's
plan for Llama-style blocks): q/k/v and gate/up are column-parallel (each rank computes its own heads and its
slice of the MLP width), o_proj and down_proj row-parallel (partial products summed by one all-reduce per
projection, so every rank gets the full hidden state back). Each rank therefore holds 1/N of 89 % of the
weights and caches keys and values of its own Hkv/N heads only; the embeddings, lm_head, norms, ViT,
connector, heads and the autoencoder are replicated. Every rank runs the same inputs with the same seeds and
gets identical outputs (after each all-reduce the hidden states are equal on all ranks), so text ids and
image latents equal one process's, up to the order of the row-parallel sums.

The model is loaded on the CPU (one copy per rank in host memory), split, and its shards moved to the rank's
device. CPU runs use gloo, CUDA runs NCCL on `cuda:LOCAL_RANK`.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from worldbagel.errors import ConfigError, bad_argument
from worldbagel.model.bagel_folder import load_bagel
from worldbagel.model.checkpoint import resolve_dtype
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.device import check_device
from worldbagel.model.quantize import check_mode

logger = logging.getLogger(__name__)

COLUMN = ("q_proj", "k_proj", "v_proj")
ROW = ("o_proj",)
MLP_COLUMN = ("gate_proj", "up_proj")
MLP_ROW = ("down_proj",)


def check_divisible(config, ranks: int) -> None:
    """Query heads, key/value heads and the MLP width must split evenly over `ranks`."""
    llm = config.llm
    sizes = {
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "intermediate_size": llm.intermediate_size,
    }
    bad = {k: v for k, v in sizes.items() if v % ranks}
    if bad:
        ok = [n for n in range(1, llm.num_key_value_heads + 1) if all(v % n == 0 for v in sizes.values())]
        raise bad_argument(
            "model.tensor_parallel", ranks, f"{bad} do not split over {ranks} ranks; use one of {ok}"
        )


def parallel_plan(model: nn.Module) -> dict:
    """`parallelize_module` plan of a Bagel's decoder layers (module names under `language_model.model`)."""
    # lazy: torch.distributed.tensor takes seconds to import; tensor_parallel > 1 only
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for i, layer in enumerate(model.language_model.model.layers):
        attn_suffixes = ["", "_moe_gen"] if layer.split_all else [""]
        for s in attn_suffixes:
            plan.update({f"layers.{i}.self_attn.{p}{s}": ColwiseParallel() for p in COLUMN})
            plan.update({f"layers.{i}.self_attn.{p}{s}": RowwiseParallel() for p in ROW})
        for mlp in ["mlp", "mlp_moe_gen"] if layer.split_mlp else ["mlp"]:
            plan.update({f"layers.{i}.{mlp}.{p}": ColwiseParallel() for p in MLP_COLUMN})
            plan.update({f"layers.{i}.{mlp}.{p}": RowwiseParallel() for p in MLP_ROW})
    return plan


def apply_tensor_parallel(model: nn.Module, mesh) -> nn.Module:
    """Split `model`'s decoder linears over the 1-D device `mesh` in place (see the module docstring).

    Each attention module then works on its local heads (`num_heads`, `num_kv_heads` divided by the mesh size);
    the projections' outputs are plain local tensors (ColwiseParallel / RowwiseParallel `use_local_output`)."""
    # lazy: torch.distributed.tensor takes seconds to import; tensor_parallel > 1 only
    from torch.distributed.tensor.parallel import parallelize_module

    ranks = mesh.size()
    check_divisible(model.config, ranks)
    parallelize_module(model.language_model.model, mesh, parallel_plan(model))
    for layer in model.language_model.model.layers:
        layer.self_attn.num_heads //= ranks
        layer.self_attn.num_kv_heads //= ranks
    model.tensor_parallel = ranks
    return model


def init_mesh(ranks: int, device: str | torch.device):
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) and return a 1-D mesh over `ranks` ranks.

    The process group is destroyed when the process exits."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != ranks:
        raise ConfigError(
            f"invalid model.tensor_parallel={ranks}: this process runs in a world of {world} rank(s); launch "
            f"with torchrun --nproc_per_node {ranks} (or set model.tensor_parallel={world})"
        )
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_shutdown)
    return init_device_mesh("cuda" if cuda else "cpu", (ranks,))


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_rank_zero() -> bool:
    """True in a single process and on rank 0 of a distributed run (the rank that writes outputs)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def load_tensor_parallel(
    folder: str | Path, ranks: int, dtype=None, device=None, quantize: str | None = None
):
    """`checkpoint.load_bagel` split over `ranks` torchrun ranks: load on the CPU in the dtype the target
    device would get, split the decoder linears onto this rank's device, move the rest there."""
    if check_mode(quantize) != "none":
        raise bad_argument(
            "model.quantize", quantize, "quantisation and model.tensor_parallel > 1 do not combine; pick one"
        )
    check_divisible(BagelConfig.from_folder(folder), ranks)
    device = check_device(device)
    mesh = init_mesh(ranks, device)
    local = (
        torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" else None
    )
    target = local or torch.device("cpu")
    cast = resolve_dtype(dtype, target)
    loaded = load_bagel(folder, dtype=cast or "keep", device="cpu", vae_dtype=cast or "keep")
    apply_tensor_parallel(loaded.model, mesh)
    loaded.model.to(target)
    loaded.vae.to(target)
    logger.info("tensor parallel: rank %d of %d on %s", mesh.get_local_rank(), ranks, target)
    return loaded
