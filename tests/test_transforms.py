"""The official ImageTransform resize rule (spec §2.6), computed by hand, and the [-1, 1] conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from worldbagel.errors import ConfigError
from worldbagel.model.transforms import ImageTransform, snap_size, target_size, vae_transform, vit_transform

# (height, width, img_num) -> (height', width'); worked out by hand below each row.
VAE_TABLE = [
    # scale=max(min(1024/640,1), 512/480)=1.0667: w=round(682.7)=683 -> 688, h=512
    ((480, 640, 1), (512, 688)),
    # scale=max(1024/2000, 512/1000)=0.512: 1024 x 512
    ((1000, 2000, 1), (512, 1024)),
    # tiny image upscaled: scale=5.12 -> 512 x 512
    ((100, 100, 1), (512, 512)),
    # scale=max(0.341, 1.024)=1.024 -> 3072 x 512; long side > 1024: x1/3 -> 1024 x round(170.7)=171 -> 176
    ((500, 3000, 1), (176, 1024)),
    # 1000 -> round(62.5)=62 (half to even) -> 992; area 984064 > 1806336/2: x0.9178 -> round(910.5)=910 -> 912
    ((1000, 1000, 2), (912, 912)),
    # already on the grid: unchanged
    ((512, 768, 1), (512, 768)),
]
VIT_TABLE = [
    # scale=1: 640/14=45.7 -> 644, 480/14=34.3 -> 476
    ((480, 640, 1), (476, 644)),
    # scale=22.4: w=224, h=6720 (area 1.5 M ok); long side > 980: x0.1458 -> w=round(32.7)=33 -> 28, h=980
    ((300, 10, 1), (980, 28)),
    ((5, 5, 1), (224, 224)),
]


@pytest.mark.parametrize("size,expected", VAE_TABLE)
def test_vae_resize_rule(size, expected):
    h, w, n = size
    assert vae_transform().target_size(h, w, img_num=n) == expected
    assert target_size(h, w, 1024, 512, 16, img_num=n) == expected


@pytest.mark.parametrize("size,expected", VIT_TABLE)
def test_vit_resize_rule(size, expected):
    h, w, n = size
    assert vit_transform().target_size(h, w, img_num=n) == expected


def test_output_tensor_shape_range_and_values():
    t = vae_transform()
    img = Image.fromarray(np.full((480, 640, 3), 255, np.uint8))
    x = t(img)
    assert x.shape == (3, 512, 688) and x.dtype == torch.float32
    assert torch.all(x == 1.0)
    assert torch.all(t(np.zeros((480, 640, 3), np.uint8)) == -1.0)
    rng = np.random.default_rng(0)
    noisy = t(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    assert noisy.min() >= -1.0 and noisy.max() <= 1.0


def test_resampling_is_pil_bicubic_and_inputs_agree():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    t = ImageTransform(64, 32, 16)
    expected = np.asarray(Image.fromarray(arr).resize((64, 48), Image.Resampling.BICUBIC)).astype(np.float32)
    expected = torch.from_numpy(expected).permute(2, 0, 1) / 255.0 * 2 - 1
    from_array = t(arr)
    assert from_array.shape == (3, 48, 64)
    torch.testing.assert_close(from_array, expected, atol=1e-6, rtol=0)
    assert torch.equal(t(Image.fromarray(arr)), from_array)
    assert torch.equal(t(torch.from_numpy(arr)), from_array)  # HWC uint8 tensor
    assert torch.equal(t(torch.from_numpy(arr).permute(2, 0, 1)), from_array)  # CHW uint8 tensor
    assert torch.equal(
        t(torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0), from_array
    )  # CHW float [0, 1]


def test_transparent_images_go_on_white():
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    x = ImageTransform(32, 32, 16)(Image.fromarray(rgba, "RGBA"))
    assert torch.all(x == 1.0)


def test_snap_size_keeps_small_requests_and_caps_large_ones():
    assert snap_size(64, 96) == (64, 96)
    assert snap_size(70, 100) == (64, 96)
    assert snap_size(2048, 2048) == (1024, 1024)
    assert snap_size(100, 100, min_image_size=512) == (512, 512)
    assert snap_size(30, 30, stride=14, max_image_size=980) == (28, 28)


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="image_stride"):
        ImageTransform(1024, 512, 0)
    with pytest.raises(ConfigError, match="image.shape"):
        vae_transform()(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ConfigError, match="image"):
        vae_transform()("not an image")
