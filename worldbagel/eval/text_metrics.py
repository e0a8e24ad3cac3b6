"""Text metrics for question answering: normalised exact match and accuracy over a Q&A set.

Normalisation (`normalize_answer`): Unicode NFKC, lower case, every punctuation or symbol character
replaced by a space, whitespace collapsed. So "The Goal!" and " the   goal" match; "goal" and
"the goal" do not unless `drop_articles=True` (SQuAD-style removal of a / an / the).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from worldbagel.errors import bad_argument

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str, drop_articles: bool = False) -> str:
    """Case-, whitespace- and punctuation-insensitive form of an answer string."""
    if not isinstance(text, str):
        raise bad_argument("text", text, "pass answers as strings")
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    if drop_articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str | Sequence[str], drop_articles: bool = False) -> bool:
    """Whether a prediction equals the truth (or any of several accepted answers) after normalisation."""
    answers = [truth] if isinstance(truth, str) else list(truth)
    if not answers:
        raise bad_argument("truth", truth, "give at least one accepted answer")
    pred = normalize_answer(prediction, drop_articles)
    return any(pred == normalize_answer(a, drop_articles) for a in answers)


def qa_accuracy(
    predictions: Sequence[str], truths: Sequence[str | Sequence[str]], drop_articles: bool = False
) -> dict[str, float | int]:
    """Exact-match accuracy over a Q&A set.

    Args:
        predictions: one answer string per question.
        truths: per question, the accepted answer or a list of accepted answers.

    Returns:
        {"accuracy": fraction correct, "correct": count, "n": questions}.
    """
    if len(predictions) != len(truths):
        raise bad_argument(
            "len(predictions)", len(predictions), f"give one prediction per question ({len(truths)})"
        )
    if len(truths) == 0:
        raise bad_argument("truths", truths, "pass at least one question")
    correct = sum(exact_match(p, t, drop_articles) for p, t in zip(predictions, truths))
    return {"accuracy": correct / len(truths), "correct": int(correct), "n": len(truths)}
