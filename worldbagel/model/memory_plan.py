"""A memory plan: the bytes each part of a BAGEL setting needs, and which common GPUs hold it.

    plan = memory_plan(BagelConfig.from_folder("BAGEL-7B-MoT"), PlanOptions(height=512, width=512, gpus=8))
    plan.setting("int8").total              # bytes per GPU; settings: bf16, int8, nf4, bf16 TP2,
    plan.setting("LoRA + AC").fits(24)      # LoRA, LoRA + AC, full, full + AC (AC: activation checkpointing)

Parameters are counted on the model built on the meta device (no memory), so the plan follows the code: the
release config gives 14,607,260,128 Bagel parameters, 1223 tensors. Settings:

* Inference in bf16, int8 and nf4 (weight-only quantisation of the decoder layers' linears, both experts;
  embeddings, lm_head, norms, ViT and heads stay bf16; `worldbagel.model.quantize`), and bf16 split over
  `tensor_parallel` ranks (`worldbagel.model.tensor_parallel`: the decoder linears and the KV cache are
  split, the rest is replicated). Parts: weights, the autoencoder, the KV cache of the three CFG contexts of
  a `context_frames`-frame history (official interleave_inference: the main context, the text-dropped one, a
  copy of the main one before its last text, and the image-dropped one, texts only; MoT experts share one
  attention, so one K/V per token: 2 x layers x kv_heads x head_dim x bytes), and one denoising step with
  the CFG branches batched (`activation_memory.denoise_step_bytes`).
* LoRA and full fine-tuning per rank under FSDP2 over `gpus` ranks, without and with per-layer activation
  checkpointing. Full: fp32 master weights, fp32 gradients, AdamW's two fp32 moments and an fp32 EMA, all
  sharded; the gathered bf16 units (the root unit, which holds the token embedding, for the whole step, two
  decoder layers or lm_head at a time) and one unit's unsharded fp32 gradient. LoRA: the frozen base in
  bf16, sharded and gathered the same way; the adapters with their gradients, moments and EMA in fp32.
  Activations: `activation_memory.training_activation_bytes` for a pack of `token_budget` tokens.

A setting fits a card when its total plus `GPU_RESERVED` (CUDA context, cuBLAS/NCCL workspaces) and
`FRAGMENTATION` of the total stay within the card's memory (nominal sizes taken as GiB, as the cards report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from worldbagel.errors import bad_argument
from worldbagel.model.activation_memory import (
    ATTENTION_BACKENDS,
    Shapes,
    TrainingTokens,
    denoise_step_bytes,
    training_activation_bytes,
)
from worldbagel.model.bagel import Bagel
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.transforms import target_size
from worldbagel.model.vae import flux_key_shapes

GPU_SIZES_GB = (24, 40, 48, 80, 141)
"""Common cards: 24 GB (RTX 4090 / A10G-class), 40 and 80 GB (A100 / H100), 48 GB (A6000 / L40S), 141 GB (H200)."""
GPU_RESERVED = 1 << 30
"""Bytes a CUDA process cannot use for tensors (context, cuBLAS and NCCL workspaces)."""
FRAGMENTATION = 0.05
"""Share of the total added for the caching allocator's fragmentation."""
PRECISIONS = ("bf16", "int8", "nf4")
NF4_BLOCK = 64
"""bitsandbytes' nf4 block size: one absmax per 64 weights (double-quantised to 8 bits, with one fp32 absmax
per 256 blocks)."""


