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
from dataclasses import asdict, fields, is_dataclass
from typing import Any

from worldbagel.actions import ActionCodec, codec_for_names
from worldbagel.config import ModelConfig, SamplerConfig
from worldbagel.errors import bad_argument
from worldbagel.inference.generate import GenerationConfig
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.world_model import WorldModel, WorldModelConfig

__all__ = ["clear_pipeline_cache", "generation_config", "load_pipeline", "load_world_model", "model_config"]

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple, BagelPipeline] = {}


def _preset(group: str, name: str) -> dict[str, Any]:
    from importlib import resources

    from omegaconf import OmegaConf

    root = resources.files("worldbagel.configs") / group
    path = root / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))
        raise bad_argument(group, name, f"use one of the {group} presets {options} or a mapping of fields")
    return dict(OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True))


def _resolve(group: str, schema: type, value: Any) -> Any:
    """preset name | mapping | dataclass instance | None -> an instance of `schema`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

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


def generation_config(
    sampler: str | Mapping | SamplerConfig | GenerationConfig | None = "fast",
) -> GenerationConfig:
    """GenerationConfig from a sampler preset name ('fast', 'release'), a mapping over the SamplerConfig
    defaults (with an optional 'preset' key), a SamplerConfig or a GenerationConfig."""
    if isinstance(sampler, GenerationConfig):
        return sampler
    s: SamplerConfig = _resolve("sampler", SamplerConfig, sampler)
    out = GenerationConfig(
        num_steps=s.num_steps,
        shift=s.shift,
        cfg_text_scale=s.cfg_text_scale,
        cfg_img_scale=s.cfg_img_scale,
        cfg_interval=(float(s.cfg_interval[0]), float(s.cfg_interval[1])),
        cfg_renorm_type=s.cfg_renorm_type,
        cfg_renorm_min=s.cfg_renorm_min,
        batch_cfg=s.batch_cfg,
    )
    out.check()
    return out


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
    sampler: str | Mapping | SamplerConfig | GenerationConfig | None = None,
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
        config = WorldModelConfig(sampler=generation_config(sampler), **options)
    return WorldModel(pipe if pipe is not None else load_pipeline(model), codec, config)
