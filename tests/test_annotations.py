"""GridWorld text annotations: answers computed from the symbolic state, written by `collect`."""

from __future__ import annotations

import gymnasium as gym
import pytest

import worldbagel.envs  # noqa: F401  (registers the envs)
from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.cli import main
from worldbagel.data.annotations import (
    GOAL_QUESTION,
    GRIDWORLD_THINK_PROMPT,
    GridWorldAnnotator,
    make_annotator,
    outcome_text,
    relative_offset_text,
)
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.envs.maze import wall_follower_trace
from worldbagel.errors import ConfigError
from worldbagel.inference.pipeline import split_think


def test_outcome_text():
    assert outcome_text((3, 5), "right") == "at 3,5 facing right"


def test_relative_offset_text():
    assert relative_offset_text((3, 3), (1, 6)) == "2 up 3 right"
    assert relative_offset_text((3, 3), (4, 3)) == "1 down"
    assert relative_offset_text((2, 2), (2, 2)) == "here"


def test_annotations_follow_the_oracle_along_an_episode():
    env = gym.make("WorldBagel/GridWorld-v0")
    obs, info = env.reset(seed=5)
    ann = make_annotator("gridworld-think")
    ACTION_QUESTION = next_action_question(DiscreteActionCodec(env.unwrapped.action_names))
    first = ann(env, obs, info)
    assert first["instruction"] == "reach the green goal"
    done, forms = False, []
    while not done:
        notes = ann(env, obs, info)
        assert notes == ann(env, obs, info)  # the think/plain draw is a function of the state
        qa = {p["q"]: p for p in notes["qa"]}
        assert len(notes["qa"]) == 2  # the goal question, then ONE form of the action question
        action = env.unwrapped.optimal_action()
        pair = qa[ACTION_QUESTION]
        forms.append("system" in pair)
        if "system" in pair:  # think mode: the wall follower's walk, then the same answer
            assert pair["system"] == GRIDWORLD_THINK_PROMPT
            thought, answer = split_think(pair["a"])
            trace = wall_follower_trace(env.unwrapped.walls, info["agent"], info["goal"], info["heading"])
            r, c = info["agent"]
            gr, gc = info["goal"]
            assert thought == f"{r},{c} to {gr},{gc}: " + "".join(f"{'urdl'[b]}{i}{j}" for b, (i, j) in trace)
            assert thought[-3] == "urdl"[action]  # the last branch letter is the answer
        else:
            answer = pair["a"]
        assert answer == env.unwrapped.action_names[action]
        assert qa[GOAL_QUESTION]["a"] == relative_offset_text(info["agent"], info["goal"])
        assert "thought" not in notes  # no summary thought: it would hand the think answer over
        summary = GridWorldAnnotator()(env, obs, info)  # the default: plain answers and the summary thought
        assert all("system" not in p for p in summary["qa"])
        assert summary["thought"] == (
            f"<think> goal {qa[GOAL_QUESTION]['a']}, {info['distance']} moves away </think> {answer}"
        )
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        assert "instruction" not in ann(env, obs, info) or done
    assert info["success"]
    assert any(forms) and not all(forms)  # about half the steps think
    thinking = GridWorldAnnotator(questions=False, think_share=1.0)(env, *env.reset(seed=5))
    assert [p.get("system") for p in thinking["qa"]] == [GRIDWORLD_THINK_PROMPT]
    with pytest.raises(ConfigError, match="think_share"):
        GridWorldAnnotator(think_share=1.5)


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
    assert first["qa"][1]["a"] == ep.action_texts[0]
    assert first["thought"].startswith("<think> goal ") and first["thought"].endswith(ep.action_texts[0])
    # think-mode pairs keep their system text on disk (the training sequence and the eval ask with it)
    think = tmp_path / "think"
    args = [
        "collect",
        "env=gridworld",
        "policy=oracle",
        "episodes=2",
        f"out={think}",
        "annotate=gridworld-think",
    ]
    assert main(args) == 0
    pairs = [p for e in TrajectoryDataset(think) for ann in e.annotations for p in ann["qa"]]
    assert {p.get("system") for p in pairs} == {None, GRIDWORLD_THINK_PROMPT}
    assert all(p["a"].startswith("<think> ") for p in pairs if p.get("system"))
    # every step's outcome describes the frame the action led to (agent cell and heading after it)
    for t in range(ep.length):
        info = ep.infos[t + 1]
        heading = ep.action_texts[t].split()[-1]  # the agent always turns to the direction it tried
        assert ep.annotations[t]["outcome"] == outcome_text(tuple(info["agent"]), heading)
    assert ep.annotations[-1]["outcome"] == outcome_text(tuple(ep.infos[-1]["goal"]), heading)
    assert GridWorldAnnotator(outcomes=False).outcome(None, None, {}) is None
    with pytest.raises(ConfigError, match="annotate"):
        make_annotator("nope")
