"""Training options (torch-free dataclasses, shared by the library and the CLI schemas).

Defaults follow the official `train/pretrain_unified_navit.py` (spec 6.6) where it has one: AdamW
(betas 0.9/0.95, eps 1e-15, weight decay 0), constant schedule after warmup, grad-clip 1.0, EMA 0.9999.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from worldbagel.errors import bad_argument

STAGES = ("full", "align")
SCHEDULES = ("constant", "cosine")
AMP_MODES = ("auto", "bf16", "none")

# The choices below are `Literal` aliases for code; the dataclass fields holding them are typed `str` because
# OmegaConf (the Hydra schemas) rejects `Literal` annotations, and `__post_init__` checks the value instead.
LossReduction = Literal["per_microbatch", "pooled"]
"""How the token losses of one optimizer step's micro-batches (gradient accumulation) are combined:

per_microbatch  as the official loop (`train/pretrain_unified_navit.py`): micro-batch k's loss is its token sum
                over the token count of micro-batch k on all ranks (each rank multiplies by world_size, the
                data-parallel gradient is the mean over ranks), divided by grad_accum: the step loss is the
                mean of the micro-batch losses, and a micro-batch with few CE tokens weighs as much as one with
                many.
pooled          every CE / MSE token of the step, over all micro-batches and ranks, counts the same (the sum
                over the step's tokens / their count), so a step's gradient does not depend on how its packs
                are split between ranks and accumulation (2 ranks x 1 pack == 1 rank x 2 packs).

The two agree when each rank runs one micro-batch per step (grad_accum = 1)."""
LOSS_REDUCTIONS = ("per_microbatch", "pooled")

ActivationCheckpointing = Literal["auto", "off", "full", "selective"]
"""Per decoder / ViT layer (worldbagel.model.parallelize.apply_activation_checkpointing):

off        keep every activation for backward.
full       keep only each layer's input and recompute the whole layer in backward (least memory, one extra
           forward of the layers).
selective  op-level selective checkpointing: keep the outputs of the matrix multiplications and attention
           kernels and recompute the cheap rest (norms, activations, rotary, casts) in backward.
