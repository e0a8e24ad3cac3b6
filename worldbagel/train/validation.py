"""The validation loss of a model in training: the training objective on held-out windows, without gradients.

Held-out episodes become packs as the training data does (`TrainingData` with the run's plan, packing and
frame encoder), but in episode order and without conditioning dropout (`heldout_data`). Each evaluation runs
the first `packs` packs, pack k with timesteps and noise drawn from a generator seeded by (seed, k): every
evaluation sees the same tokens, noise and timesteps, so the figures of different steps compare. CE and MSE
pool every token of those packs (as `train.loss_reduction=pooled`); `val_loss` weighs them like the training
loss (ce_weight, mse_weight, mse_change_weight).

Under FSDP every rank evaluates the same packs (the forward is collective, and identical work keeps the ranks
in step); the figures are then the same on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from worldbagel.data.sequence_plan import DropoutConfig
from worldbagel.errors import ConfigError, bad_argument
from worldbagel.train.data_stream import TrainingData, derive_seed
from worldbagel.train.objective import LossWeights, compute_losses

logger = logging.getLogger(__name__)

VALIDATION_STREAM = 2_000_003
"""Mixed into the seed of the validation noise, apart from the training noise streams."""


def heldout_data(episodes: Sequence[Any], like: TrainingData, encode_text: Callable[[str], list[int]]):
    """TrainingData of held-out `episodes` with `like`'s encoder, plan and packing, in episode order and
    without conditioning dropout (nothing is dropped from a held-out window)."""
    try:
        return TrainingData(
            episodes,
            like.encoder,
            encode_text,
            like.special,
            like.plan_cfg,
            DropoutConfig(text=0.0, vit=0.0, vae=0.0, annotations=0.0),
            like.packing,
            seed=like.seed,
            shuffle=False,
            vit_max_side=like.vit_max_side,
            latent_max_side=like.latent_max_side,
        )
    except ConfigError as exc:
        raise bad_argument("val_data", f"{len(episodes)} held-out episodes", str(exc)) from None


class Validation:
    """The validation loss over the first `packs` packs of `data` (see the module docstring)."""

    def __init__(self, data: TrainingData, packs: int = 4, seed: int = 0):
        if packs < 1:
            raise bad_argument("train.val_packs", packs, "use at least 1 pack")
        self.data = data
        self.seed = seed
        self.cursors = list(range(min(packs, len(data.epoch_packs(0)))))

    def evaluate(
        self,
        model: torch.nn.Module,
        weights: LossWeights,
        shift: float,
        device: torch.device,
        autocast: AbstractContextManager | None = None,
    ) -> dict[str, float]:
        """{"val_loss", "val_loss_ce", "val_loss_mse"} of `model` (its train/eval mode is restored)."""
        sums = torch.zeros(2, dtype=torch.float64)
        counts = torch.zeros(2, dtype=torch.float64)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for k in self.cursors:
                    batch = self.data.batch(k, device)
                    noise = torch.Generator().manual_seed(derive_seed(self.seed, VALIDATION_STREAM, k))
                    with autocast if autocast is not None else nullcontext():
                        parts = compute_losses(model, batch, noise, shift, weights)
                    sums += torch.tensor(
                        [float(parts["ce_sum"]), float(parts["mse_sum"])], dtype=torch.float64
                    )
                    counts += torch.tensor([batch.num_ce, batch.num_mse], dtype=torch.float64)
        finally:
            model.train(was_training)
        ce = float(sums[0] / counts[0].clamp_min(1.0))
        mse = float(sums[1] / counts[1].clamp_min(1.0))
        logger.info("validation loss %.4f (ce %.4f, mse %.4f)", weights.ce * ce + weights.mse * mse, ce, mse)
        return {"val_loss": weights.ce * ce + weights.mse * mse, "val_loss_ce": ce, "val_loss_mse": mse}
