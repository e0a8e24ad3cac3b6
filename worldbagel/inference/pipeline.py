"""BagelPipeline: the model, its autoencoder, tokenizer and image transforms, plus the official usages.

Shape legend: T latent tokens (h*w), Z latent token features, P ViT patch features.

    pipe = BagelPipeline.from_pretrained("BAGEL-7B-MoT")
    ctx = pipe.new_context().add_image(frame).add_text("move forward 0.25 m")
    image = pipe.generate_image(*pipe.interleave_contexts([frame, "move forward 0.25 m"]))

`interleave_contexts` rebuilds the official `interleave_inference` context logic (main / text-dropped /
image-dropped contexts, optional think system prompt), so every atomic step of the official inferencer is
one call here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from worldbagel.errors import bad_argument
from worldbagel.inference.context import Context
from worldbagel.inference.context_limit import limit_for
from worldbagel.inference.generate import (
    ImageOutput,
    ImageRequest,
    TextOutput,
    generate_images,
    generate_text,
)
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.inference.value_checks import require_finite_image
from worldbagel.model.bagel import Bagel
from worldbagel.model.bagel_folder import load_bagel
from worldbagel.model.hub import resolve_model_folder
from worldbagel.model.quantize import check_mode, quantize_model
from worldbagel.model.sequence import SequenceBuilder, SpecialIds
from worldbagel.model.siglip_navit import patchify
from worldbagel.model.tensor_parallel import load_tensor_parallel
from worldbagel.model.transforms import ImageTransform
from worldbagel.model.transforms import vae_transform as default_vae
from worldbagel.model.transforms import vit_transform as default_vit
from worldbagel.think_text import GEN_THINK_SYSTEM_PROMPT, VLM_THINK_SYSTEM_PROMPT

logger = logging.getLogger(__name__)


def shipped_model_dir(name: str) -> Path:
    """Folder of a model shipped inside the package (worldbagel/assets/<name>)."""
    folder = Path(str(resources.files("worldbagel"))) / "assets" / name
    if not (folder / "ema.safetensors").is_file():
        raise bad_argument(
            "model.path",
            None,
            f"no model named {name!r} ships with this package ({folder} has no ema.safetensors); "
            "pass model.path=/path/to/BAGEL-folder",
        )
    return folder


@dataclass
class InterleavedContexts:
    """The three contexts of one generation (official interleave_inference) and the thinking text."""

    context: Context
    cfg_text_context: Context
    cfg_img_context: Context
    image_size: tuple[int, int] | None
    """(H, W) of the last input image (the default output size), None if there was none."""
    thought: str = ""
    think_tokens: int = 0
    """Tokens the thinking text took (`think_budget_warning` tells when they used the whole budget)."""


class BagelPipeline:
    """Everything needed to run BAGEL: model, VAE, tokenizer, transforms, device and dtype."""

    def __init__(
        self,
        model: Bagel,
        vae,
        tokenizer,
        vae_transform: ImageTransform | None = None,
        vit_transform: ImageTransform | None = None,
        max_context_tokens: int | None = None,
    ):
        """`max_context_tokens`: most tokens a context (cache plus new tokens) may hold; None = what fits in
        half the device's free memory (`inference.context_limit`). Positions are also bounded by the model's
        max_position_embeddings."""
        self.model = model.eval()
        self.vae = vae.eval() if vae is not None else None
        self.tokenizer = tokenizer
        s = tokenizer.special
        self.special = SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image)
        self.vae_transform = vae_transform or default_vae()
        self.vit_transform = vit_transform or default_vit()
        self.context_limit = limit_for(model, max_context_tokens)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype=None,
        device=None,
        quantize=None,
        tensor_parallel: int = 1,
        **transform_kwargs,
    ) -> BagelPipeline:
        """Load model, VAE and tokenizer from an official-layout folder, or from the local Hugging Face cache
        when `path` is a repo id such as "ByteDance-Seed/BAGEL-7B-MoT" (nothing is downloaded).

        `quantize` (none, int8, nf4) quantises the LLM experts' linears after loading
        (`worldbagel.model.quantize`); `tensor_parallel` > 1 splits them over that many torchrun ranks
        (`worldbagel.model.tensor_parallel`)."""
        quantize = check_mode(quantize)  # a wrong mode fails before minutes of loading
        folder = resolve_model_folder(path)
        if tensor_parallel > 1:
            loaded = load_tensor_parallel(
                folder, tensor_parallel, dtype=dtype, device=device, quantize=quantize
            )
        else:
            loaded = load_bagel(folder, dtype=dtype, device=device)
            quantize_model(loaded.model, quantize)
        return cls(loaded.model, loaded.vae, loaded.tokenizer, **transform_kwargs)

    @classmethod
    def from_config(cls, cfg) -> BagelPipeline:
        """Load from a `ModelConfig` (worldbagel/world_model_loader.py; path None = the model shipped in the package)."""
        path = Path(cfg.path) if cfg.path else shipped_model_dir(cfg.name)
        return cls.from_pretrained(
            path,
            dtype=cfg.dtype,
            device=cfg.device,
            vae_transform=ImageTransform(*cfg.vae_image_size),
            vit_transform=ImageTransform(*cfg.vit_image_size),
            max_context_tokens=cfg.max_context_tokens,
            quantize=cfg.quantize,
            tensor_parallel=cfg.tensor_parallel,
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def builder(self, ropes=None, past_lens=None) -> SequenceBuilder:
        cfg = self.model.config
        return SequenceBuilder(
            self.special, ropes, past_lens, cfg.vit_max_num_patch_per_side, cfg.max_latent_size
        )

    def new_context(self) -> Context:
        return Context(self)

    # ------------------------------------------------------------------ encoders / decoder
    def encode_vae(
        self, image, sample: bool | torch.Generator = False
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image -> clean latent tokens [T, Z] and their grid (h, w), after the VAE transform."""
        if self.vae is None:
            raise bad_argument("vae", None, "this pipeline has no autoencoder; load one to encode images")
        x = self.vae_transform(image)[None].to(self.vae.device)  # [1, 3, H, W] in [-1, 1]
        with torch.no_grad():
            lat = self.vae.encode(x, sample=sample)  # [1, Cz, H/8, W/8]
        p = self.model.config.latent_patch_size
        grid = (lat.shape[-2] // p, lat.shape[-1] // p)
        return self.vae.patchify(lat)[0].float(), grid

    def encode_vit(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image -> ViT patches [nh*nw, P] and the patch grid, after the ViT transform."""
        x = self.vit_transform(image)  # [3, H, W]
        p = self.model.config.vit.patch_size
        return patchify(x, p), (x.shape[1] // p, x.shape[2] // p)

    def decode(self, out: ImageOutput | torch.Tensor, grid: tuple[int, int] | None = None) -> np.ndarray:
        """Latent tokens -> uint8 image [H, W, 3] ((x * 0.5 + 0.5) clamped to [0, 1], times 255)."""
        tokens, grid = (out.latents, out.grid) if isinstance(out, ImageOutput) else (out, grid)
        if grid is None:
            raise bad_argument("grid", None, "pass the latent-token grid (h, w) with raw tokens")
        return self.decode_batch([tokens], grid)[0]

    def decode_batch(self, tokens: list[torch.Tensor], grid: tuple[int, int]) -> list[np.ndarray]:
        """`decode` for several latent-token tensors [h*w, Z] of one grid, in one autoencoder call."""
        if not tokens:
            return []
        lat = self.vae.unpatchify(torch.stack(tokens).to(self.vae.device, self.vae.dtype), *grid)
        with torch.no_grad():
            img = self.vae.decode(lat)
        img = ((img.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return list(img.permute(0, 2, 3, 1).cpu().numpy())

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Snap an image size to the latent stride and return its token grid (h, w)."""
        s = self.model.config.latent_downsample
        if height < s or width < s:
            raise bad_argument("image_size", (height, width), f"both sides must be >= {s} pixels")
        return height // s, width // s

    # ------------------------------------------------------------------ official usages
    def interleave_contexts(
        self,
        inputs: list,
        think: bool = False,
        understanding_output: bool = False,
        sample_vae: bool | torch.Generator = False,
    ) -> InterleavedContexts:
        """Build main / text-dropped / image-dropped contexts exactly as the official interleave_inference.

        For each text: the text-dropped context becomes a fork of the main one *before* the text, and the text
        goes into the main and image-dropped contexts. For each image: it goes into the main context (VAE
        unless understanding_output, and ViT), and the text-dropped context becomes a fork *after* it. The
        image-dropped context never receives images. With think, the system prompt opens the main and
        image-dropped contexts.
        """
        gen = self.new_context()
        cfg_text = gen.fork()
        cfg_img = gen.fork()
        if think:
            prompt = VLM_THINK_SYSTEM_PROMPT if understanding_output else GEN_THINK_SYSTEM_PROMPT
            gen.add_text(prompt)
            cfg_img.add_text(prompt)
        size = None
        for i, item in enumerate(inputs):
            require_finite_image(f"inputs[{i}]", item)
        for item in inputs:
            if isinstance(item, str):
                cfg_text = gen.fork()
                gen.add_text(item)
                cfg_img.add_text(item)
            else:
                resized = self.vae_transform.resize(item)
                gen.add_image(resized, vae=not understanding_output, vit=True, sample=sample_vae)
                size = (resized.height, resized.width)
                cfg_text = gen.fork()
        return InterleavedContexts(gen, cfg_text, cfg_img, size)

    def generate_text(self, context: Context, **kwargs) -> TextOutput:
        return generate_text(context, **kwargs)

    def think(self, ic: InterleavedContexts, max_think_tokens: int = 1000, **kwargs) -> InterleavedContexts:
        """Generate the thinking text and append it to the main context only (official think path)."""
        out = generate_text(ic.context, max_new_tokens=max_think_tokens, **kwargs)
        ic.context.add_text(out.ids)
        ic.thought = out.text
        ic.think_tokens = len(out.ids)
        return ic

    def generate_image(
        self,
        ic: InterleavedContexts,
        image_size: tuple[int, int] | None = None,
        config: SamplerConfig | None = None,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        decode: bool = True,
    ) -> np.ndarray | ImageOutput:
        """Generate one image from interleaved contexts; returns uint8 [H, W, 3] (or latents if decode=False)."""
        size = image_size or ic.image_size
        if size is None:
            raise bad_argument("image_size", None, "give (H, W) when the inputs contain no image")
        grid = self.latent_grid(*size)
        req = ImageRequest(ic.context, ic.cfg_text_context, ic.cfg_img_context, latents)
        out = generate_images([req], grid, config, generator)[0]
        return self.decode(out) if decode else out
