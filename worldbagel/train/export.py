"""Export a training run as a plain BAGEL folder (what `Bagel.from_pretrained` and the official loader read).

    ema.safetensors     EMA weights (the raw weights when the EMA is off): the file BAGEL loads
    model.safetensors   raw (last-step) weights, same keys
    llm_config.json, vit_config.json, vae_config.json, ae.safetensors, tokenizer files

LoRA runs are merged (W + alpha/r B A) when `merge_on_save`; otherwise both files hold the base weights (with
the fully trained `train_modules`) and `adapter_model.safetensors` + `adapter_config.json` hold the adapters
(EMA values) in peft's format, naming the folder training started from as `base_model_name_or_path`. The
loaders merge them back (`worldbagel.model.lora_adapter`); peft's `PeftModel.from_pretrained` reads them too.

The weights are streamed: the file headers come from the tensors' shapes and dtypes alone, and each output
tensor is made (gathered from its shards under FSDP, merged with its adapters) only when the writer reaches
it, so no process ever holds a whole state dict. Every output is computed by lora.py's own dict functions
applied to the few tensors it comes from (a base weight and its two adapters, or one tensor), so the
streamed export writes exactly what those functions give for the whole state.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from worldbagel.model import parallelize as par
from worldbagel.model.checkpoint import save_pretrained
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.lora_adapter import ADAPTER_CONFIG, ADAPTER_FILE
from worldbagel.model.weights_file import StreamedTensors, TensorSpec, file_order, write_file
from worldbagel.train.lora import ADAPTER, adapter_config, adapter_state, base_state, merge_lora_state
from worldbagel.train.options import LoraConfig

Tensors = dict[str, torch.Tensor]


@dataclass
class ExportWeights:
    """Where the exported tensors come from: the training module's state keys (LoRA-injected names) with
    their whole shapes and dtypes, and functions that give one whole tensor at a time.

    Under FSDP `raw` / `ema` are collectives (each gathers one parameter): every rank must call them for
    the same keys in the same order, which `export_folder(..., write=False)` does on the ranks that do not
    write.
    """

    specs: dict[str, TensorSpec]
    raw: Callable[[str], torch.Tensor]
    """The last-step value of a state key."""
    ema: Callable[[str], torch.Tensor]
    """The EMA value of a trainable key (the raw value of the others, or of every key without an EMA)."""

    @classmethod
    def from_model(cls, model: torch.nn.Module, ema_shadows: Tensors | None = None) -> ExportWeights:
        """From a training module (FSDP-sharded or not) and the EMA shadows of its trainable tensors: each
        call gives one whole tensor, gathered alone from its shards under FSDP (a collective)."""
        state = par.sharded_model_state(model)
        shadow = ema_shadows or {}

        def raw(name: str) -> torch.Tensor:
            return par.full_tensor(state[name]).detach()

        def ema(name: str) -> torch.Tensor:
            return par.full_tensor(shadow[name]).detach() if name in shadow else raw(name)

        return cls({k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in state.items()}, raw, ema)

    @classmethod
    def from_dicts(cls, raw_state: Tensors, ema_trainable: Tensors | None = None) -> ExportWeights:
        """From whole tensors in memory (`ema_trainable`: EMA values of the trainable keys, or None)."""
        ema = ema_trainable or {}
        return cls(
            {k: TensorSpec(t.dtype, tuple(t.shape)) for k, t in raw_state.items()},
            raw_state.__getitem__,
            lambda k: ema[k] if k in ema else raw_state[k],
        )


@dataclass(frozen=True)
class _Output:
    sources: tuple[str, ...]
    spec: TensorSpec


def _plan(
    specs: dict[str, TensorSpec], transform: Callable[[Tensors], Tensors], merge_units: bool
) -> dict[str, _Output]:
    """Output key -> the state keys it is made from and its spec (the transform run on meta tensors)."""
    out: dict[str, _Output] = {}
    for key in specs:
        sources: tuple[str, ...] = (key,)
        if merge_units and key.endswith(".base_layer.weight"):
            prefix = key.removesuffix(".base_layer.weight")
            sources = (key, f"{prefix}.lora_A.{ADAPTER}.weight", f"{prefix}.lora_B.{ADAPTER}.weight")
        meta = {s: torch.empty(specs[s].shape, dtype=specs[s].dtype, device="meta") for s in sources}
        for name, t in transform(meta).items():
            out[name] = _Output(sources, TensorSpec(t.dtype, tuple(t.shape)))
    return out


def _stream(
    plan: dict[str, _Output], transform: Callable[[Tensors], Tensors], fetch: Callable[[str], torch.Tensor]
) -> StreamedTensors:
    def make(name: str) -> torch.Tensor:
        return transform({s: fetch(s) for s in plan[name].sources})[name]

    return StreamedTensors({k: o.spec for k, o in plan.items()}, make)


def _drain(plan: dict[str, _Output], fetch: Callable[[str], torch.Tensor]) -> None:
    """Fetch what writing `plan` fetches, in the writer's order, and drop it (ranks that do not write)."""
    for name in file_order({k: o.spec for k, o in plan.items()}):
        for s in plan[name].sources:
            fetch(s)


