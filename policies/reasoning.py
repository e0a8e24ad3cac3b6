"""ReasoningPolicy: ask the world model in text which action to take, parse the answer with the action codec.

Every real step the env's history (frames and executed actions, as in `WorldModelPlanner`) gets a question,
by default

    "Which action should the agent take next? Answer with one of: move up, move right, move down, move left."

(`NEXT_ACTION_QUESTION` filled with the codec's vocabulary; an `instruction` from the constructor or the
info opens the history). With `think=True` the model's thinking system text (`WorldModelConfig.think_prompt`,
else the official VLM one) precedes the question and only the text after `</think>` is parsed. `think=None`
(default) thinks when the world model has its own `think_prompt` (a model trained to think, as the shipped
gridworld model is) and the policy does not score. All envs of a vector env are asked together: their forked
histories go through ONE `generate_text_batch` call.

Parsing (`parse_action`): the whole answer through `codec.decode`; failing that, for codecs with a
vocabulary, the answer's single distinct action phrase (so "I would move up." parses as "move up", while an
answer naming two different actions does not). An answer that does not parse is invalid: the policy
returns the fallback action (`fallback="random"`: drawn from the policy's seeded generator; or a fixed
action / action text) and counts it. `invalid_count`, `question_count` and `last_answers` are public, and
`episode_stats()` returns them as a dict (e.g. for a rollout's metrics).

`choose="score"` (discrete codecs with a vocabulary) reads the model's action distribution instead of its
text: the log-likelihood of each action phrase as the answer (`score_text_batch`, one packed forward for all
envs and actions) gives pi(a | history) = softmax(log p / temperature), recorded in `Answer.probs`; no answer
is ever invalid. `temperature=0` (default) takes the most likely action / the greedy text; `temperature > 0`
samples (seeded by the policy's seed), from pi in score mode or token by token in generate mode. A greedy
policy repeats itself in a state it misjudges (a real step that undoes the last one, back and forth), a
sampled one does not get stuck there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from worldbagel.actions import NEXT_ACTION_QUESTION, ActionCodec, next_action_question, normalize_text
from worldbagel.errors import InvalidAction, bad_argument
from worldbagel.inference.context import extend_batch
from worldbagel.inference.generate import generate_text_batch, score_text_batch
from worldbagel.policies.base import single_spaces
from worldbagel.policies.world_model_policy import HistorySlot, WorldModelPolicy
from worldbagel.think_text import split_think
from worldbagel.world_model import WorldModel

__all__ = ["NEXT_ACTION_QUESTION", "Answer", "ReasoningPolicy", "next_action_question", "parse_action"]

logger = logging.getLogger(__name__)


def parse_action(codec: ActionCodec, text: str) -> Any:
    """The action an answer names (see the module docstring); raises InvalidAction otherwise."""
    try:
        return codec.decode(text)
    except InvalidAction:
        if not codec.vocabulary:
            raise
    norm = _words(text)
    found = {
        i
        for i, phrase in enumerate(codec.vocabulary)
        if re.search(rf"(?<![a-z0-9.]){re.escape(_words(phrase))}(?![a-z0-9])", norm)
    }
    if len(found) == 1:
        return codec.decode(codec.vocabulary[found.pop()])
    why = "it names several actions" if found else "it names no action"
    raise InvalidAction(f"answer {text!r} is not an action ({why}); valid forms: {codec.valid_forms()}")


def _words(text: str) -> str:
    """normalize_text, with punctuation other than '.' and '°' turned into spaces."""
    return " ".join(re.sub(r"[^a-z0-9.°]+", " ", normalize_text(text)).split())


@dataclass
class Answer:
    """One question asked at one step."""

    text: str
    """The answer (after </think> in think mode)."""
    thought: str
    action: Any
    """The action taken (the fallback when the answer was invalid)."""
    valid: bool
    probs: list[float] | None = None
    """choose="score": pi(a | history) over the codec's vocabulary (temperature 0: at temperature 1)."""


