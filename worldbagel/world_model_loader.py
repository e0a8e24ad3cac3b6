"""Build a `WorldModel` from config-style inputs: a model preset (or ModelConfig) and a sampler preset.

    wm = load_world_model("gridworld", codec=codec)            # the shipped model, with its own sampler preset
    wm = load_world_model({"name": "tiny", "path": "tests/fixtures/bagel-tiny"}, sampler={"num_steps": 3})

Presets are the yaml files of the CLI's config groups (`worldbagel/configs/model/<name>.yaml`,
`worldbagel/configs/sampler/<name>.yaml`); a mapping is merged over its `name` preset (or over the
dataclass defaults when it names none). Policies built by name (`make_policy("planner", env, model=...)`)
and `ImaginedEnv` use this, so a rollout config only has to name the model.

Loaded pipelines are cached per model config (same name, path, dtype, device and image sizes), so a
rollout that rebuilds its policy after a crashed episode does not load the weights again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from worldbagel.actions import ActionCodec, codec_for_names
from worldbagel.errors import bad_argument
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.model.quantize import check_mode
from worldbagel.world_model import WorldModel, WorldModelConfig

__all__ = [
    "ModelConfig",
    "clear_pipeline_cache",
    "load_pipeline",
    "load_world_model",
    "model_config",
    "sampler_config",
]

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple, BagelPipeline] = {}


@dataclass
class ModelConfig:
    """Which BAGEL folder to load and how (config group `model`: bagel-7b, gridworld, tiny)."""

    name: str = "gridworld"
    """Preset name (informational; the yaml file of the `model` group sets it)."""
    path: str | None = None
    """Model folder in the official layout, or a Hugging Face repo id (e.g. ByteDance-Seed/BAGEL-7B-MoT) read from
    the local Hugging Face cache (nothing is downloaded; an existing folder wins); None selects the world model
    shipped inside the package."""
    dtype: str | None = None
    """Weights dtype: None = fp32 on CPU / stored dtype on CUDA, or float32, bfloat16, float16, keep."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda:0."""
    vae_image_size: list[int] = field(default_factory=lambda: [1024, 512, 16])
    """VAE-side image transform: max side, min side, stride (official 1024/512/16)."""
    vit_image_size: list[int] = field(default_factory=lambda: [980, 224, 14])
    """ViT-side image transform: max side, min side, stride (official 980/224/14)."""
    world: dict[str, Any] = field(default_factory=dict)
    """This model's WorldModelConfig defaults (e.g. `max_history_frames: 1` for a model trained on one context
    frame); options given to a command or policy win over them."""
    sampler: str = "fast"
    """The sampler preset (configs/sampler) this model predicts frames with wherever a command or policy leaves
    the sampler unset; `sampler=<preset>` or `sampler.<field>=...` on a command line wins over it."""
    max_context_tokens: int | None = None
    """Most tokens one context may hold (cache plus new tokens); a longer prompt or history fails at once with
    an error. None: what fits in half the device's free memory at load time (keys/values of every layer plus one
    layer's activations per token; worldbagel/inference/context_limit.py). Rope positions are bounded by the
    model's max_position_embeddings as well."""
    quantize: str = "none"
    """Weight-only quantisation of the LLM experts' linear layers after loading: none, int8 (torchao; CPU and
    CUDA) or nf4 (bitsandbytes; CUDA only). `worldbagel info DIR plan=true` shows the bytes each needs."""
    tensor_parallel: int = 1
    """Split the LLM experts' attention heads and MLPs over this many ranks, for cards too small for one copy
    (launch with torchrun --nproc_per_node N; worldbagel/model/tensor_parallel.py); 1 = one process."""
    actions: list[str] | None = None
    """The action texts the model was trained on (an env's `action_names`, in action order). World models built
    from this config without an env (e.g. `worldbagel predict`) check action text against them, as `imagine`
    does with its env's codec; None accepts any non-empty text."""

    def __post_init__(self) -> None:
        self.quantize = check_mode(self.quantize)
        if self.tensor_parallel < 1:
            raise bad_argument(
                "model.tensor_parallel",
                self.tensor_parallel,
                "use 1 (one process) or the number of torchrun ranks",
            )


def _preset(group: str, name: str) -> dict[str, Any]:
    root = resources.files("worldbagel.configs") / group
    path = root / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))
        raise bad_argument(group, name, f"use one of the {group} presets {options} or a mapping of fields")
    return dict(OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True))


