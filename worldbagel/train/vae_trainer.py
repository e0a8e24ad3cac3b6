"""A small AutoencoderKL trainer for domains where no pretrained VAE fits (output in the FLUX layout).

Shape legend: B frames per step, H x W frame size, Cz latent channels, d downsample (8).

Loss = recon(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I)), both averaged per element, with
x in [-1, 1], z = mean + exp(logvar / 2) eps (posterior sample), x_hat = decoder(z). With `calibrate`, the
scaled latents `scale * (z - shift)` that BAGEL sees get mean 0 and standard deviation 1 over the training
frames (the role FLUX's 0.3611 / 0.1159 play for FLUX). The result is written as `ae.safetensors` (FLUX keys,
`save_vae`) and `vae_config.json`, the two files a BAGEL folder needs for its autoencoder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldbagel.errors import bad_argument
from worldbagel.model.configuration import VAE_CONFIG, VAEConfig
from worldbagel.model.transforms import ImageTransform
from worldbagel.model.vae import AE_FILE, FluxVAE, save_vae
from worldbagel.tracking import Tracker
from worldbagel.train.options import VAETrainConfig
from worldbagel.video import side_by_side

logger = logging.getLogger(__name__)


def frames_tensor(frames: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """uint8 frames [H, W, 3] -> float [N, 3, H', W'] in [-1, 1] (VAE transform, long side <= image_size)."""
    transform = ImageTransform(image_size, max(16, image_size // 2), 16)
    images = [transform(f) for f in frames]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:
        raise bad_argument(
            "frames", sorted(shapes), "frames resize to different sizes; use frames of one size"
        )
    return torch.stack(images)


def reconstruction_loss(vae: FluxVAE, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-pixel reconstruction error through the posterior mean (for evaluation)."""
    with torch.no_grad():
        mean, _ = vae.moments(x)
        x_hat = vae.ae.decoder(mean)
    return F.l1_loss(x_hat, x) if kind == "l1" else F.mse_loss(x_hat, x)


@torch.no_grad()
def rarity_weights(x: torch.Tensor, radius: int = 0) -> torch.Tensor:
    """[B, 1, H, W] per-pixel weights 1 / count of the pixel's exact (8-bit) colour in the batch, mean 1.

    x: [B, 3, H, W] in [-1, 1]. Flat-coloured domains (gridworld) get their rare small objects weighted up;
    photographs, where almost every colour is rare, get nearly uniform weights. radius > 0 spreads each
    weight to the (2 radius + 1)^2 pixels around it (max filter) before normalising.
    """
    b, _, h, w = x.shape
    q = ((x.clamp(-1, 1) + 1) * 127.5).round().long()  # [B, 3, H, W] 0..255
    key = (q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]).flatten()  # [B*H*W]
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    weights = (1.0 / counts.float())[inverse].view(b, 1, h, w)
    if radius:
        weights = F.max_pool2d(weights, 2 * radius + 1, stride=1, padding=radius)
    return weights / weights.mean()


def weighted_reconstruction(
    x_hat: torch.Tensor, x: torch.Tensor, kind: str, weighting: str, radius: int = 0
) -> torch.Tensor:
    """Mean per-element l1/mse between x_hat and x, pixels weighted by `weighting` (none | rarity)."""
    err = (x_hat - x).abs() if kind == "l1" else (x_hat - x).pow(2)
    if weighting == "rarity":
        err = err * rarity_weights(x, radius)
    return err.mean()


@torch.no_grad()
def reconstruction_images(vae: FluxVAE, x: torch.Tensor) -> list[np.ndarray]:
    """`real | reconstructed` uint8 [H', W', 3] per frame of x ([N, 3, H, W] in [-1, 1]; posterior mean)."""
    mean, _ = vae.moments(x)
    x_hat = vae.ae.decoder(mean)

    def pixels(t: torch.Tensor) -> np.ndarray:
        return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    return [
        side_by_side([pixels(a), pixels(b)], labels=["real", "reconstructed"])[0] for a, b in zip(x, x_hat)
    ]


@torch.no_grad()
def calibrate(vae: FluxVAE, x: torch.Tensor, batch_size: int = 32) -> tuple[float, float]:
    """Set the config's shift/scale so scaled posterior means of `x` have mean 0 and std 1."""
    means = torch.cat([vae.moments(x[i : i + batch_size])[0].float() for i in range(0, len(x), batch_size)])
    shift = float(means.mean())
    scale = float(1.0 / means.std().clamp_min(1e-6))
    vae.config.shift_factor, vae.config.scale_factor = shift, scale
    return shift, scale