class ReasoningPolicy(WorldModelPolicy):
    """Acts by asking a WorldModel which action to take next (optionally thinking first)."""

    def __init__(
        self,
        world_model: WorldModel,
        action_space: gym.Space | None = None,
        question: str | None = None,
        think: bool | None = None,
        fallback: Any = "random",
        max_new_tokens: int | None = None,
        instruction: str | None = None,
        seed: int | None = None,
        choose: str = "generate",
        temperature: float = 0.0,
    ):
        if not isinstance(world_model, WorldModel):
            raise bad_argument("world_model", world_model, "pass a worldbagel.WorldModel")
        if world_model.codec is None:
            raise bad_argument(
                "world_model.codec", None, "the reasoning policy parses answers with the codec; give one"
            )
        self.world_model = world_model
        self.codec = world_model.codec
        if action_space is None:
            if not self.codec.vocabulary:
                raise bad_argument("action_space", None, "give the env's action space")
            action_space = gym.spaces.Discrete(len(self.codec.vocabulary))
        self.action_space = action_space
        self.question = question or next_action_question(self.codec)
        if think is None:  # a model trained to think does, unless its action phrases are scored
            think = bool(world_model.config.think_prompt) and choose != "score"
        self.think = bool(think)
        if choose not in ("generate", "score"):
            raise bad_argument("choose", choose, "use 'generate' (parse the answer text) or 'score'")
        if choose == "score" and (not self.codec.vocabulary or self.think):
            why = (
                "think mode (its answer follows a thought)" if self.think else "a codec without a vocabulary"
            )
            raise bad_argument(
                "choose", choose, f"scoring action phrases does not work with {why}; use 'generate'"
            )
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise bad_argument("temperature", temperature, "use 0 (most likely action) or a positive number")
        self.choose, self.temperature = choose, float(temperature)
        self.max_new_tokens = int(max_new_tokens or (512 if think else 16))
        if self.max_new_tokens < 1:
            raise bad_argument("max_new_tokens", max_new_tokens, "use an int >= 1")
        self.instruction = instruction
        self._fixed = None
        if fallback != "random":
            try:
                self._fixed = self.codec.decode(fallback) if isinstance(fallback, str) else fallback
                self.codec.encode(self._fixed)
            except InvalidAction as exc:
                raise bad_argument("fallback", fallback, f"use 'random' or a valid action ({exc})") from None
        self.fallback = fallback
        self._slots: list[HistorySlot] = []
        self.invalid_count = 0
        self.question_count = 0
        self.last_answers: list[Answer] = []
        self.reset(seed)

    @classmethod
    def from_env(
        cls, env: Any, seed: int | None = None, preset: str | None = "reasoning", **kwargs: Any
    ) -> ReasoningPolicy:
        """A reasoning policy for `env` (single or vector), asking as `worldbagel rollout policy=reasoning` does.

        Keyword arguments not given come from the policy preset `preset` (configs/policy/reasoning.yaml: the
        shipped gridworld model, think when the model can, sampled answers at temperature 0.5); `preset=None`
        starts from the bare defaults (greedy answers). `model` (preset name or mapping) is loaded with `sampler`
        and `world` unless a ready `world_model` is given; the env's action codec parses the answers. Every
        other keyword goes to the constructor."""
        world_model, space, kwargs = cls._from_env_parts(env, preset, kwargs)
        policy = cls(world_model, action_space=space, seed=seed, **kwargs)
        policy.observation_space = single_spaces(env)[0]
        return policy

    # ------------------------------------------------------------------ Policy protocol
    def reset(self, seed: int | None = None) -> None:
        """New episode in every env; resets the counters; `seed` reseeds the random fallback."""
        if seed is not None or not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(seed)
            self.action_space.seed(int(self._rng.integers(2**31)))
            self._torch_gen = torch.Generator().manual_seed(int(self._rng.integers(2**62)))
        for slot in self._slots:
            slot.new_episode = True
        self.invalid_count = 0
        self.question_count = 0

    def episode_stats(self) -> dict[str, Any]:
        """Counters since the last reset (for metrics): questions, invalid answers, invalid rate."""
        rate = self.invalid_count / self.question_count if self.question_count else 0.0
        return {"questions": self.question_count, "invalid_answers": self.invalid_count, "invalid_rate": rate}

    # ------------------------------------------------------------------ internals
    def _fallback(self) -> Any:
        if self._fixed is not None:
            return self._fixed
        return self.action_space.sample()

    def _questions(self, worlds: list[WorldModel]) -> list:
        """Forks of the histories with the question appended (after the think prompt), one packed prefill."""
        contexts = [w.context.fork() for w in worlds]
        texts = [[w.think_prompt, self.question] if self.think else [self.question] for w in worlds]
        extend_batch(contexts, [[c.text_segment(t) for t in ts] for c, ts in zip(contexts, texts)])
        return contexts

    def ask(self, worlds: list[WorldModel]) -> list[tuple[str, str]]:
        """(thought, answer) of the next-action question for each history, in one batched generation."""
        sampled = self.temperature > 0
        outs = generate_text_batch(
            self._questions(worlds),
            max_new_tokens=self.max_new_tokens,
            do_sample=sampled,
            temperature=self.temperature if sampled else 1.0,
            generator=self._torch_gen if sampled else None,
        )
        return [split_think(o.text) if self.think else ("", o.text.strip()) for o in outs]

    def action_probs(self, worlds: list[WorldModel]) -> np.ndarray:
        """pi(a | history) over the codec's vocabulary for each history [N, A] (temperature 0 reads as 1)."""
        logp = score_text_batch(self._questions(worlds), list(self.codec.vocabulary)).double()
        return torch.softmax(logp / (self.temperature or 1.0), dim=-1).numpy()

    def _act(self, observations: list, infos: list[dict]) -> list:
        worlds = self._observe_all(observations, infos)
        if self.choose == "score":
            return self._act_by_score(worlds)
        answers = []
        for slot, (thought, text) in zip(self._slots, self.ask(worlds)):
            self.question_count += 1
            try:
                action, valid = parse_action(self.codec, text), True
            except InvalidAction as exc:
                logger.debug("invalid answer: %s", exc)
                action, valid = self._fallback(), False
                self.invalid_count += 1
            slot.last_action = action
            answers.append(Answer(text, thought, action, valid))
        self.last_answers = answers
        return [a.action for a in answers]

    def _act_by_score(self, worlds: list[WorldModel]) -> list:
        answers = []
        for slot, probs in zip(self._slots, self.action_probs(worlds)):
            self.question_count += 1
            pick = int(self._rng.choice(len(probs), p=probs)) if self.temperature > 0 else int(probs.argmax())
            text = self.codec.vocabulary[pick]
            action = self.codec.decode(text)
            slot.last_action = action
            answers.append(Answer(text, "", action, True, [float(p) for p in probs]))
        self.last_answers = answers
        return [a.action for a in answers]

    def __repr__(self) -> str:
        return (
            f"ReasoningPolicy(choose={self.choose!r}, temperature={self.temperature}, think={self.think}, "
            f"fallback={self.fallback!r}, question={self.question!r})"
        )
