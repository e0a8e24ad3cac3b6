"""The Bagel module: Qwen2 MoT LLM + SigLIP ViT + connector + generation heads (spec 1.1).

Shape legend
    N   packed tokens        H   LLM hidden        Z   latent token features (p*p*Cz)
    V   vocabulary           P   ViT patch features

Child order and names are the official ones, so `state_dict()` keys equal the keys of `ema.safetensors`.
The autoencoder is a separate object (as in the official code); see `worldbagel.model.vae`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from worldbagel.model.checkpoint import load_pretrained, save_pretrained
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.heads import MLPconnector, PositionEmbedding, TimestepEmbedder
from worldbagel.model.qwen2_mot import PastKV, Qwen2ForCausalLM, Routing
from worldbagel.model.sequence import PackedSequence
from worldbagel.model.siglip_navit import SiglipVisionModel


class Bagel(nn.Module):
    """BAGEL's network for one device. Knows nothing of environments or training loops."""

    def __init__(self, config: BagelConfig):
        super().__init__()
        self.config = config
        h = config.llm.hidden_size
        self.language_model = Qwen2ForCausalLM(config.llm)
        if config.visual_gen:
            self.time_embedder = TimestepEmbedder(h)
            self.vae2llm = nn.Linear(config.patch_latent_dim, h)
            self.llm2vae = nn.Linear(h, config.patch_latent_dim)
            self.latent_pos_embed = PositionEmbedding(config.max_latent_size, h)
        if config.visual_und:
            self.vit_model = SiglipVisionModel(config.vit)
            self.connector = MLPconnector(config.vit.hidden_size, h, config.connector_act)
            self.vit_pos_embed = PositionEmbedding(config.vit_max_num_patch_per_side, h)

    # ------------------------------------------------------------------ init / IO
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh weights for training from scratch: N(0, std) linears/embeddings, unit norms,
        zero llm2vae (as the official `_init_weights`), sin-cos tables, gen twins copied from und."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif hasattr(m, "variance_epsilon"):  # RMSNorm
                nn.init.ones_(m.weight)
        if self.config.visual_gen:
            nn.init.zeros_(self.llm2vae.weight)
            nn.init.zeros_(self.llm2vae.bias)
        self.language_model.init_moe()
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Re-create non-persistent buffers and the sin-cos tables (after building on the meta device)."""
        for layer_rope in [self.language_model.model.rotary_emb]:
            layer_rope.reset_buffers()
        for table in ("latent_pos_embed", "vit_pos_embed"):
            if hasattr(self, table):
                getattr(self, table).reset_table()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None, device=None) -> Bagel:
        """Load an official-layout folder (see `worldbagel.model.checkpoint.load_pretrained`)."""
        return load_pretrained(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the official folder layout (see `worldbagel.model.checkpoint.save_pretrained`)."""
        save_pretrained(self, path)

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    # ------------------------------------------------------------------ embeddings
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [Nt] -> [Nt, H]."""
        return self.language_model.model.embed_tokens(ids)

    def embed_vit(self, patches: torch.Tensor, pos_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """ViT -> connector -> + vit_pos_embed: patches [Nv, P] -> [Nv, H]."""
        feats = self.vit_model(patches.to(self.dtype), pos_ids, lengths)
        return self.connector(feats) + self.vit_pos_embed(pos_ids)

    def embed_latents(self, tokens: torch.Tensor, t: torch.Tensor, pos_ids: torch.Tensor) -> torch.Tensor:
        """vae2llm(x_t) + time_embedder(t) + latent_pos_embed: tokens [Nz, Z], t [Nz] -> [Nz, H]."""
        return self.vae2llm(tokens.to(self.dtype)) + self.time_embedder(t) + self.latent_pos_embed(pos_ids)

    def embed_packed(self, seq: PackedSequence) -> torch.Tensor:
        """Scatter text, ViT and latent embeddings into the packed input [N, H].

        The input takes the dtype of the token embedding's weight as the forward sees it (under FSDP mixed
        precision the gathered bf16 copy, not the fp32 shards of another unit), and each part is cast to it:
        the parts may differ under autocast or with fp32 trained modules on a bf16 frozen base (LoRA).
        """
        h = self.config.llm.hidden_size
        dtype = self.language_model.model.embed_tokens.weight.dtype
        x = torch.zeros(seq.num_tokens, h, dtype=dtype, device=self.device)
        if seq.text_idx.numel():
            x[seq.text_idx] = self.embed_text(seq.text_ids).to(dtype)
        if seq.vit_patches is not None and seq.vit_idx.numel():
            x[seq.vit_idx] = self.embed_vit(seq.vit_patches, seq.vit_pos_ids, seq.vit_lengths).to(dtype)
        if seq.vae_tokens is not None and seq.vae_idx.numel():
            x[seq.vae_idx] = self.embed_latents(seq.vae_tokens, seq.vae_t, seq.vae_pos_ids).to(dtype)
        return x

    # ------------------------------------------------------------------ forward
    def forward_packed(
        self,
        seq: PackedSequence,
        past: list[PastKV | None] | None = None,
        return_kv: bool = False,
        detach_und: bool | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Embed and run the LLM over a packed sequence (optionally after per-sample caches).

        Returns final-normed hidden states [N, H] and, if return_kv, the new tokens' per-layer (k, v).
        `detach_und` defaults to config.llm.freeze_und while training.
        """
        if detach_und is None:
            detach_und = self.training and self.config.llm.freeze_und
        x = self.embed_packed(seq)
        routing = Routing.from_mask(seq.gen_mask)
        return self.language_model.model(
            x, seq.position_ids, routing, seq.layouts, past=past, return_kv=return_kv, detach_und=detach_und
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head: [N, H] -> [N, V]."""
        return self.language_model.lm_head(hidden)

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """llm2vae: [N, H] -> predicted flow velocity (noise - data) [N, Z]."""
        return self.llm2vae(hidden)

    def forward(self, seq: PackedSequence) -> torch.Tensor:
        """Hidden states of a packed sequence (no cache)."""
        return self.forward_packed(seq)[0]


def count_parameters(model: Bagel) -> dict[str, int]:
    """Parameters per part: und expert, gen expert, shared embeddings/head, ViT, heads."""
    out = {"llm_und": 0, "llm_gen": 0, "llm_embed_head": 0, "vit": 0, "connector_heads": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        if name.startswith("language_model."):
            if "embed_tokens" in name or "lm_head" in name:
                out["llm_embed_head"] += n
            elif "moe_gen" in name:
                out["llm_gen"] += n
            else:
                out["llm_und"] += n
        elif name.startswith("vit_model."):
            out["vit"] += n
        else:
            out["connector_heads"] += n
    out["total"] = sum(out.values())
    return out
