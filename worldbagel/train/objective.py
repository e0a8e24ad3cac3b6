"""BAGEL's training objective: rectified-flow MSE on noisy latent tokens plus next-token CE on text (spec 6.1).

Shape legend
    N   packed rows        Nz  VAE rows (clean and noisy)       Nn  noisy VAE rows      Z  latent features
    G   noise groups (one noisy image, or one multi-frame group)                         V  vocabulary

Per noise group one raw timestep tau ~ N(0, 1); t = sigmoid(tau) (logit-normal), then the shift
t' = s t / (1 + (s - 1) t). Noisy rows get x_t = (1 - t') x0 + t' eps and the model predicts the velocity
eps - x0 from them; clean context rows keep t = 0 (x_t = x0).

Losses: CE = sum of token cross-entropies / number of CE tokens; MSE = sum over noisy rows of the
channel-mean squared error (times 1 + change_weight * change of the row, see `frame_change`; the official
objective is change_weight = 0) / number of noisy rows; loss = ce_weight CE + mse_weight MSE. The normalisers can
be given from outside, so a loss spread over gradient-accumulation micro-batches and data-parallel ranks is
normalised by token counts of more than one pack (`step_normalisers`, two ways, `LossReduction`).

The timesteps and the noise are drawn from `generator` unless given (`timesteps=`, `noise=`), so a loss can be
reproduced and held against a reference with the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from worldbagel.data.packing import PackedBatch
from worldbagel.errors import bad_argument
from worldbagel.train.options import LOSS_REDUCTIONS, LossReduction


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t) (identity for s = 1; s > 1 moves mass towards noise)."""
    if shift <= 0:
        raise bad_argument(
            "timestep_shift", shift, "must be > 0 (1.0 = no shift; the release infers with 3.0)"
        )
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_timesteps(n: int, generator: torch.Generator | None = None, shift: float = 1.0) -> torch.Tensor:
    """n flow times in (0, 1): sigmoid of a standard normal draw, then shifted. Returns float32 [n] (CPU)."""
    tau = torch.randn(n, generator=generator)
    return shift_timesteps(torch.sigmoid(tau), shift)


@dataclass
class FlowInputs:
    """A batch's sequence with noised target rows, and the regression target of those rows."""

    seq: object
    """PackedSequence whose `vae_tokens` / `vae_t` hold x_t and t."""
    target: torch.Tensor
    """[Nn, Z] float32: eps - x0 for the noisy rows (in `seq.noisy_vae_idx` order)."""
    t: torch.Tensor
    """[G] flow time of each noise group."""