auto       full for models of at least `AUTO_CHECKPOINT_PARAMS` parameters (BAGEL-7B-MoT: 14.6 B), else off."""
ACTIVATION_CHECKPOINTING = ("auto", "off", "full", "selective")
AUTO_CHECKPOINT_PARAMS = 1_000_000_000

LoraBaseDtype = Literal["auto", "bfloat16", "float32"]
"""dtype of the frozen base weights under LoRA: auto = bfloat16 on CUDA, float32 on CPU (CPU bf16 matmuls are
much slower than fp32 ones)."""
LORA_BASE_DTYPES = ("auto", "bfloat16", "float32")


def checkpointing_mode(mode: str, num_params: int) -> str:
    """The activation checkpointing a model of `num_params` parameters gets for `train.activation_checkpointing`:
    `mode` itself, or for auto full from `AUTO_CHECKPOINT_PARAMS` parameters up and off below."""
    if mode != "auto":
        return mode
    return "full" if num_params >= AUTO_CHECKPOINT_PARAMS else "off"


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-4
    """Peak learning rate (official pre-training 1e-4, fine-tune recipe 2e-5)."""
    min_lr: float = 1e-7
    """Final learning rate of the cosine schedule."""
    warmup_steps: int = 0
    """Linear warmup steps (official 2000)."""
    schedule: str = "constant"
    """constant or cosine (after warmup)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1e-15
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (<= 0 disables clipping; the norm is still logged)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise bad_argument("optim.schedule", self.schedule, f"use one of {SCHEDULES}")
        if self.lr <= 0:
            raise bad_argument("optim.lr", self.lr, "must be > 0")
        if len(self.betas) != 2:
            raise bad_argument("optim.betas", self.betas, "give two values, e.g. [0.9, 0.95]")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) instead of full fine-tuning."""

    enabled: bool = False
    """Train LoRA adapters on `target_modules`; every other weight is frozen (except `train_modules`)."""
    r: int = 16
    """Adapter rank."""
    alpha: float = 32.0
    """Scaling numerator (delta = alpha / r * B A)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "q_proj_moe_gen",
            "k_proj_moe_gen",
            "v_proj_moe_gen",
            "o_proj_moe_gen",
        ]
    )
    """Module names (suffixes) that get adapters: both experts' attention projections by default."""
    train_modules: list[str] = field(default_factory=list)
    """Parameter-name prefixes trained fully next to the adapters (e.g. llm2vae, vae2llm, time_embedder)."""
    merge_on_save: bool = True
    """Export merged weights (a plain BAGEL folder); otherwise the base weights + adapter_model.safetensors."""
    base_dtype: str = "auto"
    """dtype of the frozen weights (`LoraBaseDtype`): auto (bfloat16 on CUDA, float32 on CPU), bfloat16 or
    float32. The adapters and `train_modules` always train in float32 (so do the optimizer state and EMA); a
    bf16 base halves the frozen weights' memory and is not re-cast at every forward under autocast. With a
    bfloat16 base, compute runs under bf16 autocast on every device (train.amp=none is refused)."""

    def __post_init__(self) -> None:
        if self.base_dtype not in LORA_BASE_DTYPES:
            raise bad_argument("train.lora.base_dtype", self.base_dtype, f"use one of {LORA_BASE_DTYPES}")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    steps: int = 1000
    """Optimizer steps to run (in total, counting resumed ones)."""
    grad_accum: int = 1
    """Packed batches per rank per optimizer step."""
    seed: int = 0
    """Seed of data order, dropout, noise and fresh weights."""
    ce_weight: float = 1.0
    """Weight of the text cross-entropy."""
    mse_weight: float = 1.0
    """Weight of the flow-matching MSE."""
    mse_change_weight: float = 0.0
    """Extra MSE weight of target tokens that change from the previous frame (0 = official objective; 1 = the
    changed tokens weigh as much as the whole rest of the frame; see `objective.LossWeights.change`)."""
    timestep_shift: float = 1.0
    """Training timestep shift s (official script 1.0; the paper raises it to about 4 for later stages)."""
    ema_decay: float = 0.9999
    """EMA decay per step (0 disables the EMA; ema.safetensors then holds the raw weights)."""
    stage: str = "full"
    """full: train every unfrozen weight; align: train only the ViT->LLM connector."""
    freeze_llm: bool = False
    """Freeze the whole language model (both experts, embeddings, lm_head)."""
    freeze_vit: bool = False
    """Freeze the SigLIP vision tower."""
    freeze_und: bool = False
    """Freeze the understanding path (und expert, embeddings, lm_head, ViT, connector): only the generation
    expert and the generation heads train."""
    train_pos_embed: bool = False
    """Let the 2-D position tables (`latent_pos_embed`, `vit_pos_embed`) train from their sin-cos start. The
    official recipe keeps them frozen. At a small hidden size the sin-cos rows of neighbouring cells are nearly
    parallel, so a from-scratch model gets the chance to tell cells apart by training them (the gridworld
    recipe does). Never under stage=align; under freeze_und only the latent table. The saved folder keeps the
    official layout (the tables are in the state dict either way)."""
    activation_checkpointing: str = "auto"
    """Per decoder / ViT layer (`ActivationCheckpointing`): off, full (recompute each layer in backward), selective
    (keep matmul and attention outputs, recompute the rest), or auto (full for models of 1 B parameters or more,
    so BAGEL-7B-MoT; off for the small presets). Gradients are the same in every mode."""
    loss_reduction: str = "per_microbatch"
    """How micro-batches of one step combine with grad_accum > 1 (`LossReduction`): per_microbatch (the official
    loop: the mean of each micro-batch's token mean over the ranks) or pooled (one token mean over the whole
    step, independent of how the packs are split between ranks and accumulation)."""
    amp: str = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU; bf16; none."""
    log_every: int = 1
    """Write a metrics line every this many steps."""
    save_every: int = 100
    """Checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    val_every: int = 100
    """Validation loss every this many steps (and at the last step) when the run has held-out episodes
    (finetune `val_data` / `val_fraction`); the same packs, noise and timesteps every time."""
    val_packs: int = 4
    """Packed batches of held-out windows the validation loss averages over (at most; the first ones)."""
    resume: bool = False
    """Continue from the newest checkpoint in the output folder (exactly: same data, noise and RNG)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise bad_argument("train.stage", self.stage, f"use one of {STAGES}")
        if self.amp not in AMP_MODES:
            raise bad_argument("train.amp", self.amp, f"use one of {AMP_MODES}")
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise bad_argument(
                "train.activation_checkpointing",
                self.activation_checkpointing,
                f"use one of {ACTIVATION_CHECKPOINTING} (full recomputes each layer, off keeps everything)",
            )
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise bad_argument("train.loss_reduction", self.loss_reduction, f"use one of {LOSS_REDUCTIONS}")
        counts = ("steps", "grad_accum", "log_every", "save_every", "keep_checkpoints")
        for name in (*counts, "val_every", "val_packs"):
            if int(getattr(self, name)) < 1:
                raise bad_argument(f"train.{name}", getattr(self, name), "must be an integer >= 1")
        if self.mse_change_weight < 0:
            raise bad_argument("train.mse_change_weight", self.mse_change_weight, "must be >= 0 (0 = off)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad_argument("train.ema_decay", self.ema_decay, "must be in [0, 1) (0 disables the EMA)")


@dataclass
class VAETrainConfig:
    """The small autoencoder trainer (`worldbagel train-vae`)."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 16
    """Frames per step."""
    lr: float = 2e-4
    """AdamW learning rate (constant after a 5 % warmup)."""
    recon: str = "l1"
    """Reconstruction loss: l1 or mse (per pixel, images in [-1, 1])."""
    recon_weighting: str = "none"
    """none, or rarity: weight each pixel by 1 / (how often its exact colour occurs in the batch), normalised
    to mean 1, so small rare objects (a gridworld agent and goal cover ~1 % of the pixels) are not ignored."""
    rarity_radius: int = 0
    """With `rarity` weighting, each pixel takes the largest weight within this many pixels (a max filter):
    the floor around a rare object counts like the object, so the decoder cannot cheaply paint a rare colour
    there (a gridworld goal ring hallucinated around every agent once agent-on-goal frames are common)."""
    freeze_encoder: bool = False
    """Train the decoder only (with `init`): the latents, and so any world model trained on them, stay exactly
    as they were; the latent calibration is kept too."""
    kl_weight: float = 1e-4
    """Weight of the KL term (per latent element) against the per-pixel reconstruction loss."""
    image_size: int = 64
    """Frames are resized so the long side is at most this (sides snapped to 16 px)."""
    calibrate: bool = True
    """Afterwards set shift_factor / scale_factor so the scaled latents of the data have mean 0, std 1."""
    seed: int = 0
    """Seed of the init, the frame order and the posterior draws."""
    log_every: int = 50
    """Write a metrics line every this many steps."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self) -> None:
        if self.recon not in ("l1", "mse"):
            raise bad_argument("recon", self.recon, "use l1 or mse")
        if self.recon_weighting not in ("none", "rarity"):
            raise bad_argument("recon_weighting", self.recon_weighting, "use none or rarity")
        if not isinstance(self.rarity_radius, int) or self.rarity_radius < 0:
            raise bad_argument("rarity_radius", self.rarity_radius, "use a whole number of pixels >= 0")
        for name in ("steps", "batch_size", "image_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise bad_argument(name, getattr(self, name), "must be an integer >= 1")
