"""Which Bagel weights train: the paper's stages and the freezing options (spec 6.6).

stage=full    every weight trains except the frozen ones below (the sin-cos position tables train only with
              train_pos_embed, from sin-cos or, with pos_embed_init=random, from random rows; the
              autoencoder is a separate, always frozen module)
stage=align   only the ViT -> LLM connector trains (the paper's alignment stage)
freeze_llm    the whole language model is frozen
freeze_vit    the SigLIP tower is frozen
freeze_und    the understanding path is frozen (und expert, embeddings, lm_head, final und norm, ViT,
              connector): only the generation expert (`*_moe_gen`) and the generation heads
              (time_embedder, vae2llm, llm2vae) train; the model also detaches und rows in its forward
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from worldbagel.errors import bad_argument
from worldbagel.train.options import TrainConfig

logger = logging.getLogger(__name__)

GEN_HEADS = ("time_embedder.", "vae2llm.", "llm2vae.")
POS_TABLES = ("latent_pos_embed.", "vit_pos_embed.")


def trainable(name: str, cfg: TrainConfig) -> bool:
    """Whether Bagel parameter `name` trains under `cfg` (before LoRA)."""
    if name.startswith(POS_TABLES):
        und_table = name.startswith("vit_pos_embed.")
        return cfg.train_pos_embed and cfg.stage != "align" and not (cfg.freeze_und and und_table)
    if cfg.stage == "align":
        return name.startswith("connector.")
    if cfg.freeze_llm and name.startswith("language_model."):
        return False
    if cfg.freeze_vit and name.startswith("vit_model."):
        return False
    if cfg.freeze_und:
        if name.startswith("language_model."):
            return "moe_gen" in name
        return name.startswith(GEN_HEADS)
    return True


def apply_stage(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Set `requires_grad` on every parameter of a Bagel model; returns the trainable names."""
    config = getattr(model, "config", None)
    if cfg.stage == "align" and not getattr(config, "visual_und", True):
        raise bad_argument(
            "train.stage", "align", "the model has no ViT/connector (visual_und=false); use full"
        )
    if cfg.freeze_und and not config.llm.use_moe:
        raise bad_argument(
            "train.freeze_und", True, f"needs generation twins; layer_module={config.llm.layer_module}"
        )
    if config.llm.freeze_und != cfg.freeze_und:
        # the forward reads model.config.llm.freeze_und (detach und rows); never mutate a shared config
        model.config = copy.deepcopy(config)
        model.config.llm.freeze_und = cfg.freeze_und
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name, cfg))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise bad_argument("train", f"stage={cfg.stage}", "these freezing options leave nothing to train")
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "stage %s: %d tensors / %.2f M of %.2f M parameters train",
        cfg.stage,
        len(names),
        count / 1e6,
        total / 1e6,
    )
    return names


def init_position_tables(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Apply `cfg.pos_embed_init` to the position tables that train (call after `apply_stage`); returns the
    refilled table names."""
    if cfg.pos_embed_init not in ("sincos", "random"):
        raise bad_argument("train.pos_embed_init", cfg.pos_embed_init, "use sincos or random")
    if cfg.pos_embed_init == "sincos":
        return []
    if not cfg.train_pos_embed:
        raise bad_argument(
            "train.pos_embed_init",
            cfg.pos_embed_init,
            "random tables must train: also pass train.train_pos_embed=true (or keep pos_embed_init=sincos)",
        )
    generator = torch.Generator().manual_seed(cfg.seed + 7919)
    done = []
    for prefix in POS_TABLES:
        table = getattr(model, prefix.rstrip("."), None)
        if table is not None and table.pos_embed.requires_grad:
            table.reset_random(generator)
            done.append(prefix + "pos_embed")
    logger.info("position tables restarted as random rows: %s", ", ".join(done) or "none")
    return done


def init_qk_norm_gains(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Apply `cfg.qk_norm_gain_init`: fill every LLM q/k-norm weight with it; returns the names filled."""
    gain = cfg.qk_norm_gain_init
    if gain is None:
        return []
    if not isinstance(gain, (int, float)) or not gain > 0:
        raise bad_argument("train.qk_norm_gain_init", gain, "use a positive number (e.g. 1.75) or null")
    gains = {
        name: p
        for name, p in model.named_parameters()
        if name.startswith("language_model.") and name.split(".")[-2].startswith(("q_norm", "k_norm"))
    }
    if not gains:
        raise bad_argument(
            "train.qk_norm_gain_init", gain, "the model has no q/k norms (llm qk_norm=false); leave it null"
        )
    with torch.no_grad():
        for p in gains.values():
            p.fill_(float(gain))
    logger.info("q/k-norm gains set to %g in %d tensors", gain, len(gains))
    return list(gains)
