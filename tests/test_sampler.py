"""Rectified-flow schedule, Euler integration and CFG combination (pure functions)."""

from __future__ import annotations

import pytest
import torch

from worldbagel.inference.sampler import (
    RENORM_TYPES,
    SamplerConfig,
    cfg_active,
    cfg_combine,
    euler_step,
    flow_schedule,
    sample_flow,
    shift_time,
)


def test_schedule_endpoints_and_monotonic():
    for shift in (1.0, 3.0, 0.5):
        ts = flow_schedule(7, shift)
        assert ts[0] == 1.0 and ts[-1] == 0.0
        assert (ts[1:] < ts[:-1]).all()


def test_shift_one_is_identity_and_shift_moves_time_up():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_time(t, 1.0), t)
    assert (shift_time(t[1:-1], 3.0) > t[1:-1]).all()
    assert torch.allclose(flow_schedule(5, 1.0), torch.linspace(1, 0, 5))


def test_constant_velocity_integrates_exactly():
    x0 = torch.randn(4, 8)
    eps = torch.randn(4, 8)
    # along the straight path x_t = (1 - t) x0 + t eps the velocity is eps - x0 everywhere
    out = sample_flow(lambda x, t, i: eps - x0, eps.clone(), num_steps=9, shift=3.0)
    torch.testing.assert_close(out, x0)
    assert torch.equal(euler_step(torch.ones(2), torch.ones(2), 0.25), torch.full((2,), 0.75))


def test_bad_schedule_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_steps"):
        flow_schedule(1)
    with pytest.raises(ValueError, match="shift"):
        flow_schedule(5, 0.0)


def test_cfg_scale_one_returns_the_conditional_velocity():
    vc, vt, vi = torch.randn(3, 5, 64).unbind(0)
    for kind in ("global", "channel", "text_channel"):
        assert torch.equal(cfg_combine(vc, vt, vi, 1.0, 2.0, kind), vc)  # text off -> image CFG skipped too


def test_cfg_without_renorm_is_the_linear_formula():
    vc, vt, vi = torch.randn(3, 5, 64).unbind(0)
    u = vt + 4.0 * (vc - vt)
    expected = vi + 1.5 * (u - vi)
    got = cfg_combine(vc, vt, vi, 4.0, 1.5, "global", renorm_min=1.0)
    torch.testing.assert_close(got, expected)
    got_tc = cfg_combine(vc, vt, vi, 4.0, 1.5, "text_channel", renorm_min=1.0)
    torch.testing.assert_close(got_tc, expected)


def test_renorm_never_amplifies():
    torch.manual_seed(0)
    for _ in range(20):
        vc, vt, vi = torch.randn(3, 6, 64).unbind(0)
        g = cfg_combine(vc, vt, vi, 4.0, 2.0, "global")
        assert g.norm() <= vc.norm() * (1 + 1e-5)
        c = cfg_combine(vc, vt, vi, 4.0, 2.0, "channel")
        assert (c.norm(dim=-1) <= vc.norm(dim=-1) * (1 + 1e-5)).all()
        t = cfg_combine(vc, vt, None, 4.0, 1.0, "text_channel")
        assert (t.norm(dim=-1) <= vc.norm(dim=-1) * (1 + 1e-5)).all()
    # renorm_min > 0 keeps at least that fraction of the guided velocity
    vc = torch.ones(2, 4) * 0.01
    vt = torch.zeros(2, 4)
    assert torch.allclose(cfg_combine(vc, vt, None, 100.0, 1.0, "global", renorm_min=0.5), 0.5 * 100 * vc)


def test_cfg_interval_is_open_below_closed_above():
    assert cfg_active(1.0, (0.4, 1.0)) and cfg_active(0.41, (0.4, 1.0))
    assert not cfg_active(0.4, (0.4, 1.0)) and not cfg_active(0.1, (0.4, 1.0))
    with pytest.raises(ValueError, match="cfg_renorm_type"):
        cfg_combine(torch.ones(1, 2), torch.ones(1, 2), None, 2.0, 1.0, "local")  # type: ignore[arg-type]


def test_sampler_config_is_the_presets_schema_and_checks_its_enum():
    """SamplerConfig is the one sampling config: the yaml presets load into it (the interval as a float
    tuple), and a renorm type outside RENORM_TYPES is refused on construction, naming the field."""
    from omegaconf import OmegaConf

    from worldbagel.errors import ConfigError
    from worldbagel.world_model_loader import sampler_config

    for preset in ("fast", "gridworld", "release"):
        cfg = sampler_config(preset)
        assert type(cfg) is SamplerConfig and cfg.cfg_interval == (0.0, 1.0)
        assert cfg.cfg_renorm_type in RENORM_TYPES
    assert sampler_config("release") == SamplerConfig()  # the dataclass defaults are the release preset
    merged = OmegaConf.merge(OmegaConf.structured(SamplerConfig), {"cfg_interval": [0.25, 1]})
    assert OmegaConf.to_object(merged).cfg_interval == (0.25, 1.0)
    for bad in ("local", "Global", ""):
        with pytest.raises(ConfigError, match=f"invalid cfg_renorm_type='{bad}'"):
            SamplerConfig(cfg_renorm_type=bad)
        with pytest.raises(ConfigError, match="invalid cfg_renorm_type="):
            OmegaConf.to_object(
                OmegaConf.merge(OmegaConf.structured(SamplerConfig), {"cfg_renorm_type": bad})
            )
    with pytest.raises(ConfigError, match="invalid cfg_interval="):
        sampler_config({"cfg_interval": [0.0, 0.5, 1.0]})
