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
be given from outside (the token counts of a whole optimizer step over all micro-batches and ranks), so that
splitting a step across gradient accumulation or data-parallel ranks does not change it (as the official
loop's global token normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from worldbagel.data.packing import PackedBatch
from worldbagel.errors import bad_argument


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
    batch: PackedBatch, generator: torch.Generator | None = None, shift: float = 1.0
) -> FlowInputs:
    """Draw one t per noise group and eps per noisy row; return the noised sequence and eps - x0."""
    seq = batch.seq
    t_group = sample_timesteps(batch.num_groups, generator, shift)  # [G]
    if seq.vae_tokens is None or batch.num_mse == 0:
        z = seq.vae_tokens.shape[1] if seq.vae_tokens is not None else 0
        return FlowInputs(seq, torch.zeros(0, z), t_group)
    device = seq.vae_tokens.device
    x0 = seq.vae_tokens[batch.noisy_rows].float()  # [Nn, Z]
    eps = torch.randn(x0.shape, generator=generator).to(device)
    t_rows = t_group.to(device)[batch.noise_group][:, None]  # [Nn, 1]
    tokens = seq.vae_tokens.float().clone()
    tokens[batch.noisy_rows] = (1.0 - t_rows) * x0 + t_rows * eps
    vae_t = seq.vae_t.float().clone()
    vae_t[batch.noisy_rows] = t_rows[:, 0]
    return FlowInputs(replace(seq, vae_tokens=tokens, vae_t=vae_t), eps - x0, t_group)


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
) -> dict[str, torch.Tensor]:
    """Forward one packed batch and return its loss parts.

    Keys: `loss` (weighted, what to backpropagate), `loss_ce`, `loss_mse` (normalised parts), `ce_sum`,
    `mse_sum` (unnormalised sums), `n_ce`, `n_mse` (token counts). `ce_norm` / `mse_norm` default to this
    batch's own counts.
    """
    weights = weights or LossWeights()
    flow = noise_batch(batch, generator, shift)
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
    loss_ce = ce_sum / max(ce_norm if ce_norm is not None else n_ce, 1)
    loss_mse = mse_sum / max(mse_norm if mse_norm is not None else n_mse, 1)
    return {
        "loss": weights.ce * loss_ce + weights.mse * loss_mse,
        "loss_ce": loss_ce,
        "loss_mse": loss_mse,
        "ce_sum": ce_sum.detach(),
        "mse_sum": mse_sum.detach(),
        "n_ce": torch.tensor(float(n_ce)),
        "n_mse": torch.tensor(float(n_mse)),
    }