def noise_batch(
    batch: PackedBatch,
    generator: torch.Generator | None = None,
    shift: float = 1.0,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> FlowInputs:
    """Draw one t per noise group and eps per noisy row; return the noised sequence and eps - x0.

    `timesteps` ([G], the flow times used as they are: already shifted, in [0, 1]) and `noise` ([Nn, Z], eps
    of the noisy rows in `batch.noisy_rows` order) replace the draws; only what is not given is drawn from
    `generator` (t first, then eps, so with neither given the draws are those of a plain call).
    """
    seq = batch.seq
    z = seq.vae_tokens.shape[1] if seq.vae_tokens is not None else 0
    if timesteps is None:
        t_group = sample_timesteps(batch.num_groups, generator, shift)  # [G]
    else:
        t_group = _given("timesteps", timesteps, (batch.num_groups,))
        if t_group.numel() and not bool(((t_group >= 0) & (t_group <= 1)).all()):
            raise bad_argument("timesteps", t_group.tolist(), "flow times must lie in [0, 1]")
    if noise is not None:
        noise = _given("noise", noise, (batch.num_mse, z))
    if seq.vae_tokens is None or batch.num_mse == 0:
        return FlowInputs(seq, torch.zeros(0, z), t_group)
    device = seq.vae_tokens.device
    x0 = seq.vae_tokens[batch.noisy_rows].float()  # [Nn, Z]
    eps = (torch.randn(x0.shape, generator=generator) if noise is None else noise).to(device)
    t_rows = t_group.to(device)[batch.noise_group][:, None]  # [Nn, 1]
    tokens = seq.vae_tokens.float().clone()
    tokens[batch.noisy_rows] = (1.0 - t_rows) * x0 + t_rows * eps
    vae_t = seq.vae_t.float().clone()
    vae_t[batch.noisy_rows] = t_rows[:, 0]
    return FlowInputs(replace(seq, vae_tokens=tokens, vae_t=vae_t), eps - x0, t_group)


def _given(name: str, value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A caller's timesteps / noise as float32 on the CPU, checked against the shape the batch needs."""
    if not torch.is_tensor(value) or tuple(value.shape) != shape:
        got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise bad_argument(name, got, f"this batch needs a float tensor of shape {list(shape)}")
    return value.detach().float().cpu()


@dataclass
class LossWeights:
    ce: float = 1.0
    """Weight of the text cross-entropy (official script 1.0; the paper reports CE:MSE about 0.25:1)."""
    mse: float = 1.0
    """Weight of the flow-matching MSE."""
    change: float = 0.0
    """Extra MSE weight of the tokens that change from the previous frame: row i counts 1 + change * c_i, where
    c_i (`PackedBatch.change`) shares a total of one per token of the frame over its changed tokens. 0 is the
    official objective; 1 puts as much weight on what changes as on the whole rest of the frame (a gridworld
    agent covers 1-2 of 64 tokens and is otherwise nearly free to ignore)."""


def compute_losses(
    model,
    batch: PackedBatch,
    generator: torch.Generator | None = None,
    shift: float = 1.0,
    weights: LossWeights | None = None,
    ce_norm: float | None = None,
    mse_norm: float | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Forward one packed batch and return its loss parts.

    Keys: `loss` (weighted, what to backpropagate), `loss_ce`, `loss_mse` (normalised parts), `ce_sum`,
    `mse_sum` (unnormalised sums), `n_ce`, `n_mse` (token counts). `ce_norm` / `mse_norm` (> 0) default to
    this batch's own counts (at least 1). `timesteps` / `noise` replace the draws (see `noise_batch`).
    """
    weights = weights or LossWeights()
    for name, norm in (("ce_norm", ce_norm), ("mse_norm", mse_norm)):
        if norm is not None and not norm > 0:
            raise bad_argument(name, norm, "a loss normaliser must be > 0 (None = this batch's token count)")
    flow = noise_batch(batch, generator, shift, timesteps, noise)
    seq = flow.seq
    hidden, _ = model.forward_packed(seq)  # [N, H]
    # Both heads run even on empty selections so every rank calls the same (possibly sharded) modules.
    logits = model.logits(hidden[seq.ce_idx])  # [Nce, V]
    ce_sum = F.cross_entropy(logits.float(), seq.ce_labels, reduction="sum")
    pred = model.velocity(hidden[seq.noisy_vae_idx]).float()  # [Nn, Z]
    if batch.num_mse:
        row_mse = (pred - flow.target.to(pred.device)).pow(2).mean(-1)  # [Nn]
        if weights.change and batch.change is not None:
            row_mse = row_mse * (1.0 + weights.change * batch.change.to(row_mse.device))
        mse_sum = row_mse.sum()
    else:
        mse_sum = pred.sum() * 0.0
    n_ce, n_mse = batch.num_ce, batch.num_mse
    loss_ce = ce_sum / (ce_norm if ce_norm is not None else max(n_ce, 1))
    loss_mse = mse_sum / (mse_norm if mse_norm is not None else max(n_mse, 1))
    return {
        "loss": weights.ce * loss_ce + weights.mse * loss_mse,
        "loss_ce": loss_ce,
        "loss_mse": loss_mse,
        "ce_sum": ce_sum.detach(),
        "mse_sum": mse_sum.detach(),
        "n_ce": torch.tensor(float(n_ce)),
        "n_mse": torch.tensor(float(n_mse)),
    }


# ------------------------------------------------------------------------------------------------ one step


def step_normalisers(
    counts: torch.Tensor, world_size: int, reduction: LossReduction
) -> list[tuple[float, float]]:
    """Per-rank (ce_norm, mse_norm) of each micro-batch of a step, for `compute_losses` (`LossReduction` in
    worldbagel.train.options says what the two reductions do).

    `counts` [A, 2]: the CE and MSE token counts of micro-batch k summed over all ranks (A = grad_accum).
    Gradients are averaged over the `world_size` ranks, so each rank divides by total / world_size.
    """
    _check_reduction(reduction)
    rows = [(float(c[0]), float(c[1])) for c in counts]
    accum = len(rows)
    if reduction == "pooled":
        n_ce, n_mse = sum(r[0] for r in rows), sum(r[1] for r in rows)
        norm = (max(n_ce, 1.0) / world_size, max(n_mse, 1.0) / world_size)
        return [norm] * accum
    return [(max(c, 1.0) * accum / world_size, max(m, 1.0) * accum / world_size) for c, m in rows]


def step_losses(sums: torch.Tensor, counts: torch.Tensor, reduction: LossReduction) -> tuple[float, float]:
    """(CE, MSE) of a whole step, as `step_normalisers` weighs them: `sums` / `counts` [A, 2] are the CE / MSE
    token-loss sums and token counts of each micro-batch, summed over all ranks."""
    _check_reduction(reduction)
    s = [(float(x[0]), float(x[1])) for x in sums]
    n = [(float(x[0]), float(x[1])) for x in counts]
    if reduction == "pooled":
        ce_sum, mse_sum, n_ce, n_mse = 0.0, 0.0, 0.0, 0.0
        for (cs, ms), (nc, nm) in zip(s, n):
            ce_sum, mse_sum, n_ce, n_mse = ce_sum + cs, mse_sum + ms, n_ce + nc, n_mse + nm
        return ce_sum / max(n_ce, 1.0), mse_sum / max(n_mse, 1.0)
    ce = _mean([cs / max(nc, 1.0) for (cs, _), (nc, _) in zip(s, n)])
    mse = _mean([ms / max(nm, 1.0) for (_, ms), (_, nm) in zip(s, n)])
    return ce, mse


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(len(values), 1)


def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise bad_argument("train.loss_reduction", reduction, f"use one of {LOSS_REDUCTIONS}")
