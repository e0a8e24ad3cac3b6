"""The official BAGEL model folder: strict, low-memory loading and drop-in saving.

A folder (as BAGEL-7B-MoT) holds:
    llm_config.json, vit_config.json   Qwen2 / SigLIP configs (official overrides applied on read)
    vae_config.json                    optional (FLUX.1 values when absent; worldbagel writes it)
    ema.safetensors                    every Bagel parameter, official key names (no prefix, no renaming)
    ae.safetensors                     the FLUX autoencoder, FLUX key layout
    vocab.json + merges.txt (or tokenizer.json), tokenizer_config.json, ...   the Qwen2 tokenizer
`config.json` is never read.

A folder may also hold a LoRA adapter (adapter_config.json + adapter_model.safetensors, peft's format, see
`worldbagel.model.lora_adapter`); the loaders then merge it into the base weights: the folder's own
ema.safetensors when it has one (an unmerged LoRA export), else the folder that adapter_config.json's
`base_model_name_or_path` names (absolute, or relative to the adapter folder), or the `base` argument.

Loading builds the model on the meta device (no memory, no init) and assigns each tensor as it is read
from the file (`weights_file.read_tensors`, plain reads, no mmap), so peak host RAM is about one copy of
the weights. Non-persistent buffers (rope `inv_freq`) are re-created afterwards by the owning module's
`reset_buffers()`.

dtype policy (`dtype` argument of the loaders):
    None              on CPU: float32 (bf16/fp16 matmuls are very slow on CPU); on other devices: as stored
    "keep"/"stored"   the dtype stored in the file (bf16 stays bf16)
    a torch.dtype or a name ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")   cast to it
Only floating-point tensors are cast.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldbagel.errors import CheckpointError, bad_argument
from worldbagel.model.configuration import LLM_CONFIG, VIT_CONFIG, BagelConfig
from worldbagel.model.device import check_device
from worldbagel.model.lora_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    apply_adapter,
    is_adapter_folder,
    read_adapter_config,
)
from worldbagel.model.tokenizer import TOKENIZER_FILES, BagelTokenizer
from worldbagel.model.vae import AE_FILE, FluxVAE, save_vae
from worldbagel.model.weights_file import describe_mismatch, read_header, read_tensors, write_file

logger = logging.getLogger(__name__)

EMA_FILE = "ema.safetensors"
FOLDER_CONTENTS = (
    f"A BAGEL model folder (as BAGEL-7B-MoT) must contain {LLM_CONFIG}, {VIT_CONFIG}, {EMA_FILE}, {AE_FILE}, "
    "the tokenizer files (vocab.json + merges.txt or tokenizer.json, tokenizer_config.json) and optionally "
    "vae_config.json."
)

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype | None:
    """The dtype to cast floating tensors to, or None to keep the stored dtype (see the module docstring)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32 if torch.device(device).type == "cpu" else None
    name = str(dtype).lower().removeprefix("torch.")
    if name in ("keep", "stored", "auto"):
        return None
    if name in _DTYPE_NAMES:
        return _DTYPE_NAMES[name]
    raise bad_argument("dtype", dtype, f"use None, 'keep', a torch.dtype or one of {sorted(_DTYPE_NAMES)}")


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"model folder {path} does not exist. {FOLDER_CONTENTS}")
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is not a folder. {FOLDER_CONTENTS}")


# ------------------------------------------------------------------------------------------------ loading
def load_state_into(
    model: nn.Module,
    file: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    what: str = "the model",
) -> nn.Module:
    """Strictly fill `model` (typically built on the meta device) from a safetensors file.

    Every key of `model.state_dict()` must be in the file with the same shape and every tensor of the file
    must be used; otherwise one CheckpointError lists the differences. Tensors are assigned (not copied),
    cast to `dtype` when given. Meta non-persistent buffers are then re-created (`reset_buffers()`).
    """
    header = read_header(file, FOLDER_CONTENTS)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    msg = describe_mismatch(expected, header.shapes())
    if msg:
        raise CheckpointError(f"{header.path} does not match {what}: {msg}. {FOLDER_CONTENTS}")
    state = dict(read_tensors(header, expected, dtype=dtype, device=device, model_weights=True))
    model.load_state_dict(state, strict=True, assign=True)
    del state
    materialize_buffers(model, device)
    return model


def materialize_buffers(model: nn.Module, device: torch.device | str) -> None:
    """Re-create buffers left on the meta device (non-persistent ones after a meta build) on `device`.

    A module owning such buffers must define `reset_buffers()` (which recomputes them); any meta tensor left
    afterwards is an error naming it.
    """
    for name, module in model.named_modules():
        own = [b for b, t in module.named_buffers(recurse=False) if t is not None and t.is_meta]
        if not own:
            continue
        if not hasattr(module, "reset_buffers"):
            raise CheckpointError(
                f"module {name or type(module).__name__} has buffers {own} that are not in the checkpoint and "
                "no reset_buffers() method to recompute them after a meta-device build"
            )
        module.reset_buffers()
        for b in own:
            setattr(module, b, getattr(module, b).to(device))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(
            f"tensors still on the meta device after loading: {left[:5]} ({len(left)} in all)"
        )


