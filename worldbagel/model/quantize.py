"""Weight-only quantisation of the LLM experts' linear layers: `model.quantize` none | int8 | nf4.

Quantised: every `nn.Linear` of the decoder layers, both experts (q/k/v/o and gate/up/down, `*_moe_gen`
twins included): 89.3 % of BAGEL-7B-MoT's parameters. The token embedding, lm_head, norms, the ViT, the
connector and the generation heads keep their dtype (they are small, or, like lm_head, sensitive).

* int8 (torchao's `Int8WeightOnlyConfig`, CPU and CUDA): per output row, symmetric scale = max|w| / 127,
  int8 values, an fp32 scale and an int8 zero point per row; matmuls dequantise on the fly. Each weight
  element is off by at most scale / 2 = max|w_row| / 254.
* nf4 (bitsandbytes' `Linear4bit`, CUDA only): 4-bit NormalFloat in blocks of 64 weights with double-
  quantised absmax, computed in the model's dtype.

The memory plan (`worldbagel.model.memory_plan.weight_bytes`) predicts the bytes; `stored_bytes` measures
them, tensor-subclass internals included.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from worldbagel.errors import ConfigError, DependencyNotInstalled, bad_argument

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "int8", "nf4")


def check_mode(mode: str | None) -> str:
    """The quantisation mode, checked ("none" for None)."""
    mode = "none" if mode is None else str(mode).lower()
    if mode not in QUANTIZE_MODES:
        raise bad_argument("model.quantize", mode, f"use one of {list(QUANTIZE_MODES)}")
    return mode


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The decoder layers' linear layers of a Bagel (both experts), by name under `language_model.model.layers`."""
    layers = model.language_model.model.layers
    return {name: m for name, m in layers.named_modules() if isinstance(m, nn.Linear)}


@contextlib.contextmanager
def _quiet(logger_name: str):
    """torchao logs a warning for each optional CUDA kernel library it cannot load on a CPU-only install."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _torchao_int8():
    try:
        with _quiet("torchao"):
            # lazy: optional dependency (quant extra)
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise DependencyNotInstalled(
            "model.quantize=int8 needs torchao: pip install 'worldbagel[quant]' (or pip install torchao), "
            "or set model.quantize=none"
        ) from exc
    return quantize_, Int8WeightOnlyConfig


def _bitsandbytes():
    try:
        import bitsandbytes  # lazy: optional dependency (quant extra, CUDA)
    except ImportError as exc:
        raise DependencyNotInstalled(
            "model.quantize=nf4 needs bitsandbytes on a CUDA machine: pip install 'worldbagel[quant]' (or pip "
            "install bitsandbytes), or use model.quantize=int8"
        ) from exc
    return bitsandbytes


def _is_plain(model: nn.Module) -> bool:
    return all(type(p) in (nn.Parameter, torch.Tensor) for p in model.parameters())


def quantize_model(model: nn.Module, mode: str | None) -> nn.Module:
    """Quantise a loaded Bagel's decoder linears in place (see the module docstring); returns the model.

    The model must hold plain weights (not tensor-parallel or already quantised) on its final device."""
    mode = check_mode(mode)
    if mode == "none":
        return model
    if not _is_plain(model):
        raise bad_argument(
            "model.quantize",
            mode,
            "the model's weights are already quantised or tensor-parallel; quantise a plainly loaded model "
            "(model.tensor_parallel=1)",
        )
    linears = quantizable_linears(model)
    if mode == "int8":
        quantize_, config = _torchao_int8()
        targets = set(linears.values())
        with _quiet("torchao"):
            quantize_(model.language_model.model.layers, config(), filter_fn=lambda m, _: m in targets)
    else:
        _to_nf4(model, linears)
    model.quantization = mode
    logger.info("quantised %d decoder linears to %s (%s of weights)", len(linears), mode, _size(model))
    return model


def _to_nf4(model: nn.Module, linears: dict[str, nn.Linear]) -> None:
    device = next(iter(linears.values())).weight.device
    if device.type != "cuda":
        raise ConfigError(
            f"invalid model.quantize='nf4' on device {device}: bitsandbytes' nf4 kernels run on CUDA only; use "
            "model.device=cuda:0, or model.quantize=int8 on the CPU"
        )
    bnb = _bitsandbytes()
    layers = model.language_model.model.layers
    for name, lin in linears.items():
        new = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            compute_dtype=lin.weight.dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        new.weight = bnb.nn.Params4bit(
            lin.weight.data.cpu(), requires_grad=False, compress_statistics=True, quant_type="nf4"
        )
        if lin.bias is not None:
            new.bias = nn.Parameter(lin.bias.data, requires_grad=False)
        new = new.to(device)  # bitsandbytes quantises on the move to CUDA
        parent, _, child = name.rpartition(".")
        setattr(layers.get_submodule(parent) if parent else layers, child, new)


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores: a tensor subclass (torchao's quantised weights, DTensor shards) is counted by
    its inner tensors, a bitsandbytes 4-bit weight with its quantisation state."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)
    while state is not None:  # bitsandbytes: absmax and code, then the nested state of double quantisation
        total += sum(x.numel() * x.element_size() for x in (state.absmax, state.code) if x is not None)
        state = getattr(state, "state2", None)
    return total


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every parameter of `model` as stored (quantised internals included; buffers such as the rope
    table are recomputed at load and not counted, as in the memory plan)."""
    seen: set[int] = set()
    total = 0
    for t in model.parameters():
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total


def _size(model: nn.Module) -> str:
    return f"{stored_bytes(model) / 2**30:.2f} GiB"
