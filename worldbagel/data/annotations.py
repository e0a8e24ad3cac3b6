"""Text annotations written beside trajectories: instructions, question/answer pairs and thoughts.

An annotator is called by `worldbagel.data.collect` as `annotator(env, obs, info)` on the observation each
action is taken from and returns any of `instruction`, `qa` ([{"q", "a"}]) and `thought`. The texts are the
world model's reasoning curriculum, so their wording is fixed here and shared with the policies that ask the
same questions at run time (`GOAL_QUESTION`; the next-action question is `actions.next_action_question`, the
one `ReasoningPolicy` asks).

GridWorld answers come from the symbolic state (the env's BFS oracle), never from pixels:

    instruction  "reach the green goal"                                    (first step only)
    Q "where is the goal?"          A "2 up 3 right" / "here"              (relative cell offset)
    Q next_action_question(codec)   A "move right"                         (first move of a shortest path)
    thought  "<think> goal 2 up 3 right, 7 moves away </think> move right"
    outcome  "at 3,5 facing right"                                       (the frame the action led to)

The outcome is written after the action and before the frame it describes; the world model learns to say
where the agent ends up (a cross-entropy target) and then draws that frame conditioned on its own words
(`WorldModelConfig.outcome_text`): the move and the wall check become a text decision with a direct loss
instead of 1-2 of a frame's 64 latent tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.errors import bad_argument

GRIDWORLD_INSTRUCTION = "reach the green goal"
GOAL_QUESTION = "Where is the goal?"


def outcome_text(agent: tuple[int, int], heading_name: str) -> str:
    """'at 3,5 facing right': the agent's cell (row, column) and heading after an action."""
    return f"at {int(agent[0])},{int(agent[1])} facing {heading_name}"


def relative_offset_text(agent: tuple[int, int], goal: tuple[int, int]) -> str:
    """'2 up 3 right' (rows then columns) or 'here' when the agent is on the goal."""
    dr, dc = goal[0] - agent[0], goal[1] - agent[1]
    parts = []
    if dr:
        parts.append(f"{abs(dr)} {'down' if dr > 0 else 'up'}")
    if dc:
        parts.append(f"{abs(dc)} {'right' if dc > 0 else 'left'}")
    return " ".join(parts) or "here"


class GridWorldAnnotator:
    """Questions, answers and thoughts for GridWorld steps, computed from the env's symbolic state."""

    def __init__(
        self, questions: bool = True, thoughts: bool = True, instruction: bool = True, outcomes: bool = True
    ):
        self.questions, self.thoughts, self.instruction = questions, thoughts, instruction
        self.outcomes = outcomes

    def __call__(self, env: Any, obs: Any, info: Mapping[str, Any]) -> dict[str, Any]:
        base = getattr(env, "unwrapped", env)
        if not hasattr(base, "optimal_action"):
            raise bad_argument("annotate", "gridworld", f"env {type(base).__name__} is not a GridWorld env")
        agent, goal = tuple(info["agent"]), tuple(info["goal"])
        where = relative_offset_text(agent, goal)
        out: dict[str, Any] = {}
        if self.instruction and int(info.get("steps", 0)) == 0:
            out["instruction"] = GRIDWORLD_INSTRUCTION
        action_text = base.action_names[int(base.optimal_action())]
        if self.questions:
            question = next_action_question(DiscreteActionCodec(base.action_names))
            out["qa"] = [{"q": GOAL_QUESTION, "a": where}, {"q": question, "a": action_text}]
        if self.thoughts:
            out["thought"] = (
                f"<think> goal {where}, {int(info['distance'])} moves away </think> {action_text}"
            )
        return out

    def outcome(self, env: Any, obs: Any, info: Mapping[str, Any]) -> str | None:
        """The text of the observation an action led to (None with outcomes=False)."""
        if not self.outcomes:
            return None
        base = getattr(env, "unwrapped", env)
        heading = base.action_names[int(info["heading"])].split()[-1]  # "move right" -> "right"
        return outcome_text(tuple(info["agent"]), heading)


ANNOTATORS: dict[str, Callable[[], Callable[[Any, Any, Mapping[str, Any]], Mapping[str, Any]]]] = {
    "gridworld": GridWorldAnnotator,
}


def make_annotator(name: str | None):
    """The annotator registered as `name` (None -> no annotations)."""
    if name is None:
        return None
    if name not in ANNOTATORS:
        raise bad_argument("annotate", name, f"use one of {sorted(ANNOTATORS)} or null")
    return ANNOTATORS[name]()
