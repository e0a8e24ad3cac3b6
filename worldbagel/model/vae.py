"""The FLUX autoencoder as a diffusers `AutoencoderKL`, with FLUX-layout (`ae.safetensors`) load and save.

Shape legend:
    B  batch          C  image channels (3)        H, W  image height/width in pixels
    Cz latent channels (16)   d  VAE downsample (8)        p  latent patch size (2)
    h, w  latent tokens per column/row: the latent is [B, Cz, p*h, p*w] and H = d*p*h
    tokens: [B, h*w, p*p*Cz], token order row-major, feature index dy*(p*Cz) + dx*Cz + c

The release stores the AE in the original FLUX key layout (`encoder.down.0.block.0.conv1.weight`, ...).
Loading converts it with diffusers' own `convert_ldm_vae_checkpoint`; saving applies the exact inverse
(built by running that converter on placeholders), so a saved `ae.safetensors` is bit-identical.
diffusers is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from worldbagel.errors import CheckpointError, bad_argument
from worldbagel.model.configuration import VAEConfig, read_vae_config
from worldbagel.model.weights_file import describe_mismatch, read_header, read_tensors, write_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)

AE_FILE = "ae.safetensors"


# ----------------------------------------------------------------------------------------------- layout
def flux_key_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a FLUX-layout AE state dict for `cfg`, with its shape (spec §1.5)."""
    out: dict[str, tuple[int, ...]] = {}
    ch, z, mult = cfg.ch, cfg.z_channels, list(cfg.ch_mult)

    def norm(prefix: str, c: int) -> None:
        out[f"{prefix}.weight"] = (c,)
        out[f"{prefix}.bias"] = (c,)

    def conv(prefix: str, cin: int, cout: int, k: int) -> None:
        out[f"{prefix}.weight"] = (cout, cin, k, k)
        out[f"{prefix}.bias"] = (cout,)

    def resnet(prefix: str, cin: int, cout: int) -> None:
        norm(f"{prefix}.norm1", cin)
        conv(f"{prefix}.conv1", cin, cout, 3)
        norm(f"{prefix}.norm2", cout)
        conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.nin_shortcut", cin, cout, 1)

    def mid(prefix: str, c: int) -> None:
        resnet(f"{prefix}.block_1", c, c)
        norm(f"{prefix}.attn_1.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.attn_1.{name}", c, c, 1)
        resnet(f"{prefix}.block_2", c, c)

    conv("encoder.conv_in", cfg.in_channels, ch, 3)
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    mid("encoder.mid", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, 2 * z, 3)

    conv("decoder.conv_in", z, block_in, 3)
    mid("decoder.mid", block_in)
    for i in reversed(range(len(mult))):
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, cfg.out_ch, 3)
    return out


def _check_cfg(cfg: VAEConfig) -> None:
    levels = len(cfg.ch_mult)
    if cfg.downsample != 2 ** (levels - 1):
        raise bad_argument(
            "vae_config.downsample",
            cfg.downsample,
            f"must equal 2**(len(ch_mult)-1) = {2 ** (levels - 1)} for ch_mult={list(cfg.ch_mult)}",
        )
    for c in [cfg.ch * m for m in cfg.ch_mult]:
        if c % 32:
            raise bad_argument(
                "vae_config.ch",
                cfg.ch,
                f"every width ch*mult must be divisible by 32 (GroupNorm 32); got {c}",
            )


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised diffusers AutoencoderKL with the FLUX AE architecture for `cfg`.

    Build it under `torch.device("meta")` to allocate nothing (then load with `assign=True`).
    """
    _check_cfg(cfg)
    # lazy: diffusers takes seconds to import; only building or converting a VAE needs it
    from diffusers import AutoencoderKL

    levels = len(cfg.ch_mult)
    return AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_ch,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        act_fn="silu",
        latent_channels=cfg.z_channels,
        norm_num_groups=32,
        sample_size=cfg.resolution,
        scaling_factor=cfg.scale_factor,
        shift_factor=cfg.shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def flux_to_diffusers(state_dict: dict[str, torch.Tensor], vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """Rename FLUX-layout AE tensors to the diffusers layout with diffusers' own converter."""
    # lazy: diffusers takes seconds to import; only building or converting a VAE needs it
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state_dict, dict(vae.config))


def diffusers_to_flux_map(cfg: VAEConfig, vae: AutoencoderKL) -> dict[str, tuple[str, tuple[int, ...]]]:
    """diffusers key -> (FLUX key, FLUX shape): the exact inverse of `flux_to_diffusers`.

    Built by converting placeholders (one private 1-element storage per FLUX key, expanded to its shape)
    and matching storages, so it follows whatever the installed converter does.
    """
    shapes = flux_key_shapes(cfg)
    probes = {k: torch.zeros(1).expand(s) for k, s in shapes.items()}
    owner = {p.untyped_storage().data_ptr(): k for k, p in probes.items()}
    converted = flux_to_diffusers(probes, vae)
    out = {}
    for dk, t in converted.items():
        fk = owner[t.untyped_storage().data_ptr()]
        out[dk] = (fk, shapes[fk])
    return out


