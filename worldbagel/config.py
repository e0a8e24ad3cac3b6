"""Dataclass schemas of every CLI command (one field docstring each), registered with Hydra's ConfigStore.

Each command's yaml in `worldbagel/configs/<command>.yaml` starts with `defaults: [schema_<command>, _self_]`,
so Hydra validates overrides against these types and `OmegaConf.to_object` turns the composed config into
the dataclass below. Nothing below the CLI sees a DictConfig.

The schemas of the config groups live with the layer that uses them and are imported here: `ModelConfig`
(worldbagel/world_model_loader.py), `SamplerConfig` (worldbagel/inference/sampler.py), the training, data,
eval and tracking options. This module imports every layer and nothing below the CLI imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from worldbagel.data.episode_source import SourceConfig
from worldbagel.data.minari_export import MinariConfig
from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
from worldbagel.eval.options import (
    ControllabilityEvalConfig,
    DatasetConfig,
    FramesEvalConfig,
    LookbackEvalConfig,
    NavigationEvalConfig,
    TextEvalConfig,
    TrajectoryEvalConfig,
)
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.model.configuration import VAEConfig
from worldbagel.model.memory_plan import PlanOptions
from worldbagel.tracking import TrackerConfig
from worldbagel.train.options import TrainConfig, VAETrainConfig
from worldbagel.world_model_loader import ModelConfig


@dataclass
class InfoConfig:
    """`worldbagel info MODEL_DIR`: describe a BAGEL model folder."""

    model_dir: str = "???"
    """Path of a model folder in the official BAGEL-7B-MoT layout (llm_config.json, ema.safetensors, ...), or a
    Hugging Face repo id found in the local Hugging Face cache."""

    weights: bool = True
    """Also read the safetensors headers to report stored dtypes and file sizes."""

    plan: bool = False
    """Also print the memory plan: bytes of weights (bf16 / int8 / nf4), KV cache, activations and training
    state, and which 24 / 40 / 48 / 80 / 141 GB cards fit each setting (worldbagel/model/memory_plan.py)."""

    memory: PlanOptions = field(default_factory=PlanOptions)
    """What the plan is for: frame size, context frames, CFG branches, tensor-parallel ranks, FSDP ranks, token
    budget, LoRA rank, attention backend and activation bytes (e.g. `memory.height=256 memory.gpus=4`)."""


@dataclass
class GenerateConfig:
    """`worldbagel generate`: text (+ optional image) in, image or text out, on any model folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to run (group `model`)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Image sampling knobs (group `sampler`)."""
    prompt: str = ""
    """The text input (instruction, action, question)."""
    image: str | None = None
    """Optional input image file (context image for editing / next-frame prediction / questions)."""
    output: str = "image"
    """What to produce: image or text."""
    think: bool = False
    """Generate a <think> ... </think> text first (official think mode)."""
    max_new_tokens: int = 256
    """Limit of generated text tokens (answers and thoughts)."""
    height: int | None = None
    """Output image height; default: the input image's (resized) height, else 512."""
    width: int | None = None
    """Output image width; default like height."""
    seed: int = 0
    """Seed of the initial noise and of text sampling."""
    out: str = "generated.png"
    """Where to write the image (png) or the text (txt; also printed)."""


