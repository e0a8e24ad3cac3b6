"""Conditioning-dropout presets: the paper's (default) and the released training script's (dropout=release)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from worldbagel.data.packing import draw_dropout
from worldbagel.data.sequence_plan import (
    DROPOUT_PRESETS,
    DropoutConfig,
    PlanConfig,
    dropout_preset,
    episode_plans,
)
from worldbagel.data.trajectory import Episode
from worldbagel.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dropout"


def test_presets_hold_the_paper_and_release_values():
    assert dropout_preset("paper") == DropoutConfig()  # the default is the paper's
    assert dropout_preset("release") == DropoutConfig(text=0.1, vit=0.3, vae=0.3)
    assert dropout_preset("release", annotations=0.5).annotations == 0.5
    with pytest.raises(ConfigError, match="dropout preset"):
        dropout_preset("official")


def test_config_group_files_equal_the_python_presets():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(DROPOUT_PRESETS)
    for name in DROPOUT_PRESETS:
        values = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert DropoutConfig(**values) == dropout_preset(name), name


def test_finetune_composes_the_preset_and_single_overrides():
    from worldbagel.cli_compose import compose_config

    base = ["model=scratch-tiny", "data=unused", "out=unused"]
    assert compose_config("finetune", base)[1].dropout == dropout_preset("paper")
    assert compose_config("finetune", [*base, "dropout=release"])[1].dropout == dropout_preset("release")
    mixed = compose_config("finetune", [*base, "dropout=release", "dropout.vit=0.2"])[1].dropout
    assert (mixed.text, mixed.vit, mixed.vae) == (0.1, 0.2, 0.3)


def test_release_preset_drops_at_its_rates():
    steps = 3
    ep = Episode.from_arrays(
        "e", np.zeros((steps + 1, 8, 8, 3), np.uint8), list(range(steps)), [f"a{i}" for i in range(steps)]
    )
    plan = episode_plans(0, ep, PlanConfig(context_frames=2))[-1]
    kinds = [(i.kind, i.cfg and not i.loss) for i in plan.items]
    rng = np.random.default_rng(0)
    draws = np.array([draw_dropout(plan, dropout_preset("release"), rng) for _ in range(4000)])
    for kind, p in (("text", 0.1), ("vit", 0.3), ("vae", 0.3)):
        cols = [j for j, (k, droppable) in enumerate(kinds) if k == kind and droppable]
        assert cols, kind
        assert draws[:, cols].mean() == pytest.approx(p, abs=0.02), kind
    never = [j for j, (_, droppable) in enumerate(kinds) if not droppable]
    assert never and not draws[:, never].any()  # targets are never dropped