def train_vae(
    frames: Sequence[np.ndarray],
    vae_config: VAEConfig,
    cfg: VAETrainConfig,
    on_step: Callable[[dict], None] | None = None,
    init: FluxVAE | None = None,
    tracker: Tracker | None = None,
    track_every: int = 1,
    media_every: int = 0,
) -> tuple[FluxVAE, list[dict]]:
    """Train a fresh autoencoder (or `init`) on `frames`; returns it and the logged metrics.

    `tracker` (worldbagel.tracking) gets vae/loss, vae/recon, vae/kl and vae/lr every `track_every` steps and
    `real | reconstructed` images of four fixed frames every `media_every` steps (0: none), both at the last."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    x_all = frames_tensor(frames, cfg.image_size)
    if x_all.shape[-1] % vae_config.downsample or x_all.shape[-2] % vae_config.downsample:
        raise bad_argument(
            "image_size", cfg.image_size, f"sides must be multiples of {vae_config.downsample}"
        )
    if cfg.freeze_encoder and init is None:
        raise bad_argument(
            "train.freeze_encoder", True, "start from a trained autoencoder: pass init=<folder>"
        )
    vae = (init if init is not None else FluxVAE.from_config(vae_config)).to(device).train()
    if cfg.freeze_encoder:  # everything before the latents stays: only the decoder side learns
        for name, param in vae.ae.named_parameters():
            param.requires_grad_(name.startswith(("decoder.", "post_quant_conv.")))
    trainable = [q for q in vae.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_all)
    media_idx = torch.linspace(0, n - 1, min(n, 4)).round().long()  # the frames shown reconstructed
    logs = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / warmup)
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        x = x_all[idx].to(device)
        with torch.set_grad_enabled(not cfg.freeze_encoder):
            mean, logvar = vae.moments(x)  # [B, Cz, H/d, W/d]
        logvar = logvar.clamp(-30.0, 20.0)
        eps = torch.randn(mean.shape, generator=gen).to(device)
        z = mean + torch.exp(0.5 * logvar) * eps
        x_hat = vae.ae.decoder(z)
        rec = weighted_reconstruction(x_hat, x, cfg.recon, cfg.recon_weighting, cfg.rarity_radius)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if not torch.isfinite(loss):
            raise bad_argument(
                "lr", cfg.lr, f"the VAE loss became {float(loss)} at step {step + 1}; lower it"
            )
        done, last = step + 1, step + 1 == cfg.steps
        if tracker is not None and (done % track_every == 0 or last):
            lr = opt.param_groups[0]["lr"]
            values = {"loss": loss.item(), "recon": rec.item(), "kl": kl.item(), "lr": lr}
            tracker.log_scalars(done, {f"vae/{k}": v for k, v in values.items()})
        if tracker is not None and media_every and (done % media_every == 0 or last):
            shown = reconstruction_images(vae, x_all[media_idx].to(device))
            tracker.log_images(done, "vae/reconstruction", shown)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            m = {"step": step + 1, "loss": loss.item(), "recon": rec.item(), "kl": kl.item()}
            logs.append(m)
            logger.info("vae step %d recon %.4f kl %.4f", m["step"], m["recon"], m["kl"])
            if on_step is not None:
                on_step(m)
    vae.eval()
    if cfg.calibrate and not cfg.freeze_encoder:  # a frozen encoder keeps its latents and their calibration
        shift, scale = calibrate(vae, x_all.to(device))
        logger.info("calibrated latents: shift_factor %.4f, scale_factor %.4f", shift, scale)
    return vae, logs


def save_trained_vae(vae: FluxVAE, out_dir: str | Path, logs: list[dict] | None = None) -> Path:
    """Write ae.safetensors (FLUX layout) and vae_config.json (atomic) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_vae(vae, out / AE_FILE)
    files = {VAE_CONFIG: json.dumps(asdict(vae.config), indent=1) + "\n"}
    if logs is not None:
        files["vae_metrics.jsonl"] = "".join(json.dumps(m) + "\n" for m in logs)
    for name, text in files.items():
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out
