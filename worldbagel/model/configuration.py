"""Configuration dataclasses of the BAGEL model, read from (and written to) the official folder layout.

The official loader reads `llm_config.json` (a Qwen2 config) and `vit_config.json` (a SigLIP vision config)
and then overrides a few values; `config.json` is never read. The autoencoder has no config file in the
release (FLUX values are hard-coded); worldbagel reads an optional `vae_config.json` and falls back to FLUX.

Every value read from a file is checked against its field's type (an int field holds an integer, sizes are
positive, floats are finite, ...): a config file that is not a JSON object, or a field of the wrong type, gives
one CheckpointError naming the file and the field instead of a traceback where the value is first used.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from worldbagel.errors import CheckpointError

LLM_CONFIG = "llm_config.json"
VIT_CONFIG = "vit_config.json"
VAE_CONFIG = "vae_config.json"


_MAY_BE_ZERO_OR_NEGATIVE = {"shift_factor"}
"""Numeric fields that may be <= 0 (every other int / float field of a config file must be > 0)."""


def _pick(cls, raw: dict[str, Any], file: Path) -> dict[str, Any]:
    """The entries of a config file's JSON object that are fields of `cls`, each checked against its type."""
    hints = typing.get_type_hints(cls)
    return {f.name: _checked(file, f.name, raw[f.name], hints[f.name]) for f in fields(cls) if f.name in raw}


def _checked(file: Path, name: str, value: Any, hint: Any) -> Any:
    """`value` if it fits the type `hint` (int, float, bool, str, list[int], optional); else CheckpointError."""

    def wrong(expected: str) -> CheckpointError:
        return CheckpointError(
            f"config file {file}: field {name!r} is {value!r} ({type(value).__name__}) but must be {expected}; "
            "fix the value or restore the file from the model release"
        )

    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        if value < (0 if name in _MAY_BE_ZERO_OR_NEGATIVE or name.endswith("_id") else 1):
            raise wrong("a positive integer" if not name.endswith("_id") else "an integer >= 0")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong("a finite number")
        if value <= 0 and name not in _MAY_BE_ZERO_OR_NEGATIVE:
            raise wrong("a number > 0")
        return float(value)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not value:
            raise wrong("a non-empty list of positive integers")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise wrong("a non-empty list of positive integers")
        return list(value)
    raise TypeError(f"no check for config field {name!r} of type {hint!r}")  # pragma: no cover - schema bug


@dataclass
class LLMConfig:
    """The Qwen2 language model with Mixture-of-Transformers layers."""

    vocab_size: int = 152064
    """Rows of the token embedding and of lm_head."""
    hidden_size: int = 3584
    """Model width H."""
    intermediate_size: int = 18944
    """SwiGLU inner width F."""
    num_hidden_layers: int = 28
    """Decoder layers L."""
    num_attention_heads: int = 28
    """Query heads Nq."""
    num_key_value_heads: int = 4
    """Key/value heads Nkv (grouped-query attention)."""
    max_position_embeddings: int = 32768
    """Longest rope position the model was trained for (informational)."""
    rope_theta: float = 1_000_000.0
    """RoPE base."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm (layer norms and qk-norm)."""
    hidden_act: str = "silu"
    """Activation of the SwiGLU gate."""
    qk_norm: bool = True
    """Per-head RMSNorm of q and k before RoPE (forced True by the official loader)."""
    tie_word_embeddings: bool = False
    """Forced False by the official loader (separate lm_head)."""
    layer_module: str = "Qwen2MoTDecoderLayer"
    """Decoder layer variant: Qwen2MoTDecoderLayer (release), Qwen2MoEDecoderLayer or Qwen2DecoderLayer."""
    pad_token_id: int | None = None
    """Padding id of the embedding (no effect on the forward pass)."""
    freeze_und: bool = False
    """Training only: detach the understanding expert so only the generation expert learns."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def use_moe(self) -> bool:
        """True when the layers have `*_moe_gen` twins (MoE or MoT variants)."""
        return "Mo" in self.layer_module


@dataclass
class ViTConfig:
    """The SigLIP NaViT vision tower (understanding path)."""

    hidden_size: int = 1152
    """Width of the ViT."""
    intermediate_size: int = 4304
    """MLP inner width."""
    num_hidden_layers: int = 26
    """Layers actually built: the file's value minus one (the official loader drops the last layer)."""
    num_attention_heads: int = 16
    """Attention heads."""
    num_channels: int = 3
    """Input image channels."""
    image_size: int = 980
    """Side in pixels that the learned position table covers ((image_size/patch)^2 rows)."""
    patch_size: int = 14
    """Patch side Pv in pixels."""
    hidden_act: str = "gelu_pytorch_tanh"
    """MLP activation."""
    layer_norm_eps: float = 1e-6
    """LayerNorm epsilon."""

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class VAEConfig:
    """The FLUX autoencoder's hyper-parameters (FLUX.1 values unless `vae_config.json` says otherwise)."""

    resolution: int = 256
    """Informational only (the autoencoder is fully convolutional)."""
    in_channels: int = 3
    """Image channels."""
    downsample: int = 8
    """Spatial reduction factor of the encoder (2 ** (len(ch_mult) - 1))."""
    ch: int = 128
    """Base channel width."""
    out_ch: int = 3
    """Decoded image channels."""
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    """Width multiplier per resolution level."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (the decoder has one more)."""
    z_channels: int = 16
    """Latent channels Cz."""
    scale_factor: float = 0.3611
    """Latents are stored as scale * (z - shift)."""
    shift_factor: float = 0.1159
    """See scale_factor."""


