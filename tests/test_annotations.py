"""GridWorld text annotations: answers computed from the symbolic state, written by `collect`."""

from __future__ import annotations

import gymnasium as gym
import pytest

import worldbagel.envs  # noqa: F401  (registers the envs)
from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.cli import main
from worldbagel.data.annotations import (
    GOAL_QUESTION,
    GridWorldAnnotator,
    make_annotator,
    outcome_text,
    relative_offset_text,
)
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.errors import ConfigError


def test_outcome_text():
    assert outcome_text((3, 5), "right") == "at 3,5 facing right"


def test_relative_offset_text():
    assert relative_offset_text((3, 3), (1, 6)) == "2 up 3 right"
    assert relative_offset_text((3, 3), (4, 3)) == "1 down"
    assert relative_offset_text((2, 2), (2, 2)) == "here"


def test_annotations_follow_the_oracle_along_an_episode():
    env = gym.make("WorldBagel/GridWorld-v0")
    obs, info = env.reset(seed=5)
    ann = GridWorldAnnotator()
    ACTION_QUESTION = next_action_question(DiscreteActionCodec(env.unwrapped.action_names))
    first = ann(env, obs, info)
    assert first["instruction"] == "reach the green goal"
    done = False
    while not done:
        notes = ann(env, obs, info)
        qa = {p["q"]: p["a"] for p in notes["qa"]}
        action = env.unwrapped.optimal_action()
        assert qa[ACTION_QUESTION] == env.unwrapped.action_names[action]
        assert qa[GOAL_QUESTION] == relative_offset_text(info["agent"], info["goal"])
        assert (
            notes["thought"].endswith(qa[ACTION_QUESTION]) and f"{info['distance']} moves" in notes["thought"]
        )
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        assert "instruction" not in ann(env, obs, info) or done
    assert info["success"]


def test_collect_writes_annotations(tmp_path):
    out = tmp_path / "data"
    args = ["collect", "env=gridworld", "policy=oracle", "episodes=2", f"out={out}", "annotate=gridworld"]
    assert main(args) == 0
    ep = TrajectoryDataset(out)[0]
    assert len(ep.annotations) == ep.length
    first = ep.annotations[0]
    assert first["instruction"] == "reach the green goal"
    question = "Which action should the agent take next? Answer with one of: move up, move right, move down, move left."
    assert [p["q"] for p in first["qa"]] == [GOAL_QUESTION, question]  # what ReasoningPolicy asks
    assert first["thought"].startswith("<think> goal ") and first["thought"].endswith(ep.action_texts[0])
    # every step's outcome describes the frame the action led to (agent cell and heading after it)
    for t in range(ep.length):
        info = ep.infos[t + 1]
        heading = ep.action_texts[t].split()[-1]  # the agent always turns to the direction it tried
        assert ep.annotations[t]["outcome"] == outcome_text(tuple(info["agent"]), heading)
    assert ep.annotations[-1]["outcome"] == outcome_text(tuple(ep.infos[-1]["goal"]), heading)
    assert GridWorldAnnotator(outcomes=False).outcome(None, None, {}) is None
    with pytest.raises(ConfigError, match="annotate"):
        make_annotator("nope")
