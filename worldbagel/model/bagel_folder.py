"""Load everything a BAGEL folder holds: the network, the autoencoder and the tokenizer (`load_bagel`).

The folder format and the network's own loading live in worldbagel/model/checkpoint.py (`load_pretrained`,
which `Bagel.from_pretrained` calls); this module sits above both the network (worldbagel/model/bagel.py) and
the format, and checks that the parts belong to one model (tokenizer ids within the embedding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from worldbagel.errors import CheckpointError
from worldbagel.model.bagel import Bagel
from worldbagel.model.checkpoint import load_pretrained, resolve_dtype, resolve_folder
from worldbagel.model.configuration import LLM_CONFIG, BagelConfig
from worldbagel.model.device import check_device
from worldbagel.model.tokenizer import BagelTokenizer, load_tokenizer
from worldbagel.model.vae import AE_FILE, FluxVAE, load_vae

__all__ = ["LoadedBagel", "load_bagel"]


@dataclass
class LoadedBagel:
    """Everything a BAGEL folder holds, loaded."""

    model: nn.Module
    """The Bagel network (ema.safetensors)."""
    vae: FluxVAE
    """The FLUX autoencoder (ae.safetensors)."""
    tokenizer: BagelTokenizer
    """Tokenizer with the special-token ids."""
    config: BagelConfig
    """The configuration read from the folder."""


def load_bagel(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    vae_dtype: torch.dtype | str | None = None,
    base: str | Path | None = None,
) -> LoadedBagel:
    """Load model, autoencoder and tokenizer of a BAGEL folder (worldbagel/model/checkpoint.py: `dtype`).

    `vae_dtype` follows the same policy (default: float32 on CPU, stored dtype elsewhere). A LoRA adapter
    in the folder is merged into the model; `base` names its base folder (see `load_pretrained`).
    """

    path = Path(path)
    device = check_device(device)
    root, _ = resolve_folder(path, base)
    config = BagelConfig.from_folder(root)
    tokenizer = load_tokenizer(root)  # cheap; fails early on a folder without tokenizer files
    if len(tokenizer) > config.llm.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {root} has {len(tokenizer)} ids but the model's embedding has "
            f"{config.llm.vocab_size} rows ({LLM_CONFIG} vocab_size); the folder mixes two models"
        )
    model = load_pretrained(Bagel, path, dtype=dtype, device=device, config=config, base=base)
    vae = load_vae(root / AE_FILE, config.vae, device=device, dtype=resolve_dtype(vae_dtype, device))
    vae.latent_patch_size = config.latent_patch_size
    return LoadedBagel(model=model, vae=vae, tokenizer=tokenizer, config=config)
