"""The think-mode text format: the official thinking system prompts, and how a thought is read back.

BAGEL's think mode puts a system prompt before the question; the model then writes
`<think> reasoning </think> answer`. Plain string functions, shared by the inference pipeline, the world
model, the reasoning policy, the Q&A evaluation and the annotators that write thoughts for training
(which must not import torch for it).
"""

from __future__ import annotations

__all__ = ["GEN_THINK_SYSTEM_PROMPT", "VLM_THINK_SYSTEM_PROMPT", "split_think", "think_budget_warning"]

# The official thinking system prompts (inferencer.py constants).
VLM_THINK_SYSTEM_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user with the answer. \n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here </think> "
    "answer here"
)
GEN_THINK_SYSTEM_PROMPT = (
    "You should first think about the planning process in the mind and then generate the image. \n"
    "The planning process is enclosed within <think> </think> tags, i.e. <think> planning process here </think> "
    "image here"
)


def split_think(text: str) -> tuple[str, str]:
    """'<think> a </think> b' -> ('a', 'b'); text without a closed think block -> ('', text stripped)."""
    start, end = text.find("<think>"), text.find("</think>")
    if end < 0:
        return "", text.strip()
    thought = text[start + len("<think>") : end] if 0 <= start < end else text[:end]
    return thought.strip(), text[end + len("</think>") :].strip()


def think_budget_warning(
    text: str, tokens: int, budget: int, budget_key: str, answer: bool = True
) -> str | None:
    """A warning for think-mode output `text` that ends before its answer, saying how many of the `budget`
    tokens it used and which setting (`budget_key`) raises the budget; None when the thought is complete.

    With `answer` (a text answer follows the thought) the output must close `</think>` and say something
    after it; without (the thought comes before an image), closing `</think>` is enough."""
    end = text.find("</think>")
    if end >= 0 and (not answer or text[end + len("</think>") :].strip()):
        return None
    what = "the answer is empty" if answer else "the image follows an unfinished thought"
    missing = "before </think>" if end < 0 else "right after </think>"
    used = f"used all {budget} tokens" if tokens >= budget else f"stopped after {tokens} of {budget} tokens"
    return (
        f"think mode {used} ({budget_key}={budget}) {missing}: {what}. Raise the budget, "
        f"e.g. {budget_key}={max(4 * budget, 512)}"
    )
