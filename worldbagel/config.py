"""Dataclass schemas of every CLI command (one field docstring each), registered with Hydra's ConfigStore.

Each command's yaml in `worldbagel/configs/<command>.yaml` starts with `defaults: [schema_<command>, _self_]`,
so Hydra validates overrides against these types and `OmegaConf.to_object` turns the composed config into
the dataclass below. Nothing below the CLI sees a DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class InfoConfig:
    """`worldbagel info MODEL_DIR`: describe a BAGEL model folder."""

    model_dir: str = "???"
    """Path of a model folder in the official BAGEL-7B-MoT layout (llm_config.json, ema.safetensors, ...)."""

    weights: bool = True
    """Also read the safetensors headers to report stored dtypes and file sizes."""


SCHEMAS: dict[str, type] = {
    "info": InfoConfig,
}


def register_configs() -> None:
    """Store every schema as `schema_<command>` so command yamls can extend it."""
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"schema_{command.replace('-', '_')}", node=schema)
