"""Export a training run as a plain BAGEL folder (what `Bagel.from_pretrained` and the official loader read).

    ema.safetensors     EMA weights (the raw weights when the EMA is off): the file BAGEL loads
    model.safetensors   raw (last-step) weights, same keys
    llm_config.json, vit_config.json, vae_config.json, ae.safetensors, tokenizer files

LoRA runs are merged (W + alpha/r B A) when `merge_on_save`; otherwise both files hold the base weights (with
the fully trained `train_modules`) and `adapter_model.safetensors` + `adapter_config.json` hold the adapters
(EMA values) in peft's format, naming the folder training started from as `base_model_name_or_path`. The
loaders merge them back (`worldbagel.model.lora_adapter`); peft's `PeftModel.from_pretrained` reads them too.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from worldbagel.model.checkpoint import save_pretrained
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.lora_adapter import ADAPTER_CONFIG, ADAPTER_FILE
from worldbagel.model.weights_file import write_file
from worldbagel.train.lora import adapter_config, adapter_state, base_state, has_lora, merge_lora_state
from worldbagel.train.options import LoraConfig


class _StateView:
    """What `save_pretrained` reads from a model: its config, its state dict, where it came from."""

    def __init__(self, config: BagelConfig, state: dict[str, torch.Tensor], source: str | Path | None):
        self.config = config
        self._state = state
        if source is not None:
            self.pretrained_dir = source

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def export_folder(
    out_dir: str | Path,
    config: BagelConfig,
    raw_state: dict[str, torch.Tensor],
    ema_trainable: dict[str, torch.Tensor] | None,
    lora: LoraConfig,
    vae=None,
    tokenizer=None,
    source: str | Path | None = None,
) -> Path:
    """Write the folder; `ema_trainable` holds EMA values of the trainable tensors (None: no EMA)."""
    out_dir = Path(out_dir)
    ema_state = {**raw_state, **(ema_trainable or {})}
    if has_lora(raw_state):
        if lora.merge_on_save:
            raw_out, ema_out = merge_lora_state(raw_state, lora), merge_lora_state(ema_state, lora)
        else:
            raw_out, ema_out = base_state(raw_state), base_state(ema_state)
    else:
        raw_out, ema_out = raw_state, ema_state
    config = copy.deepcopy(config)
    config.llm.freeze_und = False  # a training-time switch, not part of the exported model
    save_pretrained(_StateView(config, ema_out, source), out_dir, vae=vae, tokenizer=tokenizer)
    write_file(out_dir / "model.safetensors", raw_out, metadata={"format": "pt"})
    if has_lora(raw_state) and not lora.merge_on_save:
        write_file(out_dir / ADAPTER_FILE, adapter_state(ema_state, lora), metadata={"format": "pt"})
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
