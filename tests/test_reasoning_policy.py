"""ReasoningPolicy: answer parsing, fallback + counting, think mode, batched questions, and the real fixture.

The random-weight fixture cannot answer sensibly, so valid answers come from a stub text generator; the
end-to-end tests run the real model and show the fallback path.
"""

from __future__ import annotations

import numpy as np
import pytest

import worldbagel.policies.reasoning as reasoning_mod
from worldbagel.actions import ContinuousActionCodec, DiscreteActionCodec, NavActionCodec
from worldbagel.envs import make_env
from worldbagel.errors import ConfigError, InvalidAction
from worldbagel.inference.generate import GenerationConfig, TextOutput
from worldbagel.inference.pipeline import VLM_THINK_SYSTEM_PROMPT
from worldbagel.policies import make_policy
from worldbagel.policies.reasoning import ReasoningPolicy, next_action_question, parse_action
from worldbagel.world_model import WorldModel, WorldModelConfig

CODEC = DiscreteActionCodec(["move up", "move right", "move down", "move left"])


def _wm(pipe) -> WorldModel:
    sampler = GenerationConfig(num_steps=3, cfg_text_scale=1.0, cfg_img_scale=1.0)
    return WorldModel(pipe, CODEC, WorldModelConfig(sampler=sampler, use_vit=False))


class _Answers:
    """Stands in for generate_text_batch: returns scripted answers and records the questions it was asked."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, contexts, max_new_tokens=500, **kw):
        pipe = contexts[0].pipe
        self.calls.append(
            [
                " | ".join(pipe.tokenizer.decode(s.data.tolist()) for s in c.segments if s.kind == "text")
                for c in contexts
            ]
        )
        answer = self.answers.pop(0)  # one scripted answer per call, given to every context of the batch
        return [TextOutput([], answer) for _ in contexts]


def test_parse_action_accepts_one_named_action_only():
    assert parse_action(CODEC, "Move_Right.") == 1
    assert parse_action(CODEC, "The agent should move down, then stop.") == 2
    for bad in ("move up or move left", "go north", "", "move upward"):
        with pytest.raises(InvalidAction):
            parse_action(CODEC, bad)
    nav = NavActionCodec()
    assert parse_action(nav, "I will turn left 30 degrees now") == nav.kinds.index("turn_left")
    cont = ContinuousActionCodec()
    assert np.allclose(parse_action(cont, "dx 0.50 dy 0.00 dyaw 0.0"), [0.5, 0.0, 0.0])
    with pytest.raises(InvalidAction):
        parse_action(cont, "forward a bit")
    assert next_action_question(CODEC).endswith(
        "Answer with one of: move up, move right, move down, move left."
    )


def test_valid_answers_are_parsed_and_invalid_ones_fall_back_and_count(tiny_pipe, frame, monkeypatch):
    stub = _Answers("move right", "I think move down.", "banana", "move up and move left")
    monkeypatch.setattr(reasoning_mod, "generate_text_batch", stub)
    policy = ReasoningPolicy(_wm(tiny_pipe), fallback="move left", seed=0)
    actions = [policy.act(frame, {}) for _ in range(4)]
    assert actions == [1, 2, 3, 3]
    assert policy.invalid_count == 2 and policy.question_count == 4
    assert policy.episode_stats() == {"questions": 4, "invalid_answers": 2, "invalid_rate": 0.5}
    assert [a.valid for a in policy.last_answers] == [False]
    assert policy.question in stub.calls[0][0]
    # the executed actions entered the history (closed loop): the 4th question saw 3 earlier actions
    assert stub.calls[3][0] == f"move right | move down | move left | {policy.question}"
    policy.reset()
    assert policy.episode_stats()["questions"] == 0


def test_think_mode_prompts_and_parses_after_think(tiny_pipe, frame, monkeypatch):
    stub = _Answers("<think> the goal is to the right </think> move right")
    monkeypatch.setattr(reasoning_mod, "generate_text_batch", stub)
    policy = ReasoningPolicy(_wm(tiny_pipe), think=True)
    assert policy.act(frame, {"instruction": "reach the green cell"}) == 1
    answer = policy.last_answers[0]
    assert answer.thought == "the goal is to the right" and answer.text == "move right" and answer.valid
    asked = stub.calls[0][0]
    assert asked.startswith("reach the green cell") and VLM_THINK_SYSTEM_PROMPT.split("\n")[0] in asked


def test_vector_envs_ask_all_questions_in_one_batch(tiny_pipe, frame, monkeypatch):
    stub = _Answers("move down")
    monkeypatch.setattr(reasoning_mod, "generate_text_batch", stub)
    policy = ReasoningPolicy(_wm(tiny_pipe))
    obs = np.stack([frame, frame[:, ::-1], frame[::-1]])
    actions = policy.act_batch(obs, {"steps": np.zeros(3, int), "_steps": np.ones(3, bool)})
    assert actions.tolist() == [2, 2, 2] and len(stub.calls) == 1 and len(stub.calls[0]) == 3


def test_random_fixture_end_to_end_falls_back_seeded(tiny_dir):
    env = make_env("WorldBagel/GridWorld-v0")
    runs = []
    for _ in range(2):
        policy = make_policy(
            "reasoning",
            env,
            seed=3,
            model={"name": "tiny", "path": str(tiny_dir)},
            world={"use_vit": False},
            max_new_tokens=6,
        )
        obs, info = env.reset(seed=0)
        actions = []
        for _ in range(3):
            actions.append(int(policy.act(obs, info)))
            obs, _, _, _, info = env.step(actions[-1])
        invalid = 0
        for a in policy.last_answers:
            try:
                parse_action(policy.codec, a.text)
            except InvalidAction:
                invalid += 1
        assert all(env.action_space.contains(a) for a in actions)
        runs.append((actions, policy.invalid_count, [a.text for a in policy.last_answers]))
        # random weights do not produce action names: every answer falls back and is counted
        assert policy.invalid_count == 3 and invalid == 1
    assert runs[0] == runs[1]  # greedy answers and the seeded fallback repeat exactly


def test_bad_fallback_is_a_clear_error(tiny_pipe):
    with pytest.raises(ConfigError, match="fallback"):
        ReasoningPolicy(_wm(tiny_pipe), fallback="fly")
    with pytest.raises(ConfigError, match="fallback"):
        ReasoningPolicy(_wm(tiny_pipe), fallback=9)
