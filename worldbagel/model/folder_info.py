"""A summary of a BAGEL model folder (config, parameters per expert, stored dtypes, files) without loading weights.

Parameter counts come from the safetensors headers (shapes only) or, when asked not to read them or when a
weights file is absent, from the model built on the meta device and the FLUX layout of the VAE config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worldbagel.errors import CheckpointError
from worldbagel.model.bagel import Bagel
from worldbagel.model.checkpoint import EMA_FILE, FOLDER_CONTENTS
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.vae import AE_FILE, flux_key_shapes
from worldbagel.model.weights_file import read_header

#: Display names of the parameter groups, in order.
PARTS = {
    "und": "LLM understanding expert (layers + norm)",
    "gen": "LLM generation expert (*_moe_gen)",
    "embed_head": "shared embed_tokens + lm_head",
    "vit": "SigLIP ViT",
    "und_heads": "connector + vit_pos_embed",
    "gen_heads": "time_embedder + vae2llm + llm2vae + latent_pos_embed",
}


def part_of(name: str) -> str:
    """The group (a key of PARTS) a Bagel state-dict key belongs to."""
    if name.startswith("language_model."):
        if "embed_tokens" in name or "lm_head" in name:
            return "embed_head"
        return "gen" if "moe_gen" in name else "und"
    if name.startswith("vit_model."):
        return "vit"
    if name.startswith(("connector.", "vit_pos_embed.")):
        return "und_heads"
    return "gen_heads"


def count_parts(named_numels: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Parameters per group from (key, numel) pairs."""
    out = dict.fromkeys(PARTS, 0)
    for name, n in named_numels:
        out[part_of(name)] += n
    return out


@dataclass
class FileInfo:
    name: str
    size: int
    """Bytes."""
    dtypes: dict[str, int] = field(default_factory=dict)
    """Parameters per stored dtype (safetensors files read with headers only)."""


@dataclass
class FolderInfo:
    path: Path
    config: BagelConfig
    parts: dict[str, int]
    """Bagel parameters per group (see PARTS)."""
    vae_params: int
    source: str
    """Where the counts come from: "safetensors headers" or "meta-device model"."""
    files: list[FileInfo]

    @property
    def bagel_params(self) -> int:
        return sum(self.parts.values())


def inspect_folder(path: str | Path, read_weights: bool = True) -> FolderInfo:
    """Summarise a model folder; reads only json files and (if `read_weights`) safetensors headers."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model folder {path} does not exist or is not a folder. {FOLDER_CONTENTS}")
    config = BagelConfig.from_folder(path)
    files = []
    headers = {}
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        info = FileInfo(f.name, f.stat().st_size)
        if read_weights and f.suffix == ".safetensors":
            headers[f.name] = read_header(f, FOLDER_CONTENTS)
            info.dtypes = headers[f.name].dtype_counts()
        files.append(info)
    if EMA_FILE in headers:
        parts = count_parts((k, e.numel) for k, e in headers[EMA_FILE].entries.items())
        source = "safetensors headers"
    else:
        with torch.device("meta"):
            model = Bagel(config)
        parts = count_parts((k, p.numel()) for k, p in model.named_parameters())
        source = "meta-device model"
    if AE_FILE in headers:
        vae_params = sum(e.numel for e in headers[AE_FILE].entries.values())
    else:
        vae_params = sum(math.prod(s) for s in flux_key_shapes(config.vae).values())
    return FolderInfo(
        path=path, config=config, parts=parts, vae_params=vae_params, source=source, files=files
    )
