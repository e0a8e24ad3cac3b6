"""Train-from-scratch presets: small BAGEL-architecture models (MoT LLM, SigLIP ViT, FLUX-layout VAE).

    preset         LLM hidden/layers/heads(kv)  ViT hidden/layers  VAE ch x mult
    scratch-tiny   128 / 2 / 4 (2)              64 / 2             32 x 1,2,2,2
    scratch-deep   128 / 4 / 4 (2)              64 / 2             32 x 1,2,2,2
    scratch-small  256 / 4 / 4 (2)              64 / 2             32 x 1,2,2,2

The position tables keep the official sizes (latent side 64, ViT side 70, ViT image_size 980) because the
official folder layout has no file that records them: a saved preset must load with the release's loader.

They are the `model=scratch-tiny` / `scratch-deep` / `scratch-small` options of `worldbagel finetune`.

Both use a byte-level tokenizer (256 byte symbols, no merges, plus BAGEL's four special tokens), so any text
(action phrases, instructions, answers) encodes without training a vocabulary; the embedding has
`len(tokenizer)` rounded up to a multiple of 64 rows. `build_preset` returns a freshly initialised model
(`Bagel.init_weights`: zero llm2vae, generation twins copied from the understanding expert), its tokenizer
and a random autoencoder (pass a trained one, e.g. from `worldbagel train-vae`, for real use).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from worldbagel.errors import bad_argument
from worldbagel.model.bagel import Bagel
from worldbagel.model.configuration import BagelConfig, LLMConfig, VAEConfig, ViTConfig
from worldbagel.model.tokenizer import BagelTokenizer
from worldbagel.model.vae import FluxVAE


def _config(hidden: int, layers: int, heads: int, kv: int) -> BagelConfig:
    return BagelConfig(
        llm=LLMConfig(
            vocab_size=320,
            hidden_size=hidden,
            intermediate_size=hidden * 11 // 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=4096,
        ),
        vit=ViTConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=2),
        vae=VAEConfig(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1),
    )


PRESETS: dict[str, BagelConfig] = {
    "scratch-tiny": _config(128, 2, 4, 2),
    "scratch-deep": _config(128, 4, 4, 2),
    "scratch-small": _config(256, 4, 4, 2),
}


def preset_config(name: str) -> BagelConfig:
    """A copy of preset `name`'s BagelConfig."""
    if name not in PRESETS:
        raise bad_argument("model", name, f"not a from-scratch preset; presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def byte_tokenizer() -> BagelTokenizer:
    """A byte-level BPE tokenizer without merges (257 ids + BAGEL's 4 special tokens)."""
    # lazy: transformers takes seconds to import; only building a tokenizer needs it
    from transformers import Qwen2TokenizerFast

    vocab = {"<|endoftext|>": 0}
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[ch] = i + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    hf = Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    return BagelTokenizer(hf)


@dataclass
class FreshModel:
    model: torch.nn.Module
    tokenizer: BagelTokenizer
    vae: object
    config: BagelConfig


def build_preset(name: str, seed: int = 0, vae=None) -> FreshModel:
    """A freshly initialised preset model (seeded), its byte tokenizer, and `vae` or a random autoencoder."""
    config = preset_config(name)
    tokenizer = byte_tokenizer()
    config.llm.vocab_size = -(-len(tokenizer) // 64) * 64
    if vae is not None:
        config.vae = copy.deepcopy(vae.config)
    torch.manual_seed(seed)
    model = Bagel(config)
    model.init_weights()
    if vae is None:
        vae = FluxVAE.from_config(config.vae, config.latent_patch_size)
    return FreshModel(model, tokenizer, vae, config)
