"""The training objective: logit-normal timesteps with shift, flow-matching noising and target, CE + MSE losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldbagel.data.packing import EpisodeFeatures, TextIds, build_batch, frame_change
from worldbagel.data.sequence_plan import DropoutConfig, PlanConfig, episode_plans
from worldbagel.data.trajectory import Episode
from worldbagel.errors import ConfigError
from worldbagel.model.sequence import SpecialIds
from worldbagel.train.objective import (
    LossWeights,
    compute_losses,
    noise_batch,
    sample_timesteps,
    shift_timesteps,
)

SPECIAL = SpecialIds(250, 251, 252, 253)
T, Z = 4, 8


def encode(text: str) -> list[int]:
    return [ord(c) % 200 for c in text]


@pytest.fixture(scope="module")
def model():
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig, LLMConfig

    cfg = BagelConfig(
        llm=LLMConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        visual_und=False,
        max_latent_size=8,
    )
    cfg.vae.z_channels = 2  # Z = 2*2*2 = 8
    torch.manual_seed(0)
    m = Bagel(cfg)
    m.init_weights()
    torch.nn.init.normal_(m.llm2vae.weight, std=0.1)
    return m.train()


def batch(horizon=2, text_targets=True, target_mode="chain"):
    steps = 5
    notes = [{"thought": f"think {i}"} for i in range(steps)]
    ep = Episode.from_arrays(
        "e",
        np.zeros((steps + 1, 8, 8, 3), np.uint8),
        list(range(steps)),
        [f"a{i}" for i in range(steps)],
        annotations=notes,
    )
    cfg = PlanConfig(horizon=horizon, vit=False, text_targets=text_targets, target_mode=target_mode)
    plans = episode_plans(0, ep, cfg)[:2]
    g = torch.Generator().manual_seed(0)
    feats = [EpisodeFeatures(torch.randn(steps + 1, T, Z, generator=g), (2, 2)) for _ in plans]
    return build_batch(
        plans, feats, TextIds(encode), SPECIAL, DropoutConfig(0, 0, 0), [0, 1], latent_max_side=8
    )


def test_shift():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_timesteps(t, 1.0), t)
    s3 = shift_timesteps(t, 3.0)
    assert s3[0] == 0 and s3[-1] == 1 and torch.all(s3[1:-1] > t[1:-1])  # s > 1 moves mass towards noise
    assert shift_timesteps(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)
    assert torch.all(torch.diff(s3) > 0)
    with pytest.raises(ConfigError, match="timestep_shift"):
        shift_timesteps(t, 0.0)


def test_logit_normal_timesteps():
    t = sample_timesteps(20000, torch.Generator().manual_seed(0), 1.0)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1.0) < 0.03
    ts = sample_timesteps(20000, torch.Generator().manual_seed(0), 3.0)
    assert ts.median().item() == pytest.approx(0.75, abs=0.02)
    assert torch.equal(t, sample_timesteps(20000, torch.Generator().manual_seed(0), 1.0))


@pytest.mark.parametrize("mode", ["chain", "group"])
def test_noising_and_target(mode):
    b = batch(horizon=2, target_mode=mode)
    flow = noise_batch(b, torch.Generator().manual_seed(1), shift=2.0)
    seq, x0_all = flow.seq, b.seq.vae_tokens
    noisy = torch.zeros(x0_all.shape[0], dtype=torch.bool)
    noisy[b.noisy_rows] = True
    assert torch.equal(seq.vae_tokens[~noisy], x0_all[~noisy]) and torch.all(seq.vae_t[~noisy] == 0)
    t_rows = seq.vae_t[b.noisy_rows]
    assert torch.equal(t_rows, flow.t[b.noise_group])  # one timestep per noise group
    assert flow.t.numel() == (4 if mode == "chain" else 2)  # 2 samples x (2 targets | 1 group)
    x0 = x0_all[b.noisy_rows]
    eps = (seq.vae_tokens[b.noisy_rows] - (1 - t_rows[:, None]) * x0) / t_rows[:, None]
    assert torch.allclose(flow.target, eps - x0, atol=1e-5)
    assert abs(eps.std().item() - 1) < 0.35  # eps is standard normal noise


def test_losses_match_a_manual_computation(model):
    b = batch()
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = compute_losses(model, b, gen_a, shift=1.0, weights=LossWeights(ce=0.25, mse=1.0))
    flow = noise_batch(b, gen_b, 1.0)
    hidden, _ = model.forward_packed(flow.seq)
    ce = F.cross_entropy(model.logits(hidden[flow.seq.ce_idx]), flow.seq.ce_labels)
    mse = (model.velocity(hidden[flow.seq.noisy_vae_idx]) - flow.target).pow(2).mean(-1).mean()
    assert out["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["loss_mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.25 * ce.item() + mse.item(), rel=1e-5)
    assert out["n_ce"].item() == b.num_ce > 0 and out["n_mse"].item() == b.num_mse == 4 * T
    normed = compute_losses(model, b, torch.Generator().manual_seed(3), ce_norm=100.0, mse_norm=10.0)
    assert normed["loss_ce"].item() == pytest.approx(out["ce_sum"].item() / 100.0, rel=1e-5)
    assert normed["loss_mse"].item() == pytest.approx(out["mse_sum"].item() / 10.0, rel=1e-5)
    model.zero_grad()
    out["loss"].backward()
    assert (
        model.llm2vae.weight.grad.abs().sum() > 0 and model.language_model.lm_head.weight.grad.abs().sum() > 0
    )


def test_no_text_targets_gives_zero_ce(model):
    b = batch(text_targets=False)
    assert b.num_ce == 0
    out = compute_losses(model, b, torch.Generator().manual_seed(0))
    assert out["loss_ce"].item() == 0.0 and torch.isfinite(out["loss"]) and out["loss_mse"].item() > 0


def test_frame_change_spreads_one_unit_per_token_over_what_changed():
    prev = torch.zeros(T, Z)
    moved = prev.clone()
    moved[1] = 2.0  # one token changes
    c = frame_change(moved, prev)
    assert c.tolist() == pytest.approx([0.0, T, 0.0, 0.0])  # the changed token carries the frame's total
    assert frame_change(prev, prev).abs().sum() == 0  # nothing changed: no extra weight anywhere
    two = prev.clone()
    two[0], two[3] = 1.0, 3.0
    assert frame_change(two, prev).sum().item() == pytest.approx(T) and frame_change(two, prev)[3] > 1


def test_batch_change_compares_each_target_with_the_frame_before_it():
    steps = 4
    latents = torch.zeros(steps + 1, T, Z)
    latents[2, 1] = 1.0  # frame 2 differs from frame 1 in token 1
    latents[3, 1] = 1.0  # frame 3 equals frame 2 (a wall bump)
    latents[3, 3] = 1.0  # ... but not frame 1: token 3 changes too
    ep = Episode.from_arrays(
        "e", np.zeros((steps + 1, 8, 8, 3), np.uint8), list(range(steps)), [f"a{i}" for i in range(steps)]
    )
    plans = episode_plans(0, ep, PlanConfig(horizon=2, vit=False))  # windows [0] -> 1, 2; [1] -> 2, 3
    feats = [EpisodeFeatures(latents, (2, 2)) for _ in plans[:2]]
    b = build_batch(
        plans[:2], feats, TextIds(encode), SPECIAL, DropoutConfig(0, 0, 0), [0, 1], latent_max_side=8
    )
    assert b.change.shape == (b.num_mse,) == (4 * T,)
    # sample 0: 1 vs 0 (no change), 2 vs 1 (token 1); sample 1: 2 vs 1 (token 1), 3 vs 2 (token 3)
    assert b.change.tolist() == [0.0] * T + [0, T, 0, 0] + [0, T, 0, 0] + [0, 0, 0, T]


def test_change_weight_scales_the_mse_of_changed_rows(model):
    b = batch()
    b.change = torch.zeros(b.num_mse)
    b.change[:3] = 5.0
    plain = compute_losses(model, b, torch.Generator().manual_seed(4))
    weighted = compute_losses(model, b, torch.Generator().manual_seed(4), weights=LossWeights(change=2.0))
    flow = noise_batch(b, torch.Generator().manual_seed(4), 1.0)
    hidden, _ = model.forward_packed(flow.seq)
    rows = (model.velocity(hidden[flow.seq.noisy_vae_idx]) - flow.target).pow(2).mean(-1)
    want = (rows * (1 + 2.0 * b.change)).sum() / b.num_mse
    assert weighted["loss_mse"].item() == pytest.approx(want.item(), rel=1e-5)
    assert weighted["loss_mse"].item() > plain["loss_mse"].item()


def test_negative_change_weight_is_named():
    from worldbagel.train.options import TrainConfig

    with pytest.raises(ConfigError, match="mse_change_weight"):
        TrainConfig(mse_change_weight=-1.0)


def test_explicit_timesteps_and_noise_give_the_hand_computed_loss(model):
    b = batch()
    g = torch.Generator().manual_seed(11)
    t = torch.rand(b.num_groups, generator=g)  # one flow time per noise group, used as given (no shift)
    eps = torch.randn(b.num_mse, Z, generator=g)
    out = compute_losses(model, b, timesteps=t, noise=eps, shift=3.0, weights=LossWeights(ce=0.5, mse=2.0))
    # reference: x_t = (1 - t) x0 + t eps on the noisy rows, clean rows keep x0 and t = 0
    seq = b.seq
    assert torch.all(seq.vae_t == 0)
    t_rows = t[b.noise_group][:, None]  # [Nn, 1]
    x0 = seq.vae_tokens[b.noisy_rows]
    tokens, vae_t = seq.vae_tokens.clone(), seq.vae_t.clone()
    tokens[b.noisy_rows] = (1 - t_rows) * x0 + t_rows * eps
    vae_t[b.noisy_rows] = t_rows[:, 0]
    hidden, _ = model.forward_packed(dataclasses.replace(seq, vae_tokens=tokens, vae_t=vae_t))
    ce = F.cross_entropy(model.logits(hidden[seq.ce_idx]), seq.ce_labels)
    mse = (model.velocity(hidden[seq.noisy_vae_idx]) - (eps - x0)).pow(2).mean()
    assert out["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out["loss_mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * ce.item() + 2.0 * mse.item(), rel=1e-6)
    again = compute_losses(model, b, timesteps=t, noise=eps, weights=LossWeights(ce=0.5, mse=2.0))
    assert torch.equal(again["loss"], out["loss"])  # nothing drawn: the same loss every time


def test_a_plain_call_equals_its_own_draws_given_explicitly(model):
    b = batch(target_mode="group")
    plain = compute_losses(model, b, torch.Generator().manual_seed(5), shift=2.0)
    gen = torch.Generator().manual_seed(5)  # a plain call draws t (then shifts it), then eps
    t = sample_timesteps(b.num_groups, gen, 2.0)
    eps = torch.randn(b.num_mse, Z, generator=gen)
    explicit = compute_losses(model, b, timesteps=t, noise=eps)
    for key in ("loss", "ce_sum", "mse_sum"):
        assert torch.equal(plain[key], explicit[key]), key
    # only what is not given is drawn: the noise alone given still draws t from the generator
    half = compute_losses(model, b, torch.Generator().manual_seed(5), shift=2.0, noise=eps)
    assert torch.equal(half["loss"], plain["loss"])


def test_explicit_draws_of_the_wrong_shape_are_named(model):
    b = batch()
    with pytest.raises(ConfigError, match=r"timesteps.*\[4\]"):
        compute_losses(model, b, timesteps=torch.rand(3), noise=torch.randn(b.num_mse, Z))
    with pytest.raises(ConfigError, match="timesteps.*in \\[0, 1\\]"):
        compute_losses(model, b, timesteps=torch.tensor([0.5, 1.5, 0.2, 0.1]))
    with pytest.raises(ConfigError, match=rf"noise.*\[{b.num_mse}, {Z}\]"):
        compute_losses(model, b, noise=torch.randn(b.num_mse, Z + 1))
    with pytest.raises(ConfigError, match="ce_norm"):
        compute_losses(model, b, torch.Generator().manual_seed(0), ce_norm=0.0)


def test_given_normalisers_below_one_are_used_as_given(model):
    # a data-parallel rank's normaliser is total / world_size, which is below 1 for one token over 2 ranks
    b = batch()
    own = compute_losses(model, b, torch.Generator().manual_seed(2))
    half = compute_losses(model, b, torch.Generator().manual_seed(2), ce_norm=0.5, mse_norm=0.25)
    assert half["loss_ce"].item() == pytest.approx(own["ce_sum"].item() / 0.5, rel=1e-6)
    assert half["loss_mse"].item() == pytest.approx(own["mse_sum"].item() / 0.25, rel=1e-6)