@dataclass
class PlanOptions:
    """What to plan for (the `memory.*` options of `worldbagel info DIR plan=true`)."""

    height: int = 512
    """Frame height in pixels (snapped to the latent stride)."""
    width: int = 512
    """Frame width in pixels."""
    context_frames: int = 4
    """Frames in the history before a prediction (each: VAE tokens, ViT tokens, an action text)."""
    text_tokens: int = 8
    """Tokens of the text after each frame (an action), without its two framing tokens."""
    vit: bool = True
    """Context frames also enter as ViT tokens (the release does)."""
    vit_image_size: list[int] = field(default_factory=lambda: [980, 224, 14])
    """The ViT transform (max side, min side, stride): the ViT sees the frame resized by its rule."""
    cfg_branches: int = 3
    """Branches of one denoising step: 3 (text and image CFG), 2 (text CFG) or 1 (none)."""
    tensor_parallel: int = 2
    """Ranks of the tensor-parallel inference row (1: no such row)."""
    gpus: int = 8
    """Ranks that FSDP shards training state over."""
    token_budget: int = 16384
    """Tokens of one packed training batch per rank."""
    sample_tokens: int | None = None
    """Tokens of one sample in the pack (attention memory on the CPU path); None = the whole pack."""
    lora_rank: int = 16
    """Adapter rank of the LoRA rows (the trainer's default targets, see `ParamCounts.lora`)."""
    attention: str = "flex"
    """Attention backend the activations assume: flex (CUDA) or sdpa (the CPU path)."""
    act_bytes: int = 2
    """Bytes per activation element (2: bf16 on GPU; 4: fp32, the CPU default)."""

    def check(self) -> None:
        for name in ("height", "width", "gpus", "token_budget", "lora_rank", "tensor_parallel"):
            if int(getattr(self, name)) < 1:
                raise bad_argument(name, getattr(self, name), "must be a positive integer")
        if self.context_frames < 0 or self.text_tokens < 0:
            raise bad_argument(
                "context_frames/text_tokens", (self.context_frames, self.text_tokens), "use >= 0"
            )
        if self.cfg_branches not in (1, 2, 3):
            raise bad_argument("cfg_branches", self.cfg_branches, "use 1, 2 or 3")
        if self.attention not in ATTENTION_BACKENDS:
            raise bad_argument("attention", self.attention, f"use one of {ATTENTION_BACKENDS}")
        if len(self.vit_image_size) != 3:
            raise bad_argument("vit_image_size", self.vit_image_size, "give [max side, min side, stride]")
        if self.act_bytes not in (2, 4):
            raise bad_argument("act_bytes", self.act_bytes, "use 2 (bf16/fp16) or 4 (fp32)")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a Bagel by how they are stored and sharded (counted on the meta device)."""

    total: int
    """Every Bagel parameter (ema.safetensors)."""
    tensors: int
    """Bagel parameter tensors."""
    quant_weights: int
    """Weight elements of the decoder layers' linears (both experts): what int8 / nf4 quantise."""
    quant_rows: int
    """Output rows of those linears (one int8 scale and zero point per row)."""
    quant_sizes: tuple[int, ...]
    """Weight elements of each of those linears."""
    root: int
    """Parameters FSDP keeps in the root unit (embeddings, connector, position tables, heads, norms)."""
    largest_unit: int
    """The largest FSDP unit besides the root (a decoder layer or lm_head)."""
    lora: int
    """Adapter parameters at rank 1 on the trainer's default targets (both experts' q/k/v/o, and the ViT's
    q/k/v, whose names match too); scale by the rank."""
    vae: int
    """FLUX autoencoder parameters (ae.safetensors)."""

    @property
    def dense(self) -> int:
        """Parameters int8 / nf4 leave in bf16."""
        return self.total - self.quant_weights


def count_params(config: BagelConfig) -> ParamCounts:
    """Count parameters on a meta-device Bagel of `config` (no memory is allocated)."""
    with torch.device("meta"):
        model = Bagel(config)
    layers = model.language_model.model.layers
    quant = [m for m in layers.modules() if isinstance(m, nn.Linear)]
    lora_names = {f"{p}{s}" for p in ("q_proj", "k_proj", "v_proj", "o_proj") for s in ("", "_moe_gen")}
    lora = sum(  # peft matches the last name component: the ViT's q/k/v_proj get adapters too
        m.in_features + m.out_features
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in lora_names
    )
    units = [*layers, model.language_model.lm_head]
    if hasattr(model, "vit_model"):
        units += list(model.vit_model.vision_model.encoder.layers)
    if hasattr(model, "llm2vae"):
        units.append(model.llm2vae)
    unit_params = [sum(p.numel() for p in u.parameters()) for u in units]
    total = sum(p.numel() for p in model.parameters())
    return ParamCounts(
        total=total,
        tensors=len(list(model.parameters())),
        quant_weights=sum(m.weight.numel() for m in quant),
        quant_rows=sum(m.out_features for m in quant),
        quant_sizes=tuple(m.weight.numel() for m in quant),
        root=total - sum(unit_params),
        largest_unit=max(unit_params),
        lora=lora,
        vae=sum(math.prod(s) for s in flux_key_shapes(config.vae).values()),
    )