def load_vae(
    path: str | Path,
    cfg: VAEConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> FluxVAE:
    """Load a FLUX-layout `ae.safetensors` (or a folder holding one) into a `FluxVAE`, strictly.

    `cfg` defaults to the folder's `vae_config.json` when `path` is a folder holding one (what
    `worldbagel train-vae` writes), else to the FLUX.1 values; `dtype=None` keeps the stored dtype. Key or
    shape mismatches raise one CheckpointError naming the file and the keys.
    """
    path = Path(path)
    if path.is_dir():
        cfg = cfg or read_vae_config(path)
        path = path / AE_FILE
    cfg = cfg or VAEConfig()
    hint = "The FLUX autoencoder weights (ae.safetensors, FLUX key layout) belong in the BAGEL model folder."
    header = read_header(path, hint)
    msg = describe_mismatch(flux_key_shapes(cfg), header.shapes())
    if msg:
        raise CheckpointError(
            f"{path} does not match the autoencoder config: {msg}. Check vae_config.json "
            f"(ch, ch_mult, num_res_blocks, z_channels). {hint}"
        )
    with torch.device("meta"):
        ae = build_vae(cfg)
    flux_sd = dict(read_tensors(header, dtype=dtype, device=device, model_weights=True))
    sd = {k: v.contiguous() for k, v in flux_to_diffusers(flux_sd, ae).items()}
    del flux_sd
    result = ae.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: diffusers conversion left {len(result.missing_keys)} missing "
            f"({result.missing_keys[:5]}) and {len(result.unexpected_keys)} unexpected ({result.unexpected_keys[:5]}) "
            "keys; the installed diffusers converter changed, please report this"
        )
    return FluxVAE(ae, cfg).eval()


def save_vae(vae: FluxVAE, path: str | Path) -> None:
    """Write `vae` as a FLUX-layout safetensors file (atomic), bit-identical to what it was loaded from."""
    mapping = diffusers_to_flux_map(vae.config, vae.ae)
    out: dict[str, torch.Tensor] = {}
    for dk, t in vae.ae.state_dict().items():
        if dk not in mapping:
            raise CheckpointError(f"autoencoder tensor {dk!r} has no FLUX key; cannot save {path}")
        fk, shape = mapping[dk]
        out[fk] = t.detach().reshape(shape)
    write_file(path, out, metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------- wrapper
class FluxVAE(nn.Module):
    """The FLUX AE: `encode` images in [-1, 1] to scaled latents, `decode` back, and latent (un)patchify."""

    def __init__(self, ae: AutoencoderKL, config: VAEConfig, latent_patch_size: int = 2):
        super().__init__()
        self.ae = ae
        self.config = config
        self.latent_patch_size = latent_patch_size

    @classmethod
    def from_config(cls, cfg: VAEConfig, latent_patch_size: int = 2) -> FluxVAE:
        """A randomly initialised autoencoder (for tests and new models)."""
        return cls(build_vae(cfg), cfg, latent_patch_size)

    @property
    def downsample(self) -> int:
        """Pixels per latent pixel side (8 for FLUX)."""
        return self.config.downsample

    @property
    def z_channels(self) -> int:
        return self.config.z_channels

    @property
    def dtype(self) -> torch.dtype:
        return next(self.ae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.ae.parameters()).device

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise bad_argument(
                "images.shape", tuple(images.shape), f"expected [B, {self.config.in_channels}, H, W]"
            )
        if images.shape[-2] % self.downsample or images.shape[-1] % self.downsample:
            raise bad_argument(
                "images.shape",
                tuple(images.shape),
                f"H and W must be multiples of the downsample {self.downsample}",
            )

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of the unscaled latent: images [B,3,H,W] -> 2 x [B,Cz,H/d,W/d]."""
        self._check_images(images)
        h = self.ae.encoder(images.to(self.dtype))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar

    def encode(self, images: torch.Tensor, sample: bool | torch.Generator = False) -> torch.Tensor:
        """Images in [-1, 1] [B,3,H,W] -> scaled latents `scale * (z - shift)` [B,Cz,H/d,W/d].

        `sample=False` takes the posterior mean (deterministic); `True` or a `torch.Generator` draws
        `z = mean + exp(logvar/2) * eps` as the official AE does (seeded when a generator is given).
        """
        mean, logvar = self.moments(images)
        z = mean
        if sample is not False:
            gen = sample if isinstance(sample, torch.Generator) else None
            eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype, device=mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.config.scale_factor * (z - self.config.shift_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B,Cz,h',w'] -> images [B,3,d*h',d*w'] (about [-1, 1]; not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.z_channels:
            raise bad_argument(
                "latents.shape", tuple(latents.shape), f"expected [B, {self.z_channels}, h, w]"
            )
        z = latents.to(self.dtype) / self.config.scale_factor + self.config.shift_factor
        return self.ae.decoder(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(images))

    # ---------------------------------------------------------------------------------- patchify
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """[B,Cz,p*h,p*w] -> tokens [B, h*w, p*p*Cz] (feature index dy*p*Cz + dx*Cz + c; spec §3.6)."""
        return patchify_latent(latents, self.latent_patch_size)

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inverse of `patchify`: tokens [B, h*w, p*p*Cz] -> [B,Cz,p*h,p*w]."""
        return unpatchify_latent(tokens, h, w, self.latent_patch_size, self.z_channels)


def patchify_latent(latents: torch.Tensor, p: int = 2) -> torch.Tensor:
    """[B,Cz,p*h,p*w] -> [B, h*w, p*p*Cz]; a latent whose sides are not multiples of p is cropped (official)."""
    b, c, hh, ww = latents.shape
    h, w = hh // p, ww // p
    x = latents[:, :, : h * p, : w * p].reshape(b, c, h, p, w, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, p: int = 2, z_channels: int = 16) -> torch.Tensor:
    """[B, h*w, p*p*Cz] -> [B,Cz,p*h,p*w] (the official decode_image permutation)."""
    b, n, f = tokens.shape
    if n != h * w or f != p * p * z_channels:
        raise bad_argument(
            "tokens.shape",
            tuple(tokens.shape),
            f"expected [B, {h * w}, {p * p * z_channels}] for h={h}, w={w}",
        )
    x = tokens.reshape(b, h, w, p, p, z_channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, z_channels, h * p, w * p)