class _StateView:
    """What `save_pretrained` reads from a model: its config, its state dict, where it came from."""

    def __init__(self, config: BagelConfig, state: StreamedTensors, source: str | Path | None):
        self.config = config
        self._state = state
        if source is not None:
            self.pretrained_dir = source

    def state_dict(self) -> StreamedTensors:
        return self._state


def export_folder(
    out_dir: str | Path,
    config: BagelConfig,
    weights: ExportWeights,
    lora: LoraConfig,
    vae=None,
    tokenizer=None,
    source: str | Path | None = None,
    write: bool = True,
) -> Path:
    """Write the folder from `weights`; `write=False` only fetches what writing would (see ExportWeights)."""
    out_dir = Path(out_dir)
    lora_run = any(".lora_A." in k for k in weights.specs)
    merged = lora_run and lora.merge_on_save
    adapters = lora_run and not merged
    if not lora_run:
        transform: Callable[[Tensors], Tensors] = dict
    else:
        transform = (lambda s: merge_lora_state(s, lora)) if merged else base_state
    plan = _plan(weights.specs, transform, merged)  # ema.safetensors and model.safetensors: same keys

    def to_adapter(s: Tensors) -> Tensors:
        return adapter_state(s, lora)

    adapter_plan = _plan(weights.specs, to_adapter, False) if adapters else {}
    if not write:  # the same fetches, in the same order, as the writing rank below
        _drain(plan, weights.ema)
        _drain(plan, weights.raw)
        _drain(adapter_plan, weights.ema)
        return out_dir
    config = copy.deepcopy(config)
    config.llm.freeze_und = False  # a training-time switch, not part of the exported model
    view = _StateView(config, _stream(plan, transform, weights.ema), source)
    save_pretrained(view, out_dir, vae=vae, tokenizer=tokenizer)
    raw = _stream(plan, transform, weights.raw)
    write_file(out_dir / "model.safetensors", raw, metadata={"format": "pt"})
    if adapters:
        adapter = _stream(adapter_plan, to_adapter, weights.ema)
        write_file(out_dir / ADAPTER_FILE, adapter, metadata={"format": "pt"})
        # absolute: the folder may be moved or loaded from another working directory
        spec = adapter_config(lora, None if source is None else Path(source).resolve())
        tmp = out_dir / f".{ADAPTER_CONFIG}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out_dir / ADAPTER_CONFIG)
    else:
        for stale in (
            ADAPTER_FILE,
            ADAPTER_CONFIG,
        ):  # a merged export over an unmerged one: not applied twice
            (out_dir / stale).unlink(missing_ok=True)
    return out_dir