def nf4_bytes(elements: int) -> int:
    """Bytes bitsandbytes stores for an nf4 weight of `elements` values (double-quantised absmax)."""
    blocks = -(-elements // NF4_BLOCK)
    return -(-elements // 2) + blocks + 4 * -(-blocks // 256)


def weight_bytes(counts: ParamCounts, precision: str, dense_bytes: int = 2) -> int:
    """Bytes of the Bagel weights in `precision` (fp32, bf16, int8, nf4); int8 and nf4 keep the rest in
    `dense_bytes` per parameter. int8 is torchao's weight-only layout: int8 values, an fp32 scale and an int8
    zero point per output row."""
    if precision == "fp32":
        return 4 * counts.total
    if precision == "bf16":
        return 2 * counts.total
    if precision == "int8":
        return dense_bytes * counts.dense + counts.quant_weights + 5 * counts.quant_rows
    if precision == "nf4":
        return dense_bytes * counts.dense + sum(nf4_bytes(n) for n in counts.quant_sizes)
    raise bad_argument("precision", precision, f"use fp32 or one of {PRECISIONS}")


@dataclass(frozen=True)
class FrameTokens:
    """LLM tokens one context frame adds."""

    vae: int
    """Latent tokens and the two image markers."""
    vit: int
    """ViT patches and the two image markers (0 without ViT)."""
    text: int
    """The text after the frame, framing included."""
    latent_grid: tuple[int, int]
    vit_grid: tuple[int, int]

    @property
    def total(self) -> int:
        return self.vae + self.vit + self.text


def frame_tokens(config: BagelConfig, options: PlanOptions) -> FrameTokens:
    s = config.latent_downsample
    h, w = max(s, options.height // s * s), max(s, options.width // s * s)
    grid = (h // s, w // s)
    vmax, vmin, vstride = options.vit_image_size
    vh, vw = target_size(h, w, vmax, vmin, vstride)
    vgrid = (vh // vstride, vw // vstride) if options.vit else (0, 0)
    return FrameTokens(
        vae=grid[0] * grid[1] + 2,
        vit=vgrid[0] * vgrid[1] + 2 if options.vit else 0,
        text=options.text_tokens + 2,
        latent_grid=grid,
        vit_grid=vgrid,
    )


def kv_bytes_per_token(config: BagelConfig, act_bytes: int = 2) -> int:
    """Cached keys and values of one token in every layer (one K/V per token: the experts share attention)."""
    llm = config.llm
    return 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * act_bytes


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int


@dataclass(frozen=True)
class Setting:
    """One way to run the model and the bytes each of its parts needs (per GPU)."""

    name: str
    kind: str
    """inference or training."""
    parts: tuple[Part, ...]

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)

    def part(self, name: str) -> int:
        return sum(p.bytes for p in self.parts if p.name == name)

    def fits(self, gb: int) -> bool:
        """True when this setting fits a card of `gb` GiB (see the module docstring)."""
        return self.total * (1 + FRAGMENTATION) + GPU_RESERVED <= gb * (1 << 30)

    @property
    def fitting(self) -> dict[int, bool]:
        return {gb: self.fits(gb) for gb in GPU_SIZES_GB}


@dataclass(frozen=True)
class MemoryPlan:
    config: BagelConfig
    options: PlanOptions
    params: ParamCounts
    frame: FrameTokens
    kv_per_token: int
    """Bytes of one cached token (in the activation dtype)."""
    context_tokens: int
    """Tokens of the main context (`context_frames` frames)."""
    settings: tuple[Setting, ...] = field(default_factory=tuple)

    @property
    def kv_per_frame(self) -> int:
        return self.kv_per_token * self.frame.total

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"no setting {name!r}; settings: {[s.name for s in self.settings]}")


def cfg_contexts(frame: FrameTokens, frames: int, branches: int) -> list[int]:
    """Cached tokens of each CFG branch's context (official interleave_inference): main, text-dropped (the
    main one before its last text), image-dropped (texts only)."""
    main = frames * frame.total
    out = [main, max(main - frame.text, 0), frames * frame.text]
    return out[:branches]


def _inference_settings(plan: MemoryPlan) -> list[Setting]:
    o, cfg, counts = plan.options, plan.config, plan.params
    s = Shapes.of(cfg)
    pasts = cfg_contexts(plan.frame, o.context_frames, o.cfg_branches)
    queries = [plan.frame.vae] * len(pasts)
    kv = sum(pasts) * plan.kv_per_token
    act = denoise_step_bytes(s, queries, pasts, o.act_bytes, o.act_bytes, o.attention)
    vae = 2 * counts.vae
    out = []
    for precision in PRECISIONS:
        parts = (
            Part("weights", weight_bytes(counts, precision)),
            Part("autoencoder", vae),
            Part("KV cache", kv),
            Part("activations", act),
        )
        out.append(Setting(precision, "inference", parts))
    tp = o.tensor_parallel
    if tp > 1 and cfg.llm.num_key_value_heads % tp == 0:
        split = 2 * counts.quant_weights // tp + 2 * (counts.total - counts.quant_weights)
        parts = (
            Part("weights", split),
            Part("autoencoder", vae),
            Part("KV cache", kv // tp),
            Part("activations", act),  # residual rows are replicated; the split heads are the smaller part
        )
        out.append(Setting(f"bf16 TP{tp}", "inference", parts))
    return out


def _training_tokens(plan: MemoryPlan) -> TrainingTokens:
    o, f = plan.options, plan.frame
    n = o.token_budget
    return TrainingTokens(
        tokens=n,
        sample_tokens=min(o.sample_tokens or n, n),
        vit_tokens=n * f.vit // max(f.total, 1),
        vit_image_tokens=f.vit,
        ce_tokens=n * f.text // max(f.total, 1),
    )


def _training_settings(plan: MemoryPlan) -> list[Setting]:
    o, counts = plan.options, plan.params
    s = Shapes.of(plan.config)
    t = _training_tokens(plan)
    g = o.gpus
    gathered = 2 * (counts.root + 2 * counts.largest_unit) if g > 1 else 0
    lora_params = counts.lora * o.lora_rank
    out = []
    for lora in (True, False):
        for checkpointing in (False, True):
            act = training_activation_bytes(
                s, t, o.act_bytes, o.act_bytes, lora, o.lora_rank, checkpointing, o.attention
            )
            if lora:
                parts = (
                    Part("weights", -(-2 * counts.total // g) + gathered),
                    Part("gradients", -(-4 * lora_params // g)),
                    Part("optimizer", -(-8 * lora_params // g)),
                    Part("EMA", -(-4 * lora_params // g)),
                    Part("activations", act),
                )
                name = "LoRA"
            else:
                unit_grad = 4 * counts.largest_unit if g > 1 else 0
                parts = (
                    Part("weights", -(-4 * counts.total // g) + gathered),
                    Part("gradients", -(-4 * counts.total // g) + unit_grad),
                    Part("optimizer", -(-8 * counts.total // g)),
                    Part("EMA", -(-4 * counts.total // g)),
                    Part("activations", act),
                )
                name = "full"
            out.append(Setting(f"{name} + AC" if checkpointing else name, "training", parts))
    return out


def memory_plan(config: BagelConfig, options: PlanOptions | None = None) -> MemoryPlan:
    """The memory plan of `config` under `options` (see the module docstring)."""
    options = options or PlanOptions()
    options.check()
    frame = frame_tokens(config, options)
    plan = MemoryPlan(
        config=config,
        options=options,
        params=count_params(config),
        frame=frame,
        kv_per_token=kv_bytes_per_token(config, options.act_bytes),
        context_tokens=options.context_frames * frame.total,
    )
    settings = tuple(_inference_settings(plan) + _training_settings(plan))
    return MemoryPlan(**{**plan.__dict__, "settings": settings})
