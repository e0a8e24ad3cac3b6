"""Encode episode frames once with the frozen VAE (and ViT patchify) and cache the result.

Shape legend
    F  frames of an episode      H, W  frame size       T  latent tokens per frame (h*w)     Z  token features
    Np ViT patches per frame     P  ViT patch features

Each frame is resized with the VAE transform (as `Context.add_image` does at inference), encoded to the
posterior moments, scaled/shifted as BAGEL's latents and patchified. The cache keeps the scaled mean and
(when `sample_posterior`) the scaled standard deviation, so posterior samples are drawn fresh for every use
without re-running the encoder. Entries are keyed by a hash of the frames and of the encoder (weights and
transforms); with `cache_dir` they are also written as safetensors files and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from worldbagel.data.packing import EpisodeFeatures
from worldbagel.model.siglip_navit import patchify
from worldbagel.model.transforms import ImageTransform
from worldbagel.model.vae import FluxVAE
from worldbagel.model.weights_file import load_file, read_header, write_file

logger = logging.getLogger(__name__)


class FrameEncoder:
    """Frames -> `EpisodeFeatures`, cached in memory and optionally on disk."""

    def __init__(
        self,
        vae: FluxVAE,
        vae_transform: ImageTransform,
        vit_transform: ImageTransform | None = None,
        latent_patch_size: int = 2,
        vit_patch_size: int = 14,
        sample_posterior: bool = True,
        cache_dir: str | Path | None = None,
        memory_cache: bool = True,
        batch_size: int = 16,
    ):
        self.vae = vae.eval()
        self.vae_transform = vae_transform
        self.vit_transform = vit_transform
        self.p = latent_patch_size
        self.vit_patch = vit_patch_size
        self.sample_posterior = sample_posterior
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory_cache = memory_cache
        self.batch_size = batch_size
        self._memory: dict[str, EpisodeFeatures] = {}
        self.encoded = 0
        """Episodes actually run through the VAE (cache misses)."""
        self._fingerprint = self._make_fingerprint()

    def _make_fingerprint(self) -> str:
        h = hashlib.sha1()
        for name, t in sorted(self.vae.ae.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        spec = {
            "vae_transform": vars(self.vae_transform),
            "vit_transform": vars(self.vit_transform) if self.vit_transform else None,
            "p": self.p,
            "vit_patch": self.vit_patch,
            "sample": self.sample_posterior,
            "scale": self.vae.config.scale_factor,
            "shift": self.vae.config.shift_factor,
        }
        h.update(json.dumps(spec, sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ sizes
    def grids(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """Latent token grid and ViT patch grid of a frame of `height` x `width` pixels (no encoding)."""
        h, w = self.vae_transform.target_size(height, width)
        stride = self.vae.downsample * self.p
        vae_grid = (h // stride, w // stride)
        if self.vit_transform is None:
            return vae_grid, None
        vh, vw = self.vit_transform.target_size(h, w)
        return vae_grid, (vh // self.vit_patch, vw // self.vit_patch)

    # ------------------------------------------------------------------ features
    def features(self, frames: np.ndarray) -> EpisodeFeatures:
        """Features of all frames [F, H, W, 3] uint8 of one episode (cached)."""
        frames = np.ascontiguousarray(frames)
        key = (
            hashlib.sha1(frames.tobytes() + str(frames.shape).encode()).hexdigest()[:20]
            + "-"
            + self._fingerprint
        )
        if key in self._memory:
            return self._memory[key]
        feats = self._load(key)
        if feats is None:
            feats = self._encode(frames)
            self.encoded += 1
            self._save(key, feats)
        if self.memory_cache:
            self._memory[key] = feats
        return feats

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> EpisodeFeatures:
        resized = [self.vae_transform.resize(f) for f in frames]
        images = torch.stack([self.vae_transform(r) for r in resized])  # [F, 3, H', W'] in [-1, 1]
        cfg = self.vae.config
        means, stds = [], []
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size].to(self.vae.device)
            mean, logvar = self.vae.moments(x)  # [B, Cz, h', w'] each
            means.append(self.vae.patchify(cfg.scale_factor * (mean.float() - cfg.shift_factor)).cpu())
            if self.sample_posterior:
                stds.append(self.vae.patchify(cfg.scale_factor * torch.exp(0.5 * logvar.float())).cpu())
        latents = torch.cat(means)  # [F, T, Z]
        grid = (
            images.shape[-2] // (self.vae.downsample * self.p),
            images.shape[-1] // (self.vae.downsample * self.p),
        )
        vit = vit_grid = None
        if self.vit_transform is not None:
            # uint8 pixels of the ViT-resized frames, patchified: (x / 255 - 0.5) / 0.5 is applied on use
            pix = [self._vit_pixels(r) for r in resized]  # [3, Hv, Wv] uint8 each
            vit_grid = (pix[0].shape[1] // self.vit_patch, pix[0].shape[2] // self.vit_patch)
            vit = torch.stack([patchify(x, self.vit_patch) for x in pix])  # [F, Np, P]
        return EpisodeFeatures(latents, grid, torch.cat(stds) if stds else None, vit, vit_grid)

    def _vit_pixels(self, image) -> torch.Tensor:
        resized = self.vit_transform.resize(image)
        return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, Hv, Wv]

    # ------------------------------------------------------------------ disk
    def _path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.safetensors" if self.cache_dir else None

    def _load(self, key: str) -> EpisodeFeatures | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None

        meta = read_header(path).metadata or {}
        t = load_file(path)
        grid = tuple(json.loads(meta["grid"]))
        vit_grid = tuple(json.loads(meta["vit_grid"])) if meta.get("vit_grid", "null") != "null" else None
        return EpisodeFeatures(t["latents"], grid, t.get("latent_std"), t.get("vit"), vit_grid)

    def _save(self, key: str, feats: EpisodeFeatures) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": feats.latents}
        if feats.latent_std is not None:
            tensors["latent_std"] = feats.latent_std
        if feats.vit is not None:
            tensors["vit"] = feats.vit
        meta = {"grid": json.dumps(list(feats.grid)), "vit_grid": json.dumps(feats.vit_grid)}
        write_file(path, tensors, metadata=meta)
