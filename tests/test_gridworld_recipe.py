"""worldbagel.recipes.gridworld (what scripts/train_gridworld.py runs): the think stage wires the project's
commands together (a few steps each), and `--install` refuses a rebuild that scores lower."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from worldbagel.data.annotations import GRIDWORLD_THINK_PROMPT
from worldbagel.errors import WorldBagelError
from worldbagel.recipes.gridworld import (
    INSTALL_METRICS,
    THINK_PHASES,
    RecipeOptions,
    install_regressions,
    run_command,
    think_stage,
)

SHIPPED = Path(str(resources.files("worldbagel"))) / "assets" / "gridworld"


def test_the_think_stage_collects_think_data_and_chains_its_phases(tmp_path):
    if not (SHIPPED / "ema.safetensors").is_file():
        pytest.skip("the shipped gridworld model is not built yet")
    # the shipped recipe: three phases, the last on stage 3's own mix of episodes
    assert [name for name, _, _ in THINK_PHASES] == ["more", "more", "mix"]
    opts = RecipeOptions(out=tmp_path, episodes=2, oracle_episodes=1, think_oracle_episodes=2, think_phases=2)
    calls = []

    def run(cli_args: list[str]) -> None:
        calls.append(cli_args)
        run_command(cli_args)

    last = think_stage(opts, SHIPPED, tmp_path, phases=(("more", 2, 5e-4), ("mix", 2, 2e-4)), run=run)
    assert last == tmp_path / "phase2" and (last / "ema.safetensors").is_file()
    # each phase started from the one before it, on its own data, and trained its own steps
    tunes = [dict(a.split("=", 1) for a in c[1:]) for c in calls if c[0] == "finetune"]
    assert [(t["model.path"], t["data"]) for t in tunes] == [
        (str(SHIPPED), str(tmp_path / "data_more")),
        (str(tmp_path / "phase1"), str(tmp_path / "data_mix")),
    ]
    assert all(t["plan.think_samples"] == "true" for t in tunes)
    assert [(t["train.steps"], t["train.optim.lr"]) for t in tunes] == [("2", "0.0005"), ("2", "0.0002")]
    # one latent cache: the second phase re-encodes only the frames the first one never saw
    assert {t["latent_cache"] for t in tunes} == {str(tmp_path / "latent_cache")}
    for phase in ("phase1", "phase2"):
        steps = [json.loads(line)["step"] for line in (tmp_path / phase / "metrics.jsonl").open()]
        assert steps == [1, 2]
    # `mix`: 2 random + 1 shortest-path episodes, `more`: 2 + 2; every action question asked in think mode
    counts = {name: len(list((tmp_path / f"data_{name}").glob("ep-*"))) for name in ("mix", "more")}
    assert counts == {"mix": 3, "more": 4}
    first = (next(iter(sorted((tmp_path / "data_mix").glob("ep-*")))) / "steps.jsonl").read_text()
    assert GRIDWORLD_THINK_PROMPT in first and "</think> move" in first


def test_think_phases_out_of_range_and_a_failing_command_are_errors(tmp_path):
    with pytest.raises(WorldBagelError, match="think_phases=4"):
        think_stage(RecipeOptions(out=tmp_path, think_phases=4), tmp_path, tmp_path, run=lambda a: None)
    with pytest.raises(WorldBagelError, match="worldbagel collect failed"):
        run_command(["collect", "env=gridworld", "episodes=1", f"out={tmp_path}", "policy=nope"])


def test_install_keeps_the_shipped_model_when_a_rebuild_scores_lower(tmp_path):
    assert install_regressions({"think_next_action_accuracy": 0.1}, tmp_path / "none.json", 0.05) == []
    report = tmp_path / "held_out.json"
    report.write_text(json.dumps({"next_frame_symbolic_accuracy": 1.0, "think_next_action_accuracy": 0.85}))
    # a rebuild whose frames are as good but whose think answers stayed on the plateau
    worse = install_regressions(
        {"next_frame_symbolic_accuracy": 0.9875, "think_next_action_accuracy": 0.54}, report, 0.05
    )
    assert worse == ["think_next_action_accuracy: 0.540 < 0.850"]
    assert install_regressions({"think_next_action_accuracy": 0.82}, report, 0.05) == []
    assert install_regressions({"think_next_action_accuracy": 0.82}, report, 0.0) == [
        "think_next_action_accuracy: 0.820 < 0.850"
    ]
    if (SHIPPED / "held_out.json").is_file():  # the shipped report has every compared figure
        shipped = json.loads((SHIPPED / "held_out.json").read_text())
        assert all(isinstance(shipped[k], (int, float)) for k in INSTALL_METRICS)
