"""LoRA adapters with peft (optional dependency) and merging them back into plain BAGEL weights.

Adapters are injected in place (`peft.inject_adapter_in_model`), so the model stays a `Bagel` and its
forward is unchanged: a targeted `nn.Linear` named `q_proj` becomes a LoRA layer with parameters
`q_proj.base_layer.{weight,bias}`, `q_proj.lora_A.default.weight` [r, in] and `q_proj.lora_B.default.weight`
[out, r]. `merge_lora_state` turns such a state dict back into official keys with W' = W + (alpha / r) B A,
from tensors only (so EMA values of the adapters can be merged too). `adapter_state` and `adapter_config`
give what peft's `PeftModel.save_pretrained` writes for the same model (adapter_model.safetensors and
adapter_config.json), which `worldbagel.model.lora_adapter` and peft's `PeftModel.from_pretrained` load.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldbagel.errors import DependencyNotInstalled, bad_argument
from worldbagel.model.lora_adapter import PEFT_PREFIX
from worldbagel.train.options import LoraConfig

logger = logging.getLogger(__name__)

ADAPTER = "default"


def _peft():
    try:
        import peft  # lazy: optional dependency (lora extra)
    except ImportError as exc:
        raise DependencyNotInstalled(
            "LoRA training needs peft: pip install 'worldbagel[lora]' (or pip install peft), "
            "or set train.lora.enabled=false"
        ) from exc
    return peft


def inject_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Add adapters to `cfg.target_modules`, freeze everything else except `cfg.train_modules`.

    Returns the trainable parameter names.
    """
    peft = _peft()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg.target_modules if t.rsplit(".", 1)[-1] not in names]
    if missing or not cfg.target_modules:
        raise bad_argument(
            "train.lora.target_modules",
            list(cfg.target_modules),
            f"{missing or 'nothing'} matches no Linear of the model; choose from {sorted(names)}",
        )
    params = [n for n, _ in model.named_parameters()]
    unused = [m for m in cfg.train_modules if not any(n.startswith(m) for n in params)]
    if unused:
        top = sorted({n.split(".", 1)[0] for n in params})
        raise bad_argument(
            "train.lora.train_modules",
            list(cfg.train_modules),
            f"{unused} is the start of no parameter name; give module names such as {top}",
        )
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    out = []
    for name, p in model.named_parameters():
        train = ".lora_" in name or name.startswith(tuple(cfg.train_modules))
        p.requires_grad_(train)
        if train:
            out.append(name)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA r=%d on %s: %.3f M trainable parameters", cfg.r, list(cfg.target_modules), n / 1e6)
    return out


def base_dtype(name: str, device: torch.device) -> torch.dtype:
    """torch dtype of `train.lora.base_dtype` on `device`: auto = bfloat16 on CUDA, float32 elsewhere (CPU bf16
    matmuls are much slower than fp32 ones)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in dtypes:
        raise bad_argument("train.lora.base_dtype", name, f"use one of {('auto', *dtypes)}")
    return dtypes[name]


def cast_lora_model(model: nn.Module, frozen_dtype: torch.dtype) -> None:
    """Frozen floating-point parameters to `frozen_dtype`, trainable ones (adapters, train_modules) to float32.

    The trainable weights, and so their gradients, optimizer state and EMA, stay fp32 master weights; the frozen
    base is only read, so it can be stored in the compute dtype (peft creates adapters in the dtype of their base
    layer, hence the cast back to fp32 here).
    """
    for p in model.parameters():
        want = torch.float32 if p.requires_grad else frozen_dtype
        if p.is_floating_point() and p.dtype != want:
            p.data = p.data.to(want)


def has_lora(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_A." in k for k in state)


def merge_lora_state(state: dict[str, torch.Tensor], cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """A LoRA-injected state dict -> official keys with the adapters merged (W + alpha/r B A)."""
    scale = cfg.alpha / cfg.r
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            out[key] = t
            continue
        prefix, param = key.split(".base_layer.")
        w = t
        if param == "weight":
            a = state[f"{prefix}.lora_A.{ADAPTER}.weight"].float()  # [r, in]
            b = state[f"{prefix}.lora_B.{ADAPTER}.weight"].float()  # [out, r]
            w = (t.float() + scale * (b @ a)).to(t.dtype)
        out[f"{prefix}.{param}"] = w
    return out


def base_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys of the base weights (adapters dropped, not merged)."""
    return {k.replace(".base_layer.", "."): t for k, t in state.items() if ".lora_" not in k}


def adapter_state(state: dict[str, torch.Tensor], cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """The adapter file's tensors, keyed as peft saves them: `base_model.model.<module>.lora_A.weight` /
    `lora_B.weight` (no adapter name), and `base_model.model.<parameter>` for the fully trained
    `cfg.train_modules` (peft's modules_to_save), so the file alone turns the original base into the
    fine-tuned model."""
    lora_key = re.compile(rf"\.(lora_[AB])\.{re.escape(ADAPTER)}\.")
    out = {}
    for key, t in state.items():
        if ".lora_" in key:
            out[PEFT_PREFIX + lora_key.sub(r".\1.", key)] = t
        elif cfg.train_modules and key.startswith(tuple(cfg.train_modules)):
            out[PEFT_PREFIX + key.replace(".base_layer.", ".")] = t
    return out


def adapter_config(cfg: LoraConfig, base: str | Path | None) -> dict[str, Any]:
    """adapter_config.json as peft's `PeftModel.save_pretrained` writes it for a Bagel with these adapters.

    `base` (the folder the adapters were trained on) becomes `base_model_name_or_path`; task_type stays
    None, as peft leaves it for a model that is not a transformers task model.
    """
    peft = _peft()
    config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(cfg.train_modules) or None,
        base_model_name_or_path=None if base is None else str(base),
        inference_mode=True,
    )
    out = config.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    out["peft_type"] = str(getattr(config.peft_type, "value", config.peft_type))
    out["auto_mapping"] = {"base_model_class": "Bagel", "parent_library": "worldbagel.model.bagel"}
    return out
