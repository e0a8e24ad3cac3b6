"""Question answering about observed histories: exact-match accuracy on a dataset's Q&A annotations.

An annotation `{"q": ..., "a": ...}` in `episode.annotations[t]["qa"]` asks about frame t (the layout the
training data uses, worldbagel.data.sequence_plan.episode_texts). The model observes the true frames up
to t (the last `context` of them, with the actions between) and answers greedily with `WorldModel.reason`;
answers are compared with `exact_match` (normalised: case, punctuation, whitespace). A pair with a "system"
text (think mode, e.g. the gridworld's wall-follower thoughts) is asked in think mode with that system text,
and only the answer after </think> is compared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from worldbagel.data.trajectory import Episode
from worldbagel.think_text import split_think
from worldbagel.world_model import WorldModel

from .heldout import episode_instruction, evenly_spaced, has_actions
from .text_metrics import exact_match, qa_accuracy

__all__ = ["collect_questions", "evaluate_text"]

logger = logging.getLogger(__name__)


def collect_questions(episodes: Sequence[Episode]) -> list[tuple[Episode, int, str, str, str | None]]:
    """Every (episode, frame index, question, answer, think-mode system text or None) of the annotations."""
    out = []
    for ep in episodes:
        for t, ann in enumerate(ep.annotations or []):
            for pair in (ann or {}).get("qa") or []:
                if pair.get("q") and pair.get("a"):
                    out.append((ep, t, str(pair["q"]), str(pair["a"]), pair.get("system") or None))
    return out


def evaluate_text(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    max_questions: int = 64,
    context: int = 4,
    think: bool = False,
    max_new_tokens: int = 32,
    max_think_tokens: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """The metrics.json "text" section (`qa_accuracy` keys plus examples), or None when there is no Q&A."""
    questions = collect_questions(episodes)
    if not questions:
        return None
    chosen = [questions[i] for i in evenly_spaced(len(questions), max_questions)]
    preds, truths, examples, asked = [], [], [], []
    for n, (ep, t, q, a, system) in enumerate(chosen):
        start = max(0, t - context + 1)
        # a question annotated in think mode is asked with its own system text; its thought is not scored
        config = replace(world_model.config, think_prompt=system) if system else world_model.config
        w = WorldModel(world_model.pipe, world_model.codec, config).reset(
            ep.load_frame(start), instruction=episode_instruction(ep)
        )
        for i in range(start + 1, t + 1):
            if has_actions(ep):
                w.act(ep.action_texts[i - 1])
            w.observe(ep.load_frame(i))
        thinks = think or system is not None
        answer = w.reason(q, think=thinks, max_new_tokens=max_think_tokens if thinks else max_new_tokens)
        a = split_think(a)[1] if system else a
        preds.append(answer)
        truths.append(a)
        label = q[: q.index("?") + 1] if "?" in q else q  # its first sentence names it in tables
        asked.append(f"{label} (think)" if thinks else label)
        if len(examples) < 5:
            examples.append(
                {
                    "episode": ep.id,
                    "t": t,
                    "question": q,
                    "think": thinks,
                    "answer": a,
                    "predicted": answer,
                    "correct": exact_match(answer, a),
                }
            )
        if progress is not None:
            progress(n + 1, len(chosen))
    out = dict(qa_accuracy(preds, truths))
    # per question (its think form apart): a mixed accuracy hides which question fails
    groups: dict[str, tuple[list, list]] = {}
    for p, t, name in zip(preds, truths, asked):
        groups.setdefault(name, ([], []))[0].append(p)
        groups[name][1].append(t)
    out["by_question"] = {name: qa_accuracy(p, t) for name, (p, t) in groups.items()}
    out["examples"] = examples
    return out
