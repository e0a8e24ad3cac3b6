"""`worldbagel finetune`: train a BAGEL folder or a from-scratch preset on episodes (a trajectory folder, NWM,
videos or LeRobot: `source.format`, worldbagel.data.episode_source).

Single process: `worldbagel finetune model=scratch-small vae=runs/vae data=runs/grid out=runs/wm`.
Several processes (FSDP2): `torchrun --nproc_per_node N -m worldbagel.cli finetune ...`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from worldbagel.config import FinetuneConfig
from worldbagel.data.episode_source import load_episodes
from worldbagel.errors import bad_argument
from worldbagel.inference.pipeline import shipped_model_dir
from worldbagel.model import parallelize as par
from worldbagel.model.bagel_folder import load_bagel
from worldbagel.model.configuration import VAE_CONFIG, read_vae_config
from worldbagel.model.hub import resolve_model_folder
from worldbagel.model.sequence import SpecialIds
from worldbagel.model.transforms import ImageTransform
from worldbagel.model.vae import load_vae
from worldbagel.run_folder import run_folder
from worldbagel.tracking import require_backend
from worldbagel.train.data_stream import TrainingData
from worldbagel.train.latent_cache import FrameEncoder
from worldbagel.train.loop import Trainer
from worldbagel.train.lora import base_dtype
from worldbagel.train.presets import PRESETS, build_preset
from worldbagel.train.preview import FramePreview
from worldbagel.train.validation import Validation, heldout_data
from worldbagel.world_model_loader import sampler_config as generation_config

logger = logging.getLogger(__name__)


def _vae_config(folder: str):
    vae = read_vae_config(folder)
    if vae is None:
        raise bad_argument(
            "vae", folder, f"needs {VAE_CONFIG} and ae.safetensors (the output of worldbagel train-vae)"
        )
    return vae


def load_model(cfg: FinetuneConfig, device: torch.device):
    """(model, vae, tokenizer) from a folder or a from-scratch preset."""
    m = cfg.model
    if m.name in PRESETS and m.path is None:
        vae = None
        if cfg.vae:
            vae = load_vae(cfg.vae, _vae_config(cfg.vae), device=device)
        fresh = build_preset(m.name, seed=cfg.train.seed, vae=vae)
        return fresh.model.to(device), fresh.vae.to(device), fresh.tokenizer

    path = resolve_model_folder(m.path) if m.path else shipped_model_dir(m.name)
    # trainable weights stay fp32 unless model.dtype says otherwise (CUDA computes in bf16 via autocast); under
    # LoRA the frozen base is read straight into train.lora.base_dtype (bf16 on CUDA: no fp32 copy of the base),
    # and the Trainer turns the adapters and train_modules to fp32
    dtype = m.dtype or "float32"
    if m.dtype is None and cfg.train.lora.enabled:
        dtype = base_dtype(cfg.train.lora.base_dtype, device)
    loaded = load_bagel(path, dtype=dtype, device=device)
    return loaded.model, loaded.vae, loaded.tokenizer


def split_heldout(cfg: FinetuneConfig, episodes: list) -> tuple[list, list]:
    """(training episodes, held-out episodes for the validation loss): `val_data`'s episodes, or the last
    `val_fraction` of `episodes` (at least one, and at least one left to train on), or none."""
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise bad_argument(
            "val_fraction", cfg.val_fraction, "use a fraction in [0, 1) (0: no held-out episodes)"
        )
    if cfg.val_data:
        heldout = load_episodes(cfg.val_data, cfg.source, name="val_data")
        if not heldout:
            raise bad_argument("val_data", cfg.val_data, "holds no valid episode (see the warnings above)")
        return episodes, heldout
    if cfg.val_fraction == 0.0:
        return episodes, []
    if len(episodes) < 2:
        raise bad_argument(
            "val_fraction", cfg.val_fraction, f"data has {len(episodes)} episode: give val_data=DIR instead"
        )
    n = min(max(1, round(cfg.val_fraction * len(episodes))), len(episodes) - 1)
    return episodes[:-n], episodes[-n:]


def _preview(cfg: FinetuneConfig, episodes: list):
    """The predicted-frame preview the tracker logs (None when it records no media), drawn with the model's
    own sampler preset (`model.sampler`) and world-model options (`model.world`)."""
    t = cfg.tracker
    if t.backend == "none" or not t.media_every or not (t.media_samples or t.media_frames):
        return None
    return FramePreview(
        episodes,
        cfg.plan,
        t.media_samples,
        t.media_frames,
        ImageTransform(*cfg.model.vae_image_size),
        ImageTransform(*cfg.model.vit_image_size) if cfg.plan.vit else None,
        sampler=generation_config(cfg.model.sampler),
        world=cfg.model.world,
        seed=cfg.train.seed,
    )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def run(cfg: FinetuneConfig, console: Console) -> int:
    # a missing tensorboard / wandb package stops the run before any data or weights load
    require_backend(cfg.tracker)
    env = par.init_distributed(cfg.model.device)
    try:
        torch.manual_seed(cfg.train.seed)
        dataset = load_episodes(cfg.data, cfg.source, splits=cfg.splits, name="data")
        if len(dataset) == 0:
            raise bad_argument("data", cfg.data, "holds no valid episode (see the warnings above)")
        dataset, heldout = split_heldout(cfg, dataset)
        model, vae, tokenizer = load_model(cfg, env.device)
        mcfg = model.config
        if cfg.plan.vit and not mcfg.visual_und:
            raise bad_argument(
                "plan.vit", True, "the model has no ViT (visual_und=false); set plan.vit=false"
            )
        encoder = FrameEncoder(
            vae,
            ImageTransform(*cfg.model.vae_image_size),
            ImageTransform(*cfg.model.vit_image_size) if cfg.plan.vit else None,
            latent_patch_size=mcfg.latent_patch_size,
            vit_patch_size=mcfg.vit.patch_size,
            sample_posterior=cfg.sample_posterior,
            cache_dir=cfg.latent_cache or Path(cfg.out) / "latent_cache",
        )
        s = tokenizer.special
        data = TrainingData(
            dataset,
            encoder,
            tokenizer.encode,
            SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
            cfg.plan,
            cfg.dropout,
            cfg.packing,
            seed=cfg.train.seed,
            vit_max_side=mcfg.vit_max_num_patch_per_side,
            latent_max_side=mcfg.max_latent_size,
        )
        validation = None
        if heldout:
            val = heldout_data(heldout, data, tokenizer.encode)
            validation = Validation(val, cfg.train.val_packs, seed=cfg.train.seed)
        trainer = Trainer(
            model,
            data,
            cfg.train,
            cfg.out,
            vae,
            tokenizer,
            env,
            config_snapshot=asdict(cfg),
            tracking=cfg.tracker,
            validation=validation,
            preview=None if env.distributed else _preview(cfg, heldout or dataset),
        )
        if not env.is_main:
            trainer.train()
            return 0
        held = f", {len(heldout)} held out" if heldout else ""
        console.print(
            f"finetune [bold]{cfg.model.path or cfg.model.name}[/bold] on {len(dataset)} episodes "
            f"({len(data.plans)} samples{held}) -> {cfg.out}"
        )
        with run_folder(cfg.out, cfg, "finetune"), _progress(console) as progress:  # config.yaml saved
            task = progress.add_task("train", total=cfg.train.steps, completed=0, stats="")
            last_val = [""]  # the latest validation loss stays on the bar between evaluations

            def on_step(m: dict) -> None:
                stats = (
                    f"loss {m['loss']:.4f} ce {m['loss_ce']:.3f} mse {m['loss_mse']:.4f} "
                    f"{m['tokens_per_s']:.0f} tok/s lr {m['lr']:.1e}"
                )
                if "val_loss" in m:
                    last_val[0] = f" val {m['val_loss']:.4f}"
                stats += last_val[0]
                progress.update(task, completed=m["step"], stats=stats)

            result = trainer.train(on_step)
        table = Table(title=f"finetune: {result.steps} steps")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k in ("loss", "loss_ce", "loss_mse", "val_loss", "grad_norm", "tokens_per_s"):
            if k in result.last_metrics:
                table.add_row(k, f"{result.last_metrics[k]:.4f}")
        table.add_row("model folder", str(result.out_dir))
        table.add_row("last checkpoint", str(result.checkpoint))
        console.print(table)
        return 0
    finally:
        par.shutdown()