def resolve_folder(path: str | Path, base: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(the folder whose weights, configs, autoencoder and tokenizer to load, the adapter folders to apply on
    top of its weights in order).

    A plain folder is its own base. An adapter folder's base is `base` when given, else its own
    ema.safetensors, else the folder `base_model_name_or_path` names (which may be an adapter folder too).
    """
    path = Path(path)
    _check_folder(path)
    if base is not None and not is_adapter_folder(path):
        raise bad_argument(
            "base", str(base), f"{path} holds no LoRA adapter ({ADAPTER_CONFIG}); leave base out"
        )
    if base is not None and not Path(base).is_dir():
        raise bad_argument(
            "base", str(base), "is not a folder; give the BAGEL folder the adapter was trained on"
        )
    folder, adapters, seen = path, [], set()
    while is_adapter_folder(folder):
        spec = read_adapter_config(folder)
        adapters.append(folder)
        seen.add(folder.resolve())
        if folder == path and base is not None:
            nxt = Path(base)
        elif (folder / EMA_FILE).is_file():
            break
        else:
            nxt = _named_base(folder, spec.get("base_model_name_or_path"))
        if nxt.resolve() in seen:
            raise CheckpointError(
                f"{folder / ADAPTER_CONFIG}: base_model_name_or_path leads back to {nxt}; point it at the "
                "BAGEL folder the adapter was trained on"
            )
        folder = nxt
    return folder, adapters[::-1]


def _named_base(folder: Path, name: Any) -> Path:
    """The base folder that an adapter folder without ema.safetensors names, or an error saying how to fix it."""
    config = folder / ADAPTER_CONFIG
    fix = (
        f'set "base_model_name_or_path" in {config} to the BAGEL folder the adapter was trained on '
        f"(absolute, or relative to {folder}), or pass base=<that folder> to load_bagel / load_pretrained"
    )
    if not name:
        raise CheckpointError(
            f"{folder} holds a LoRA adapter ({ADAPTER_FILE}) but no base weights: it has no {EMA_FILE} and "
            f"{config} names no base_model_name_or_path; {fix}"
        )
    base = Path(str(name)).expanduser()
    base = base if base.is_absolute() else folder / base
    if not (base / EMA_FILE).is_file() and not is_adapter_folder(base):
        raise CheckpointError(
            f"the base model of the LoRA adapter in {folder} is missing: {config} names "
            f"base_model_name_or_path={name!r}, but {base / EMA_FILE} does not exist; {fix}"
        )
    return base


def load_pretrained(
    cls: type[nn.Module],
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    config: BagelConfig | None = None,
    *,
    base: str | Path | None = None,
    adapter: bool = True,
) -> nn.Module:
    """Build `cls(config)` on the meta device, load ema.safetensors into it strictly and merge the LoRA
    adapters of the folder, if any (see `resolve_folder`).

    `config` defaults to the base folder's `BagelConfig.from_folder`. `base` names the base folder of an
    adapter folder (overriding its own weights and base_model_name_or_path); `adapter=False` leaves the
    folder's own adapter out (the base model it applies to, e.g. for peft's `PeftModel.from_pretrained`).
    The returned model is in eval mode and remembers the folder as `model.pretrained_dir` and the folder
    of its files as `model.files_dir` (so `save_pretrained` can copy the autoencoder and tokenizer).
    """
    path = Path(path)
    device = check_device(device)
    cast = resolve_dtype(dtype, device)
    root, adapters = resolve_folder(path, base)
    if not adapter and adapters and adapters[-1] == path:
        adapters.pop()
    config = config or BagelConfig.from_folder(root)
    with torch.device("meta"):
        model = cls(config)
    load_state_into(
        model,
        root / EMA_FILE,
        dtype=cast,
        device=device,
        what=f"the Bagel model built from {LLM_CONFIG}/{VIT_CONFIG}",
    )
    logger.info("loaded %s from %s (%s, %s)", cls.__name__, root, _dtype_of(model), device)
    for folder in adapters:
        apply_adapter(model, folder)
    model.pretrained_dir = path
    model.files_dir = root
    return model.eval()


def _dtype_of(model: nn.Module) -> str:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    return "/".join(dtypes)


# ------------------------------------------------------------------------------------------------ saving
def save_pretrained(
    model: nn.Module,
    path: str | Path,
    vae: FluxVAE | None = None,
    tokenizer: BagelTokenizer | None = None,
) -> Path:
    """Write a drop-in BAGEL folder: configs, ema.safetensors (official keys), ae.safetensors (FLUX layout),
    tokenizer files.

    When `vae` / `tokenizer` are None they are copied from `model.files_dir` or `model.pretrained_dir` (the
    folder the model was loaded from) if it has them; otherwise the folder is written without them and a warning is logged.
    Files are written to a temporary folder first and moved in with os.replace, so an interrupted save never
    leaves a half-written file under `path`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise bad_argument("path", str(path), "is a file; give a folder to save the model in")
    config: Any = getattr(model, "config", None)
    if not isinstance(config, BagelConfig):
        raise bad_argument("model", type(model).__name__, "needs a BagelConfig as model.config")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.saving-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    source = getattr(model, "files_dir", None) or getattr(model, "pretrained_dir", None)
    try:
        config.to_folder(tmp)
        write_file(tmp / EMA_FILE, model.state_dict(), metadata={"format": "pt"})
        if vae is not None:
            save_vae(vae, tmp / AE_FILE)
        elif source is not None and (Path(source) / AE_FILE).is_file():
            shutil.copyfile(Path(source) / AE_FILE, tmp / AE_FILE)
        else:
            logger.warning("no autoencoder given: %s will lack %s", path, AE_FILE)
        if tokenizer is not None:
            tokenizer.save(tmp)
        elif source is not None and any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
            for f in TOKENIZER_FILES:
                if (Path(source) / f).is_file():
                    shutil.copyfile(Path(source) / f, tmp / f)
        else:
            logger.warning("no tokenizer given: %s will lack tokenizer files", path)
        if not path.exists():
            os.replace(tmp, path)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, path / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved BAGEL folder %s", path)
    return path
