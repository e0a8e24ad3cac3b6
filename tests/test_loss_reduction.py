"""Gradient accumulation: the official per-micro-batch token means, or one token mean pooled over the step."""

from __future__ import annotations

import copy

import pytest
import torch

from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
from worldbagel.errors import ConfigError
from worldbagel.model.sequence import SpecialIds
from worldbagel.model.transforms import ImageTransform
from worldbagel.train.objective import LossWeights, compute_losses, step_losses, step_normalisers
from worldbagel.train.options import OptimConfig, TrainConfig

# two micro-batches: CE / MSE token-loss sums and token counts (over all ranks)
SUMS = torch.tensor([[6.0, 8.0], [3.0, 0.5]], dtype=torch.float64)
COUNTS = torch.tensor([[2.0, 4.0], [6.0, 1.0]], dtype=torch.float64)


def test_step_losses_by_hand():
    # per micro-batch: CE (6/2 + 3/6) / 2, MSE (8/4 + 0.5/1) / 2; pooled: CE 9/8, MSE 8.5/5
    assert step_losses(SUMS, COUNTS, "per_microbatch") == pytest.approx((1.75, 1.25))
    assert step_losses(SUMS, COUNTS, "pooled") == pytest.approx((1.125, 1.7))
    one = step_losses(SUMS[:1], COUNTS[:1], "per_microbatch")
    assert one == step_losses(SUMS[:1], COUNTS[:1], "pooled") == (3.0, 2.0)  # the same without accumulation
    # a micro-batch without CE tokens adds 0 to the official mean (it still counts as one of the two)
    empty = torch.tensor([[2.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    assert step_losses(SUMS * torch.tensor([[1.0, 1.0], [0.0, 1.0]]), empty, "per_microbatch")[0] == 1.5


def test_step_normalisers_by_hand():
    # each rank divides its sums by these; data-parallel gradients are then averaged over world_size ranks
    assert step_normalisers(COUNTS, 1, "per_microbatch") == [(4.0, 8.0), (12.0, 2.0)]  # count x accum
    assert step_normalisers(COUNTS, 2, "per_microbatch") == [(2.0, 4.0), (6.0, 1.0)]
    assert step_normalisers(COUNTS, 1, "pooled") == [(8.0, 5.0), (8.0, 5.0)]
    assert step_normalisers(COUNTS, 2, "pooled") == [(4.0, 2.5), (4.0, 2.5)]
    # with the normalisers, the summed gradient objective is the step loss: sum_k sums_k / norm_k
    for mode in ("per_microbatch", "pooled"):
        norms = step_normalisers(COUNTS, 1, mode)
        ce = sum(float(s[0]) / n[0] for s, n in zip(SUMS, norms))
        assert ce == pytest.approx(step_losses(SUMS, COUNTS, mode)[0])
    with pytest.raises(ConfigError, match="loss_reduction"):
        step_losses(SUMS, COUNTS, "mean")
    with pytest.raises(ConfigError, match="train.loss_reduction"):
        TrainConfig(loss_reduction="sum")
    assert TrainConfig().loss_reduction == "per_microbatch"  # the official loop's behaviour by default


@pytest.fixture(scope="module")
def two_packs():
    """scratch-tiny and a stream whose packs 0 and 1 hold different CE / MSE token counts (56/32, 26/64)."""
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset("scratch-tiny", seed=0)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = fresh.tokenizer.special
    data = TrainingData(
        toy_episodes(1, steps=3, annotate=True) + toy_episodes(1, steps=3, seed=1),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=1),
        DropoutConfig(0.0, 0.0, 0.0),
        PackingConfig(256, 320, 256),
        shuffle=False,
    )
    counts = [(data.batch(c).num_ce, data.batch(c).num_mse) for c in (0, 1)]
    assert counts[0][0] != counts[1][0] and counts[0][1] != counts[1][1]
    return fresh, data


@pytest.mark.parametrize("mode", ["per_microbatch", "pooled"])
def test_accumulated_step_matches_the_hand_computed_objective(two_packs, mode, tmp_path):
    from worldbagel.train.loop import Trainer

    fresh, data = two_packs
    model = copy.deepcopy(fresh.model)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    weights = LossWeights(ce=0.5, mse=2.0)
    cfg = TrainConfig(
        steps=1,
        grad_accum=2,
        loss_reduction=mode,
        ce_weight=0.5,
        mse_weight=2.0,
        ema_decay=0.0,
        optim=OptimConfig(grad_clip=0.0),  # unclipped: the raw gradients
    )
    tr = Trainer(model, data, cfg, tmp_path)
    ref = copy.deepcopy(tr.model)
    tr._seed_step(0)
    got = tr._step()

    # by hand, from each pack's own sums and counts (same draws: the pack's noise generator)
    parts = [compute_losses(ref, data.batch(c), data.noise_generator(c)) for c in (0, 1)]
    ce_sum = [p["ce_sum"] for p in parts]
    mse_sum = [p["mse_sum"] for p in parts]
    n_ce = [float(p["n_ce"]) for p in parts]
    n_mse = [float(p["n_mse"]) for p in parts]
    if mode == "per_microbatch":  # the mean of the two packs' token means
        ce = (ce_sum[0] / n_ce[0] + ce_sum[1] / n_ce[1]) / 2
        mse = (mse_sum[0] / n_mse[0] + mse_sum[1] / n_mse[1]) / 2
        ce_loss = (parts[0]["loss_ce"] + parts[1]["loss_ce"]) / 2
        mse_loss = (parts[0]["loss_mse"] + parts[1]["loss_mse"]) / 2
    else:  # one token mean over both packs
        ce = (ce_sum[0] + ce_sum[1]) / (n_ce[0] + n_ce[1])
        mse = (mse_sum[0] + mse_sum[1]) / (n_mse[0] + n_mse[1])
        # differentiable sums: loss_* = sum / count (ce_sum / mse_sum are detached)
        ce_loss = (parts[0]["loss_ce"] * n_ce[0] + parts[1]["loss_ce"] * n_ce[1]) / (n_ce[0] + n_ce[1])
        mse_loss = (parts[0]["loss_mse"] * n_mse[0] + parts[1]["loss_mse"] * n_mse[1]) / (n_mse[0] + n_mse[1])
    assert got["loss_ce"] == pytest.approx(float(ce), rel=1e-6)
    assert got["loss_mse"] == pytest.approx(float(mse), rel=1e-6)
    assert got["loss"] == pytest.approx(float(weights.ce * ce + weights.mse * mse), rel=1e-6)

    (weights.ce * ce_loss + weights.mse * mse_loss).backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    have = {n: p.grad for n, p in tr.model.named_parameters() if p.grad is not None}
    assert want.keys() == have.keys() and len(want) > 10
    for name, g in want.items():
        close = torch.allclose(have[name], g, rtol=1e-5, atol=1e-8)
        assert close, (name, float((have[name] - g).abs().max()))

    # the two reductions differ here by far more than the tolerance above (56 vs 26 CE, 32 vs 64 MSE tokens)
    other = "pooled" if mode == "per_microbatch" else "per_microbatch"
    sums = torch.tensor([[float(ce_sum[k]), float(mse_sum[k])] for k in (0, 1)], dtype=torch.float64)
    counts = torch.tensor([[n_ce[k], n_mse[k]] for k in (0, 1)], dtype=torch.float64)
    assert abs(step_losses(sums, counts, other)[0] - got["loss_ce"]) > 1e-4 * got["loss_ce"]
