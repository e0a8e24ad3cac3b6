"""Which Bagel weights train: the paper's stages and the freezing options (spec 6.6).

stage=full    every weight trains except the frozen ones below (the sin-cos position tables train only with
              train_pos_embed; the autoencoder is a separate, always frozen module)
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