@dataclass
class FinetuneConfig:
    """`worldbagel finetune model=<group option> [model.path=<folder>] data=<dataset> out=<dir>`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to train (group `model`): a BAGEL folder (model.path, or a shipped model), or a from-scratch
    preset (model=scratch-tiny / scratch-small). Its device, dtype and image transforms are used."""
    data: str = "???"
    """The training data: a trajectory folder written by `worldbagel collect`, an NWM/GNM dataset, a video
    file or folder of videos / frame folders, or a LeRobot v2 dataset (`source` says which and how to read
    it; docs/bring-your-own-data.md)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """How `data` is read: source.format (auto, trajectories, nwm, video, lerobot), frame skip and size, and
    the options of the nwm and lerobot readers."""
    out: str = "???"
    """Output folder: metrics.jsonl, checkpoints/, and the trained BAGEL folder (ema.safetensors, ...)."""
    vae: str | None = None
    """From-scratch presets only: folder with ae.safetensors + vae_config.json (from `worldbagel train-vae`);
    None = a random autoencoder (only useful for smoke tests)."""
    splits: list[str] | None = None
    """Dataset splits to train on: episodes whose split is listed (None = every episode)."""
    sample_posterior: bool = True
    """Draw VAE posterior samples for the latents (official) instead of the posterior means."""
    latent_cache: str | None = None
    """Folder for cached frame latents (reused across runs); None = <out>/latent_cache."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Sequence plan: context frames, horizon, frame skip, target mode, ViT copies, text targets."""
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    """Conditioning dropout for classifier-free guidance."""
    packing: PackingConfig = field(default_factory=PackingConfig)
    """Token budget of a packed batch."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, staging/freezing, LoRA, EMA, checkpoints, resume, validation interval."""
    val_data: str | None = None
    """Held-out episodes for the validation loss (read like `data`, with `source`); None: `val_fraction`."""
    val_fraction: float = 0.0
    """Without val_data: hold out this fraction of `data`'s episodes (the last ones, at least one) for the
    validation loss; 0 = no validation. Evaluated every `train.val_every` steps (worldbagel/train/validation.py)."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """TensorBoard / W&B: losses, predicted frames of held-out windows, the config (worldbagel/tracking.py)."""


@dataclass
class TrainVAEConfig:
    """`worldbagel train-vae data=<trajectory dir> out=<dir>`: train a small FLUX-layout autoencoder."""

    data: str = "???"
    """Trajectory folder whose frames to train on."""
    out: str = "???"
    """Output folder: ae.safetensors (FLUX layout), vae_config.json, vae_metrics.jsonl."""
    splits: list[str] | None = None
    """Dataset splits to use (None = every episode)."""
    max_frames: int | None = 20000
    """Use at most this many frames (evenly spread over the episodes)."""
    extra_data: list[str] = field(default_factory=list)
    """More trajectory folders whose frames are ALL used on top of `data`'s (not capped by max_frames), e.g.
    rare situations the autoencoder should see more often (gridworld: the agent standing on the goal)."""
    init: str | None = None
    """An autoencoder folder (ae.safetensors + vae_config.json) to start from instead of a fresh one (its config
    replaces `vae`); with `train.freeze_encoder=true` only its decoder trains."""
    success_repeat: int = 0
    """The final frame of every successful episode of `data` (the goal reached) is added this many times on top
    of the spread frames. A rare *appearance* (gridworld: the agent drawn over the goal, whose 1-pixel ring a
    64 px autoencoder drops when it sees ~1 % such frames) gets its share; 0 adds none."""
    vae: VAEConfig = field(default_factory=lambda: VAEConfig(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1))
    """Architecture (FLUX layout; downsample must be 2**(len(ch_mult)-1), widths divisible by 32)."""
    train: VAETrainConfig = field(default_factory=VAETrainConfig)
    """Optimisation."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """TensorBoard / W&B: recon / kl losses, real | reconstructed frames, the config."""


@dataclass
class EnvConfig:
    """Which environment to run (config group `env`: gridworld, gridworld_ego, miniworld, habitat, video)."""

    name: str = "gridworld"
    """Short name (informational; the yaml file of the `env` group sets it)."""
    id: str = "WorldBagel/GridWorld-v0"
    """Gymnasium id; `WorldBagel/...` ids come from worldbagel.envs, any other registered id works too."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor keyword arguments for `gymnasium.make(id, **kwargs)` (obs_size, max_steps, split, ...)."""
    fps: float | None = None
    """Video frame rate; None uses the env's metadata render_fps (else 10)."""


@dataclass
class PolicyConfig:
    """Which policy acts (config group `policy`: random, oracle, scripted; more register by name)."""

    name: str = "oracle"
    """Registered policy name (worldbagel.policies.POLICIES)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the policy's factory, e.g. `actions` for scripted."""


