"""The FLUX autoencoder: key conversion, exact save round trip, fidelity to the FLUX AE, (un)patchify order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from worldbagel.errors import CheckpointError, ConfigError
from worldbagel.model.configuration import BagelConfig, VAEConfig
from worldbagel.model.vae import (
    FluxVAE,
    build_vae,
    flux_key_shapes,
    flux_to_diffusers,
    load_vae,
    patchify_latent,
    save_vae,
    unpatchify_latent,
)
from worldbagel.model.weights_file import read_header


@pytest.fixture(scope="module")
def cfg(tiny_dir) -> VAEConfig:
    return BagelConfig.from_folder(tiny_dir).vae


@pytest.fixture(scope="module")
def vae(tiny_dir, cfg) -> FluxVAE:
    return load_vae(tiny_dir / "ae.safetensors", cfg)


@pytest.fixture(scope="module")
def flux_sd(tiny_dir) -> dict[str, torch.Tensor]:
    return load_file(tiny_dir / "ae.safetensors")


# --------------------------------------------------------------------------- a literal FLUX AE (spec §1.5)
def _gn(x, sd, p):
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _conv(x, sd, p, stride=1, padding=1):
    return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=stride, padding=padding)


def _resnet(x, sd, p):
    h = _conv(F.silu(_gn(x, sd, f"{p}.norm1")), sd, f"{p}.conv1")
    h = _conv(F.silu(_gn(h, sd, f"{p}.norm2")), sd, f"{p}.conv2")
    if f"{p}.nin_shortcut.weight" in sd:
        x = _conv(x, sd, f"{p}.nin_shortcut", padding=0)
    return x + h


def _attn(x, sd, p):
    b, c, hh, ww = x.shape
    h = _gn(x, sd, f"{p}.norm")
    q, k, v = (_conv(h, sd, f"{p}.{n}", padding=0).reshape(b, 1, c, hh * ww).transpose(-1, -2) for n in "qkv")
    h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, hh, ww)
    return x + _conv(h, sd, f"{p}.proj_out", padding=0)


def _mid(h, sd, p):
    return _resnet(_attn(_resnet(h, sd, f"{p}.block_1"), sd, f"{p}.attn_1"), sd, f"{p}.block_2")


def flux_encode_moments(x, sd, cfg):
    h = _conv(x, sd, "encoder.conv_in")
    for i in range(len(cfg.ch_mult)):
        for j in range(cfg.num_res_blocks):
            h = _resnet(h, sd, f"encoder.down.{i}.block.{j}")
        if i != len(cfg.ch_mult) - 1:
            h = _conv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.down.{i}.downsample.conv", stride=2, padding=0)
    h = _mid(h, sd, "encoder.mid")
    return _conv(F.silu(_gn(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")


def flux_decode(z, sd, cfg):
    h = _mid(_conv(z / cfg.scale_factor + cfg.shift_factor, sd, "decoder.conv_in"), sd, "decoder.mid")
    for i in reversed(range(len(cfg.ch_mult))):
        for j in range(cfg.num_res_blocks + 1):
            h = _resnet(h, sd, f"decoder.up.{i}.block.{j}")
        if i != 0:
            h = _conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), sd, f"decoder.up.{i}.upsample.conv")
    return _conv(F.silu(_gn(h, sd, "decoder.norm_out")), sd, "decoder.conv_out")


# --------------------------------------------------------------------------- tests
def test_flux_layout_matches_fixture_header(tiny_dir, cfg):
    assert flux_key_shapes(cfg) == read_header(tiny_dir / "ae.safetensors").shapes()


def test_flux_layout_of_release_values():
    shapes = flux_key_shapes(VAEConfig())
    assert shapes["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert shapes["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (32, 512, 3, 3)
    assert (
        "decoder.up.0.upsample.conv.weight" not in shapes
        and "encoder.down.3.downsample.conv.weight" not in shapes
    )
    assert sum(1 for k in shapes if ".block.2." in k) > 0  # decoder has num_res_blocks + 1 blocks


def test_conversion_has_no_missing_or_unexpected_keys(flux_sd, cfg):
    with torch.device("meta"):
        ae = build_vae(cfg)
    result = ae.load_state_dict(flux_to_diffusers(dict(flux_sd), ae), strict=False, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_save_round_trip_is_bit_identical(vae, flux_sd, tmp_path):
    out = tmp_path / "ae.safetensors"
    save_vae(vae, out)
    again = load_file(out)
    assert again.keys() == flux_sd.keys()
    for k in flux_sd:
        assert again[k].dtype == flux_sd[k].dtype and torch.equal(again[k], flux_sd[k]), k


def test_matches_a_literal_flux_autoencoder(vae, flux_sd, cfg):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        moments = flux_encode_moments(x, flux_sd, cfg)
        mean = moments[:, : cfg.z_channels]
        expected_latent = cfg.scale_factor * (mean - cfg.shift_factor)
        latent = vae.encode(x)
        torch.testing.assert_close(latent, expected_latent, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            vae.decode(latent), flux_decode(latent, flux_sd, cfg), atol=1e-5, rtol=1e-5
        )


def test_encode_decode_shapes_and_posterior(vae, cfg):
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, cfg.z_channels, 4, 6)
        assert vae.downsample == 8
        assert torch.equal(z, vae.encode(x))  # posterior mean: deterministic
        s1 = vae.encode(x, torch.Generator().manual_seed(3))
        s2 = vae.encode(x, torch.Generator().manual_seed(3))
        s3 = vae.encode(x, torch.Generator().manual_seed(4))
        assert torch.equal(s1, s2)
        assert not torch.equal(s1, s3) and not torch.equal(s1, z)
        # the sample is mean + std * eps with the generator's eps
        mean, logvar = vae.moments(x)
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(
            s1, cfg.scale_factor * (mean + torch.exp(0.5 * logvar) * eps - cfg.shift_factor)
        )
        y = vae.decode(z)
        assert y.shape == x.shape


def test_bad_image_shape_is_a_clear_error(vae):
    with pytest.raises(ConfigError, match="multiples of the downsample 8"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ConfigError, match="images.shape"):
        vae.encode(torch.zeros(3, 32, 32))


def test_patchify_feature_order_is_dy_dx_channel():
    cz, h, w, p = 16, 3, 4, 2
    c = torch.arange(cz).view(cz, 1, 1)
    y = torch.arange(p * h).view(1, p * h, 1)
    x = torch.arange(p * w).view(1, 1, p * w)
    latent = (c * 10000 + y * 100 + x).float()[None].repeat(2, 1, 1, 1)
    tokens = patchify_latent(latent, p)
    assert tokens.shape == (2, h * w, p * p * cz)
    for i in range(h):
        for j in range(w):
            for dy in range(p):
                for dx in range(p):
                    for ch in range(cz):
                        want = ch * 10000 + (p * i + dy) * 100 + (p * j + dx)
                        assert tokens[1, i * w + j, dy * p * cz + dx * cz + ch].item() == want
    assert torch.equal(unpatchify_latent(tokens, h, w, p, cz), latent)


@pytest.mark.parametrize("p,cz", [(1, 16), (2, 4), (4, 8)])
def test_unpatchify_inverts_patchify(p, cz):
    latent = torch.randn(3, cz, 2 * p, 5 * p)
    assert torch.equal(unpatchify_latent(patchify_latent(latent, p), 2, 5, p, cz), latent)


def test_patchify_crops_odd_sides_and_wrapper(vae):
    latent = torch.randn(1, 16, 5, 7)
    tokens = vae.patchify(latent)
    assert tokens.shape == (1, 2 * 3, 64)
    assert torch.equal(vae.unpatchify(tokens, 2, 3), latent[:, :, :4, :6])
    with pytest.raises(ConfigError, match="tokens.shape"):
        vae.unpatchify(tokens, 3, 3)


def test_wrong_config_names_file_and_keys(tiny_dir):
    with pytest.raises(CheckpointError) as info:
        load_vae(tiny_dir / "ae.safetensors", VAEConfig(ch=64, ch_mult=[1, 2, 2, 2], num_res_blocks=1))
    msg = str(info.value)
    assert "ae.safetensors" in msg and "wrong shape" in msg and "encoder.conv_in.weight" in msg


def test_default_config_is_flux_and_inconsistent_downsample_is_rejected():
    assert VAEConfig().z_channels == 16 and VAEConfig().scale_factor == 0.3611
    with pytest.raises(ConfigError, match="downsample"):
        build_vae(VAEConfig(downsample=16))