@dataclass
class BagelConfig:
    """The whole Bagel model: LLM, ViT, autoencoder and the glue between them."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    """Language model config."""
    vit: ViTConfig = field(default_factory=ViTConfig)
    """Vision tower config."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """Autoencoder config."""
    visual_gen: bool = True
    """Build the generation heads (time embedder, vae2llm, llm2vae, latent_pos_embed)."""
    visual_und: bool = True
    """Build the vision tower, connector and vit_pos_embed."""
    latent_patch_size: int = 2
    """Latent pixels per side folded into one LLM token (p)."""
    max_latent_size: int = 64
    """Side of the latent position table in tokens (64 for the release: images up to 1024 px)."""
    vit_max_num_patch_per_side: int = 70
    """Side of the ViT position tables in patches (70 for the release: images up to 980 px)."""
    connector_act: str = "gelu_pytorch_tanh"
    """Activation between connector.fc1 and connector.fc2."""
    interpolate_pos: bool = False
    """Use interpolated instead of extrapolated 2-D position ids (False for the release)."""
    timestep_shift: float = 1.0
    """Shift applied to training timesteps (inference passes its own)."""

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token side: VAE downsample x latent patch (16 for the release)."""
        return self.vae.downsample * self.latent_patch_size

    @property
    def patch_latent_dim(self) -> int:
        """Features per latent token: p * p * Cz (64 for the release)."""
        return self.latent_patch_size**2 * self.vae.z_channels

    # ------------------------------------------------------------------ folder IO
    @classmethod
    def from_folder(cls, path: str | Path, **overrides: Any) -> BagelConfig:
        """Read the configs of an official-layout folder and apply the official loader's overrides."""
        path = Path(path)
        llm_raw = _read_json(path / LLM_CONFIG)
        vit_raw = _read_json(path / VIT_CONFIG)
        llm = LLMConfig(**_pick(LLMConfig, llm_raw, path / LLM_CONFIG))
        # Official overrides (spec §0, §2.1): qk-norm on, untied embeddings, MoT layers.
        llm.qk_norm = True
        llm.tie_word_embeddings = False
        # The release file has no layer_module (the loader forces MoT); folders we write may name another.
        llm.layer_module = llm_raw.get("layer_module", "Qwen2MoTDecoderLayer")
        vit = ViTConfig(**_pick(ViTConfig, vit_raw, path / VIT_CONFIG))
        vit.num_hidden_layers = vit_raw.get("num_hidden_layers", 27) - 1  # official: drop the last layer
        vae = read_vae_config(path) or VAEConfig()
        cfg = cls(llm=llm, vit=vit, vae=vae)
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise CheckpointError(
                    f"unknown BagelConfig override {k}={v!r}; valid: {[f.name for f in fields(cls)]}"
                )
            setattr(cfg, k, v)
        return cfg

    def to_folder(self, path: str | Path) -> None:
        """Write llm/vit/vae config files that `from_folder` reads back to an equal config."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        llm = asdict(self.llm)
        llm.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
        vit = asdict(self.vit)
        vit["num_hidden_layers"] = self.vit.num_hidden_layers + 1  # the file counts the dropped layer
        vit["model_type"] = "siglip_vision_model"
        for name, data in ((LLM_CONFIG, llm), (VIT_CONFIG, vit), (VAE_CONFIG, asdict(self.vae))):
            (path / name).write_text(json.dumps(data, indent=1) + "\n")


def read_vae_config(folder: str | Path) -> VAEConfig | None:
    """The folder's `vae_config.json` (written by worldbagel; the release has none), or None without one."""
    file = Path(folder) / VAE_CONFIG
    return VAEConfig(**_pick(VAEConfig, _read_json(file), file)) if file.is_file() else None


def _read_json(file: Path) -> dict[str, Any]:
    """A config file's JSON object; CheckpointError naming the file when it is missing, not JSON or not an
    object."""
    if not file.exists():
        raise CheckpointError(
            f"missing config file {file}: a BAGEL model folder needs {LLM_CONFIG} and {VIT_CONFIG} "
            "(plus ema.safetensors, ae.safetensors and tokenizer files) as in BAGEL-7B-MoT"
        )
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"config file {file} is not valid JSON ({exc}); restore it from the model release"
        ) from exc
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"config file {file} holds a JSON {type(raw).__name__}, not an object of fields "
            '({"hidden_size": ..., ...}); restore it from the model release'
        )
    return raw
