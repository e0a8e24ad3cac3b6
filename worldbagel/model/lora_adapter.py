"""LoRA adapter folders in peft's format: reading them and merging them into a loaded model.

An adapter folder (what `worldbagel finetune ... train.lora.merge_on_save=false` writes next to the base
weights, and what peft's `PeftModel.save_pretrained` writes) holds:

    adapter_config.json         peft's LoraConfig: peft_type LORA, r, lora_alpha, target_modules,
                                modules_to_save, base_model_name_or_path (the BAGEL folder it was trained on)
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight [r, in], ...lora_B.weight [out, r];
                                base_model.model.<parameter> for the fully trained modules (modules_to_save)

`apply_adapter` merges it into a plain model in place: W' = W + scale * B A with scale = lora_alpha / r
(lora_alpha / sqrt(r) with use_rslora), and copies the modules_to_save tensors; nothing here needs peft.
Keys without peft's `base_model.model.` prefix (written by earlier worldbagel versions) are read too.
Options that change what an adapter computes and that this merge does not implement (DoRA, per-module
ranks, trained biases, ...) are refused with an error rather than merged wrongly.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldbagel.errors import CheckpointError
from worldbagel.model.weights_file import read_header, read_tensors

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
"""peft's prefix of every saved adapter key (the PeftModel -> LoraModel -> model nesting)."""

_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<side>[AB])\.weight")

# option -> the value under which a merge of lora_A / lora_B alone reproduces peft's forward
_NEUTRAL = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "lora_bias": False,
    "bias": "none",
    "rank_pattern": {},
    "alpha_pattern": {},
    "use_qalora": False,
    "use_bdlora": None,
    "trainable_token_indices": None,
    "target_parameters": None,
    "alora_invocation_tokens": None,
    "arrow_config": None,
    "kasa_config": None,
    "monteclora_config": None,
    "velora_config": None,
}


def is_adapter_folder(folder: Path) -> bool:
    """Whether `folder` holds a LoRA adapter (either adapter file; `read_adapter_config` checks both)."""
    return (folder / ADAPTER_FILE).is_file() or (folder / ADAPTER_CONFIG).is_file()


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The parsed adapter_config.json of `folder`, checked to be a LoRA adapter this module can merge."""
    path = folder / ADAPTER_CONFIG
    for f in (path, folder / ADAPTER_FILE):
        if not f.is_file():
            raise CheckpointError(
                f"{f} is missing: a LoRA adapter folder holds both {ADAPTER_CONFIG} and {ADAPTER_FILE} "
                "(copy the missing one from the folder the adapter was exported to)"
            )
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); re-export the adapter") from None
    if not isinstance(spec, dict) or spec.get("peft_type") != "LORA":
        shown = spec.get("peft_type") if isinstance(spec, dict) else type(spec).__name__
        raise CheckpointError(
            f"{path} has peft_type={shown!r}; only LoRA adapters (peft_type LORA) can be applied"
        )
    for key in ("r", "lora_alpha"):
        if not isinstance(spec.get(key), int | float) or spec[key] <= 0:
            raise CheckpointError(f"{path} has {key}={spec.get(key)!r}; it must be a positive number")
    unsupported = {k: spec[k] for k, v in _NEUTRAL.items() if spec.get(k, v) not in (v, None, {}, [])}
    if unsupported:
        raise CheckpointError(
            f"{path} uses LoRA options {unsupported} that worldbagel cannot merge; load it with peft "
            "(PeftModel.from_pretrained) and call merge_and_unload(), or retrain without them"
        )
    return spec


def apply_adapter(model: nn.Module, folder: Path, spec: dict[str, Any] | None = None) -> None:
    """Merge the adapter of `folder` into `model` in place (see the module docstring)."""
    spec = spec if spec is not None else read_adapter_config(folder)
    file = folder / ADAPTER_FILE
    tensors = dict(read_tensors(read_header(file), model_weights=True))  # floating and finite, named if not
    lora, full = _split(tensors, model, file)
    r = int(spec["r"])
    scale = spec["lora_alpha"] / (math.sqrt(r) if spec.get("use_rslora") else r)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in full.items():
            p = params[name]
            p.copy_(t.to(device=p.device, dtype=p.dtype))
        for name, (a, b) in lora.items():
            w = modules[name].weight
            if a.shape[0] != r:
                raise CheckpointError(
                    f"{file}: {name}.lora_A has rank {a.shape[0]} but {ADAPTER_CONFIG} says r={r}"
                )
            delta = b.float() @ a.float()  # [out, in], on CPU as the merged export computes it
            w.copy_((w.float() + scale * delta.to(w.device)).to(w.dtype))
    logger.info(
        "applied LoRA adapter %s (r=%d, lora_alpha=%g) to %d modules, %d fully trained tensors",
        file,
        r,
        spec["lora_alpha"],
        len(lora),
        len(full),
    )


def _split(
    tensors: dict[str, torch.Tensor], model: nn.Module, file: Path
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """Adapter tensors -> {Linear name: (A, B)} and {parameter name: tensor}, checked against `model`."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    halves: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, t in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        m = _LORA_KEY.fullmatch(name)
        if m:
            halves.setdefault(m["module"], {})[m["side"]] = t
        elif name in params and tuple(params[name].shape) == tuple(t.shape):
            full[name] = t
        else:
            problems.append(f"{key} {tuple(t.shape)} matches no parameter of the model")
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, ab in sorted(halves.items()):
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            problems.append(f"{name} has LoRA weights but is not a Linear layer of the model")
        elif set(ab) != {"A", "B"}:
            problems.append(f"{name} has lora_{''.join(ab)} without its other half")
        elif (
            ab["A"].ndim != 2
            or ab["B"].ndim != 2
            or (ab["B"].shape[0], ab["A"].shape[1]) != tuple(module.weight.shape)
            or ab["A"].shape[0] != ab["B"].shape[1]
        ):
            problems.append(
                f"{name}: lora_A {tuple(ab['A'].shape)} / lora_B {tuple(ab['B'].shape)} do not fit its weight "
                f"{tuple(module.weight.shape)}"
            )
        else:
            lora[name] = (ab["A"], ab["B"])
    if not problems and not lora and not full:
        problems.append("the file holds no adapter tensors")
    if problems:
        shown = "; ".join(problems[:5]) + (f" ({len(problems)} problems in all)" if len(problems) > 5 else "")
        raise CheckpointError(
            f"{file} does not fit the model it is applied to: {shown}. The adapter was trained on another "
            f"model; point base_model_name_or_path in {ADAPTER_CONFIG} at the folder it was trained on"
        )
    return lora, full