@dataclass
class RolloutConfig:
    """`worldbagel rollout env=gridworld policy=random episodes=3`: run episodes, write videos and metrics."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment (group `env`)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy (group `policy`)."""
    episodes: int = 3
    """Number of episodes; episode i is seeded with seed + i."""
    seed: int = 0
    """Seed of episode 0."""
    max_steps: int | None = None
    """Cap on steps per episode on top of the env's own limit (None: the env's limit)."""
    out: str | None = None
    """Run folder; None writes to runs/rollout-<timestamp>."""
    video: bool = True
    """Write an mp4 per episode."""
    gif: bool = True
    """Write a gif per episode."""
    model: ModelConfig | None = None
    """World model for world-model policies (planner, reasoning), e.g. `model=bagel-7b model.path=DIR`;
    None keeps the policy's own `policy.kwargs.model` (default: the shipped gridworld model)."""
    sampler: SamplerConfig | None = None
    """Sampling knobs for world-model policies (e.g. `sampler=fast`); None keeps `policy.kwargs.sampler`."""
    tracker: TrackerConfig = field(default_factory=lambda: TrackerConfig(media_every=1))
    """TensorBoard / W&B: per-episode return, success, SPL, length; the episode videos; the config."""


@dataclass
class CollectConfig:
    """`worldbagel collect env=gridworld policy=oracle episodes=N out=DIR`: record a trajectory dataset."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment (group `env`)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy (group `policy`)."""
    out: str = "???"
    """Dataset folder (index.json + one folder per episode); re-running with the same folder resumes."""
    episodes: int = 100
    """Total number of episodes the dataset should hold (ids ep-000000 ...)."""
    seed: int = 0
    """Episode i is seeded with seed + i, so a resumed run records the same data as an uninterrupted one."""
    split: str = "train"
    """Split name stored with each episode."""
    max_steps: int | None = None
    """Cap on steps per episode on top of the env's own limit."""
    frame_format: str = "png"
    """Frame files: png (lossless) or jpg."""
    preview: bool = False
    """Also write preview.mp4 in each episode folder."""
    workers: int = 1
    """Parallel worker processes, each with its own env (1 = in this process)."""
    annotate: str | None = None
    """Text annotator adding instructions, question/answer pairs and thoughts per step (e.g. gridworld)."""
    minari: MinariConfig = field(default_factory=MinariConfig)
    """Also write the dataset as a Minari dataset: `minari.dataset_id=namespace/name-v0` (the `minari` extra)."""
    model: ModelConfig | None = None
    """World model for world-model policies (planner, reasoning), as for rollout: `model=bagel-7b model.path=DIR`;
    None keeps the policy's own `policy.kwargs.model`."""
    sampler: SamplerConfig | None = None
    """Sampling knobs for world-model policies (e.g. `sampler=fast`); None keeps `policy.kwargs.sampler`."""


@dataclass
class PredictConfig:
    """`worldbagel predict video=CLIP frames=N [actions=[...]]`: continue a clip with the world model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The world model (group `model`; default: the gridworld model shipped in the package)."""
    sampler: SamplerConfig | None = None
    """Frame sampling knobs (group `sampler`); None = the model's own preset (`model.sampler`)."""
    video: str = "???"
    """The clip to continue: an .mp4/.gif file, a folder of png/jpg frames, or one image file."""
    frames: int | None = None
    """Frames to predict; default: one per action, else 4."""
    actions: list[str] | None = None
    """Action texts, one per predicted frame (e.g. `actions=[move up,move right]`); none: plain continuation."""
    instruction: str | None = None
    """Optional text that opens the history (e.g. the task)."""
    max_history_frames: int | None = None
    """Frames kept in the model's context window: only the clip's last this many frames are encoded and shown
    before the prediction; None: the model's default (`model.world`, else 4)."""
    seed: int = 0
    """Seed of the flow noise."""
    out: str | None = None
    """Output folder (continuation.mp4/.gif, frames/NNN.png); None: runs/predict-<timestamp>."""
    fps: float = 4.0
    """Frame rate of the written videos."""
    mp4: bool = True
    """Write continuation.mp4."""
    gif: bool = True
    """Write continuation.gif."""


@dataclass
class ReasonConfig:
    """`worldbagel reason image=FILE question=TEXT [think=true]`: ask the world model about an observation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The world model (group `model`)."""
    sampler: SamplerConfig | None = None
    """Sampling knobs (group `sampler`; unused by text answers, kept for a uniform command line)."""
    image: str = "???"
    """An image file, or a video / frame folder (every frame enters the history in order)."""
    question: str = "???"
    """The question."""
    think: bool = False
    """Think first (official thinking system prompt); the thought is printed too."""
    max_new_tokens: int = 128
    """Limit of generated tokens (thought and answer together)."""
    instruction: str | None = None
    """Optional text that opens the history."""
    max_history_frames: int | None = None
    """Frames kept in the model's context window; None: the model's default (`model.world`, else 4)."""
    out: str | None = None
    """Also write the answer (and the thought) to this text file."""


