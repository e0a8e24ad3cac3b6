"""GridWorld text annotations: answers computed from the symbolic state, written by `collect`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import worldbagel.envs  # noqa: F401  (registers the envs)
from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.cli import main
from worldbagel.data.annotations import (
    CELL_CHARS,
    GOAL_QUESTION,
    GRIDWORLD_THINK_PROMPT,
    MOVE_CHARS,
    OPEN_CHARS,
    GridWorldAnnotator,
    make_annotator,
    outcome_text,
    relative_offset_text,
    walk_first_error,
    walk_thought,
)
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.errors import ConfigError
from worldbagel.think_text import split_think


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
    done = False
    while not done:
        notes = ann(env, obs, info)
        qa = {p["q"]: p for p in notes["qa"]}
        assert len(notes["qa"]) == 2  # the goal question, then ONE form of the action question
        action = env.unwrapped.optimal_action()
        pair = qa[ACTION_QUESTION]
        # gridworld-think: every action question in think mode: the walk from the goal, then the answer
        assert pair["system"] == GRIDWORLD_THINK_PROMPT
        thought, answer = split_think(pair["a"])
        agent, goal = tuple(info["agent"]), tuple(info["goal"])
        assert pair["a"] == walk_thought(env.unwrapped.walls, agent, goal, answer)
        stop, walk = thought.split(" ")
        assert stop == CELL_CHARS[agent[0] * 8 + agent[1]] and walk[0] == CELL_CHARS[goal[0] * 8 + goal[1]]
        assert walk[-1] == stop  # the walk ends on the agent's cell ...
        assert MOVE_CHARS[(action + 2) % 4] == walk[-2]  # ... arriving against the answer's direction
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
    half = GridWorldAnnotator(thoughts=False, think_share=0.5)
    forms = ["system" in half(env, *env.reset(seed=s))["qa"][1] for s in range(40)]
    assert any(forms) and not all(forms)  # about half the states think, a draw seeded by the state
    assert forms == ["system" in half(env, *env.reset(seed=s))["qa"][1] for s in range(40)]
    thinking = GridWorldAnnotator(questions=False, think_share=1.0)(env, *env.reset(seed=5))
    assert [p.get("system") for p in thinking["qa"]] == [GRIDWORLD_THINK_PROMPT]
    with pytest.raises(ConfigError, match="think_share"):
        GridWorldAnnotator(think_share=1.5)


def test_the_walk_thought_names_cells_and_open_sides_and_ends_on_the_agent():
    # a 2x2 maze open everywhere except between (0, 0) and (1, 0): a U from (0, 0) to (1, 0)
    walls = np.ones((5, 5), bool)
    for r, c in ((1, 1), (1, 3), (3, 1), (3, 3), (1, 2), (2, 3), (3, 2)):
        walls[r, c] = False
    # from the goal (0, 0) facing up: only right is open -> (0, 1) (open: down, left); facing right, its right
    # is down -> (1, 1) (open: up, left); facing down, its right is left -> (1, 0) = the agent
    thought = walk_thought(walls, agent=(1, 0), goal=(0, 0), answer="move right")
    sides = {cell: OPEN_CHARS[bits] for cell, bits in {(0, 0): 2, (0, 1): 4 + 8, (1, 1): 1 + 8}.items()}
    assert thought == (f"<think> C A{sides[0, 0]}>B{sides[0, 1]}vD{sides[1, 1]}<C </think> move right")
    with pytest.raises(ConfigError, match="walls"):
        walk_thought(np.zeros((19, 19), bool), (0, 0), (0, 1), "move left")  # 81 cells have no names

    # the diagnostic of a generated thought: the field of its first character that leaves the walk
    body = split_think(thought)[0]  # "C A#>B.vD=<C"-like: agent, goal + sides, then (move, cell, sides) x 3
    assert walk_first_error(body, thought) == "none"
    assert walk_first_error(body[:-2], thought) == "length"

    def wrong(i: int) -> str:
        return body[:i] + ("?" if body[i] != "?" else "!") + body[i + 1 :]

    fields = [walk_first_error(wrong(i), thought) for i in range(len(body))]
    assert fields[:4] == ["agent cell", "space", "goal cell", "goal open sides"]
    assert fields[4:] == ["move", "cell", "open sides"] * 2 + ["move", "cell"]
    with pytest.raises(ConfigError, match="walk"):
        walk_first_error(body, "move right")


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
