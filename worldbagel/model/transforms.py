"""Image resizing and normalisation as the official `ImageTransform` (spec §2.6).

Shape legend: input image H x W (PIL, HWC uint8 array, or tensor); output tensor [3, H', W'] in [-1, 1] with
H', W' multiples of the stride.

Resampling: the official transform runs torchvision's Resize(bicubic, antialias) on PIL images, which for PIL
input is PIL's own `Image.resize(..., BICUBIC)` (PIL always antialiases when downscaling). worldbagel calls PIL
directly, so results match the official pixels exactly; arrays and tensors are converted to 8-bit PIL images
first (float input is taken as [0, 1] and rounded to 8 bits, as an image file would be).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from worldbagel.errors import bad_argument

#: Official pixel budget shared by the images of one sample (14*14*9*1024).
MAX_PIXELS = 14 * 14 * 9 * 1024


def _make_divisible(value: float, stride: int) -> int:
    return max(stride, int(round(value / stride) * stride))


def _apply_scale(width: int, height: int, scale: float, stride: int) -> tuple[int, int]:
    return _make_divisible(round(width * scale), stride), _make_divisible(round(height * scale), stride)


def target_size(
    height: int,
    width: int,
    max_image_size: int,
    min_image_size: int,
    image_stride: int,
    max_pixels: int = MAX_PIXELS,
    img_num: int = 1,
) -> tuple[int, int]:
    """(height, width) the official resize rule gives an image of `height` x `width` pixels.

    scale = min(max/long, 1), then max(scale, min/short); sides = round(side*scale) snapped to the nearest
    multiple of the stride (at least one stride); if the area exceeds max_pixels/img_num the sides are
    multiplied by (max_pixels/img_num)/area and re-snapped; if the long side exceeds max it is rescaled to max
    and re-snapped. (Python's round, i.e. half to even, as the official code.)
    """
    if height <= 0 or width <= 0:
        raise bad_argument("image size", (height, width), "height and width must be positive")
    scale = min(max_image_size / max(width, height), 1.0)
    scale = max(scale, min_image_size / min(width, height))
    new_w, new_h = _apply_scale(width, height, scale, image_stride)
    budget = max_pixels / img_num
    if new_w * new_h > budget:
        new_w, new_h = _apply_scale(new_w, new_h, budget / (new_w * new_h), image_stride)
    if max(new_w, new_h) > max_image_size:
        new_w, new_h = _apply_scale(new_w, new_h, max_image_size / max(new_w, new_h), image_stride)
    return new_h, new_w


def snap_size(
    height: int,
    width: int,
    stride: int = 16,
    max_image_size: int = 1024,
    min_image_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """A requested generation size snapped by the same rule (default: VAE stride 16, long side <= 1024).

    `min_image_size=None` means "do not upscale" (the requested short side, snapped, is kept), which is what a
    caller asking for e.g. 64 x 96 on a small model wants.
    """
    lo = min(height, width, max_image_size) if min_image_size is None else min_image_size
    return target_size(height, width, max_image_size, lo, stride, max_pixels)


def to_pil(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """An RGB PIL image from a PIL image, an HWC/HW array, or a CHW/HWC tensor (uint8, or float in [0, 1]).

    Transparent images are composited on white, as the official `pil_img2rgb`.
    """
    if isinstance(image, Image.Image):
        if image.mode == "RGBA" or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGB", rgba.size, (255, 255, 255))
            white.paste(rgba, mask=rgba.split()[3])
            return white
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)  # CHW -> HWC
        arr = t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise bad_argument("image", type(image).__name__, "pass a PIL image, an HWC numpy array or a tensor")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise bad_argument("image.shape", arr.shape, "expected H x W, H x W x 3/4 (or a 3 x H x W tensor)")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise bad_argument("image.dtype", arr.dtype, "use uint8 in [0, 255] or float in [0, 1]")
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return to_pil(Image.fromarray(np.ascontiguousarray(arr)))


@dataclass
class ImageTransform:
    """Resize (long side <= max, short side >= min, sides snapped to the stride, bicubic), then to [-1, 1].

    Presets: `vae_transform()` (1024/512/16) and `vit_transform()` (980/224/14).
    """

    max_image_size: int
    """Longest allowed side in pixels."""
    min_image_size: int
    """Shortest side is upscaled to at least this (unless the long side would exceed the max)."""
    image_stride: int
    """Sides are multiples of this (16 for the VAE: downsample x latent patch; 14 for the ViT patch)."""
    max_pixels: int = MAX_PIXELS
    """Pixel budget shared by the `img_num` images of one sample."""

    def __post_init__(self) -> None:
        for name in ("max_image_size", "min_image_size", "image_stride", "max_pixels"):
            if int(getattr(self, name)) <= 0:
                raise bad_argument(name, getattr(self, name), "must be a positive integer")

    @property
    def stride(self) -> int:
        return self.image_stride

    def target_size(self, height: int, width: int, img_num: int = 1) -> tuple[int, int]:
        """Output (height, width) for an input of `height` x `width`."""
        return target_size(
            height,
            width,
            self.max_image_size,
            self.min_image_size,
            self.image_stride,
            self.max_pixels,
            img_num,
        )

    def resize(self, image: Image.Image | np.ndarray | torch.Tensor, img_num: int = 1) -> Image.Image:
        """The resized RGB PIL image (the official `resize_transform`)."""
        pil = to_pil(image)
        h, w = self.target_size(pil.height, pil.width, img_num)
        if (w, h) == pil.size:
            return pil
        return pil.resize((w, h), Image.Resampling.BICUBIC)

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor, img_num: int = 1) -> torch.Tensor:
        """Resized image as a float32 tensor [3, H', W'] in [-1, 1] (mean = std = 0.5)."""
        pil = self.resize(image, img_num)
        x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - 0.5) / 0.5


def vae_transform(
    max_image_size: int = 1024, min_image_size: int = 512, image_stride: int = 16
) -> ImageTransform:
    """The official VAE-side transform (app.py / inference.ipynb / eval)."""
    return ImageTransform(max_image_size, min_image_size, image_stride)


def vit_transform(
    max_image_size: int = 980, min_image_size: int = 224, image_stride: int = 14
) -> ImageTransform:
    """The official ViT-side transform (app.py / inference.ipynb)."""
    return ImageTransform(max_image_size, min_image_size, image_stride)