@dataclass
class ImagineConfig:
    """`worldbagel imagine env=gridworld actions=[...]`: an imagined rollout next to the real one."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The world model (group `model`)."""
    sampler: SamplerConfig | None = None
    """Frame sampling knobs (group `sampler`); None = the model's own preset (`model.sampler`)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The real environment (group `env`)."""
    actions: list[Any] | None = None
    """Actions as env action indices or action texts (`actions=[move right,move down]`); none: `steps`
    random actions seeded with `seed`."""
    steps: int = 8
    """Number of random actions when `actions` is not given."""
    seed: int = 0
    """Seed of the env reset, the random actions and the flow noise."""
    max_history_frames: int | None = None
    """Frames kept in the model's context window; None: the model's default (`model.world`, else 4)."""
    out: str | None = None
    """Output folder (imagine.mp4/.gif real | imagined, real/ and imagined/ PNGs, metrics.json);
    None: runs/imagine-<timestamp>."""
    fps: float | None = None
    """Video frame rate; None: the env's `fps` (else 4)."""
    mp4: bool = True
    """Write imagine.mp4."""
    gif: bool = True
    """Write imagine.gif."""


@dataclass
class EvalConfig:
    """`worldbagel eval [model=...] [dataset=...] [tasks=[frames,...]]`: NWM frame-prediction protocol, planning,
    Q&A; writes metrics.json, a table, metric-vs-horizon plots and a contact sheet (docs/metrics.md)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The world model under test (group `model`; default: the gridworld model shipped in the package)."""
    sampler: SamplerConfig | None = None
    """Frame sampling knobs (group `sampler`); None = the model's own preset (`model.sampler`)."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """Held-out data (group `dataset`: gridworld = held-out layouts recorded now, trajectories, nwm, video)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Env of closed-loop navigation, and of dataset.format=env (group `env`)."""
    env_split: str | None = "eval"
    """Replaces env.kwargs.split when the env's kwargs have one (GridWorld): eval = held-out layouts; None keeps it."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(name="planner"))
    """Policy of closed-loop navigation (default the world-model planner; group `policy`)."""
    tasks: list[str] | None = None
    """Any of frames, controllability, lookback, navigation, trajectory, text; None = every task the data
    supports (controllability and lookback only for episodes that replay in their env, lookback only with turn
    actions, navigation only when dataset.format=env, trajectory only for continuous actions, text only with
    Q&A annotations)."""
    world: dict[str, Any] = field(default_factory=dict)
    """World-model options (max_history_frames, use_vit, reencode, image_cfg, window_slack)."""
    frames: FramesEvalConfig = field(default_factory=FramesEvalConfig)
    """Frame prediction: horizons, modes, context, sample budget, metrics."""
    controllability: ControllabilityEvalConfig = field(default_factory=ControllabilityEvalConfig)
    """Next frame under every action vs the env's true frames."""
    lookback: LookbackEvalConfig = field(default_factory=LookbackEvalConfig)
    """Turn away and back open loop, with the model's window and with one frame of history."""
    navigation: NavigationEvalConfig = field(default_factory=NavigationEvalConfig)
    """Closed-loop episodes."""
    trajectory: TrajectoryEvalConfig = field(default_factory=TrajectoryEvalConfig)
    """Open-loop planning to goal frames (ATE/RPE)."""
    text: TextEvalConfig = field(default_factory=TextEvalConfig)
    """Q&A exact match."""
    seed: int = 0
    """Seed of the flow noise and of the planner."""
    out: str | None = None
    """Run folder; None writes to runs/eval-<timestamp>."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """TensorBoard / W&B: the headline figures, the contact sheet, the config."""


SCHEMAS: dict[str, type] = {
    "rollout": RolloutConfig,
    "collect": CollectConfig,
    "info": InfoConfig,
    "generate": GenerateConfig,
    "finetune": FinetuneConfig,
    "train-vae": TrainVAEConfig,
    "predict": PredictConfig,
    "reason": ReasonConfig,
    "imagine": ImagineConfig,
    "eval": EvalConfig,
}


def register_configs() -> None:
    """Store every schema as `schema_<command>` so command yamls can extend it."""
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"schema_{command.replace('-', '_')}", node=schema)
