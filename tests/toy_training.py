"""The small training set several training tests share: toy episodes encoded by a fresh preset's VAE."""

from __future__ import annotations

from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
from worldbagel.model.sequence import SpecialIds
from worldbagel.model.transforms import ImageTransform
from worldbagel.train.data_stream import TrainingData
from worldbagel.train.latent_cache import FrameEncoder
from worldbagel.train.toy_episodes import toy_episodes


def toy_training_data(fresh, plan: PlanConfig, packing: PackingConfig) -> TrainingData:
    """One annotated 3-step toy episode, no CFG dropout, encoded with `fresh` (a `build_preset` result)."""
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = fresh.tokenizer.special
    return TrainingData(
        toy_episodes(1, steps=3, annotate=True),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        plan,
        DropoutConfig(0.0, 0.0, 0.0),
        packing,
    )