def _resolve(group: str, schema: type, value: Any) -> Any:
    """preset name | mapping | dataclass instance | None -> an instance of `schema`."""
    if isinstance(value, schema):
        return value
    if value is None:
        value = {}
    if isinstance(value, str):
        value = {"name": value} if group == "model" else _preset(group, value)
    elif is_dataclass(value):
        value = asdict(value)
    if not isinstance(value, Mapping):
        raise bad_argument(
            group, value, f"give a {group} preset name, a mapping of fields or a {schema.__name__}"
        )
    value = dict(value)
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(value) - known - {"preset"})
    if unknown:
        raise bad_argument(group, value, f"unknown {group} fields {unknown}; known: {sorted(known)}")
    base: dict[str, Any] = {}
    preset = value.pop("preset", None) or (value.get("name") if group == "model" else None)
    if preset:
        base = _preset(group, str(preset))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), base, value)
        # OmegaConf does not let a preset's "???" overwrite a default, so look for it in the preset itself
        missing = sorted(k for k, v in base.items() if v == "???" and value.get(k, "???") == "???")
        if missing:
            fix = f"set {', '.join(f'{group}.{k}' for k in missing)}"
            raise bad_argument(group, value, f"incomplete {group} config (preset {preset!r}): {fix}")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise bad_argument(group, value, f"invalid {group} config: {exc}") from None


def model_config(model: str | Mapping | ModelConfig | None = None) -> ModelConfig:
    """A ModelConfig from a preset name ('gridworld', 'tiny', ...), a mapping merged over its preset, or None
    (the default: the gridworld model shipped in the package, with its preset's image sizes and world options)."""
    if model is None:
        model = ModelConfig().name  # the default model's preset, not the bare dataclass (1024 px transforms)
    return _resolve("model", ModelConfig, model)


def sampler_config(sampler: str | Mapping | SamplerConfig | None = "fast") -> SamplerConfig:
    """A SamplerConfig from a sampler preset name ('fast', 'release'), a mapping over the SamplerConfig
    defaults (with an optional 'preset' key), or a SamplerConfig (checked and returned as is)."""
    if isinstance(sampler, SamplerConfig):
        sampler.check()  # its fields may have been edited since it was built
        return sampler
    return _resolve("sampler", SamplerConfig, sampler)


def _key(cfg: ModelConfig) -> tuple:
    return (
        cfg.name,
        cfg.path,
        cfg.dtype,
        cfg.device,
        tuple(cfg.vae_image_size),
        tuple(cfg.vit_image_size),
        cfg.max_context_tokens,
        cfg.quantize,
        cfg.tensor_parallel,
    )


def load_pipeline(model: str | Mapping | ModelConfig | None = None) -> BagelPipeline:
    """Load (or reuse) the BagelPipeline of a model config."""
    cfg = model_config(model)
    key = _key(cfg)
    if key not in _PIPELINES:
        logger.info("loading model %s from %s", cfg.name, cfg.path or "the package")
        _PIPELINES[key] = BagelPipeline.from_config(cfg)
    return _PIPELINES[key]


def clear_pipeline_cache() -> None:
    """Forget every cached pipeline (frees their memory once nothing else holds them)."""
    _PIPELINES.clear()


def load_world_model(
    model: str | Mapping | ModelConfig | None = None,
    sampler: str | Mapping | SamplerConfig | None = None,
    codec: ActionCodec | None = None,
    world: Mapping | WorldModelConfig | None = None,
    pipe: BagelPipeline | None = None,
) -> WorldModel:
    """A WorldModel on `pipe` (or the pipeline of `model`), sampling with `sampler` (None: the model's own
    preset, `ModelConfig.sampler`, e.g. the shipped gridworld model's 4-step unguided `gridworld` preset).

    `world` holds the other WorldModelConfig fields (max_history_frames, use_vit, reencode, image_cfg,
    window_slack) as a mapping or a full WorldModelConfig (whose own sampler then wins over `sampler`). A
    mapping is merged over the model's own defaults (`ModelConfig.world`, e.g. the shipped gridworld
    model keeps one frame of history, as it was trained); entries whose value is None are ignored.
    `codec` None: a codec of the model's own action texts (`ModelConfig.actions`) when it names them.
    """
    # the model's own defaults; a bare pipe (no model config) gets the dataclass's (no world options, `fast`)
    own = model_config(model) if pipe is None or model is not None else ModelConfig()
    if codec is None and own.actions:  # the model's own action vocabulary checks action text
        codec = codec_for_names(own.actions)
    if isinstance(world, WorldModelConfig):
        config = world
    else:
        defaults = dict(own.world)
        if sampler is None:
            sampler = own.sampler
        options = {**defaults, **{k: v for k, v in dict(world or {}).items() if v is not None}}
        known = {f.name for f in fields(WorldModelConfig)} - {"sampler"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise bad_argument(
                "world", options, f"unknown world-model fields {unknown}; known: {sorted(known)}"
            )
        config = WorldModelConfig(sampler=sampler_config(sampler), **options)
    return WorldModel(pipe if pipe is not None else load_pipeline(model), codec, config)
