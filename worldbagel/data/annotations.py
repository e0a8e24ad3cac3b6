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
    thought  "<think> goal 2 up 3 right, 7 moves away </think> move right"          (`thoughts`, default)
    outcome  "at 3,5 facing right"                                       (the frame the action led to)

`annotate=gridworld-think` (no summary thought, `think_share=0.5`) asks the action question in think mode on
half the steps instead of the plain form:
    S GRIDWORLD_THINK_PROMPT, Q the same question  A "<think> 3,4 to 5,6: r35r45d55l54 ... </think> move right"

That thought is the right-hand wall follower's walk from the agent to the goal (`maze.wall_follower_trace`), a
move per 3 characters: the branch (u/r/d/l, the move that last left the agent's cell) and the cell reached.
Every character follows from local facts (the last two cells, the walls of one cell, the start and goal
cells), so a small model can write it, and the answer is the last branch letter: the first move of the
unique shortest path, which a 4-layer model cannot find in one forward (~60 % plain-answer accuracy).
Run M (docs/training.md) trained on it; the walk's steps were not learned well enough to help yet.

The outcome is written after the action and before the frame it describes; the world model learns to say
where the agent ends up (a cross-entropy target) and then draws that frame conditioned on its own words
(`WorldModelConfig.outcome_text`): the move and the wall check become a text decision with a direct loss
instead of 1-2 of a frame's 64 latent tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from worldbagel.actions import DiscreteActionCodec, next_action_question
from worldbagel.errors import bad_argument

GRIDWORLD_INSTRUCTION = "reach the green goal"
GOAL_QUESTION = "Where is the goal?"
GRIDWORLD_THINK_PROMPT = "Think: follow the right-hand wall to the goal."
"""The system text of think mode for the gridworld model (configs/model/gridworld.yaml world.think_prompt)."""
BRANCH_LETTERS = "urdl"
"""Trace letters of moves 0 up, 1 right, 2 down, 3 left."""


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


def trace_thought(
    walls: Any, agent: tuple[int, int], goal: tuple[int, int], heading: int, answer: str
) -> str:
    """'<think> 3,4 to 5,6: r35r45 ... </think> move right': the wall follower's walk, then the answer."""
    from worldbagel.envs.maze import wall_follower_trace

    steps = "".join(
        f"{BRANCH_LETTERS[b]}{r}{c}" for b, (r, c) in wall_follower_trace(walls, agent, goal, heading)
    )
    return f"<think> {agent[0]},{agent[1]} to {goal[0]},{goal[1]}: {steps} </think> {answer}"


class GridWorldAnnotator:
    """Questions, answers and thoughts for GridWorld steps, computed from the env's symbolic state.

    `thoughts` writes the summary thought (goal offset and distance, then the move). `think_share` of the steps
    (drawn per state, reproducibly) ask the next-action question in think mode (system text
    `GRIDWORLD_THINK_PROMPT`, the answer preceded by the wall-follower walk) instead of the plain form: never
    both at one frame, or the thought's answer could be copied from the plain one."""

    def __init__(
        self,
        questions: bool = True,
        thoughts: bool = True,
        instruction: bool = True,
        outcomes: bool = True,
        think_share: float = 0.0,
    ):
        self.questions, self.thoughts, self.instruction = questions, thoughts, instruction
        self.outcomes = outcomes
        if not 0.0 <= think_share <= 1.0:
            raise bad_argument("think_share", think_share, "use a share of steps in [0, 1]")
        self.think_share = float(think_share)

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
        question = next_action_question(DiscreteActionCodec(base.action_names))
        qa = [{"q": GOAL_QUESTION, "a": where}] if self.questions else []
        if self._thinks(info, agent, goal):
            thought = trace_thought(base.walls, agent, goal, int(info["heading"]), action_text)
            qa.append({"q": question, "a": thought, "system": GRIDWORLD_THINK_PROMPT})
        elif self.questions:
            qa.append({"q": question, "a": action_text})
        if qa:
            out["qa"] = qa
        if self.thoughts:
            out["thought"] = (
                f"<think> goal {where}, {int(info['distance'])} moves away </think> {action_text}"
            )
        return out

    def _thinks(self, info: Mapping[str, Any], agent: tuple[int, int], goal: tuple[int, int]) -> bool:
        """Whether this state's action question is asked in think mode: a draw seeded by the state itself."""
        if not self.think_share or agent == goal:
            return False
        seed = [int(info.get("layout_seed", 0)), int(info.get("steps", 0)), *agent, *goal]
        return bool(np.random.default_rng(seed).random() < self.think_share)

    def outcome(self, env: Any, obs: Any, info: Mapping[str, Any]) -> str | None:
        """The text of the observation an action led to (None with outcomes=False)."""
        if not self.outcomes:
            return None
        base = getattr(env, "unwrapped", env)
        heading = base.action_names[int(info["heading"])].split()[-1]  # "move right" -> "right"
        return outcome_text(tuple(info["agent"]), heading)


ANNOTATORS: dict[str, Callable[[], Callable[[Any, Any, Mapping[str, Any]], Mapping[str, Any]]]] = {
    "gridworld": GridWorldAnnotator,
    "gridworld-think": lambda: GridWorldAnnotator(thoughts=False, think_share=0.5),
}


def make_annotator(name: str | None):
    """The annotator registered as `name` (None -> no annotations)."""
    if name is None:
        return None
    if name not in ANNOTATORS:
        raise bad_argument("annotate", name, f"use one of {sorted(ANNOTATORS)} or null")
    return ANNOTATORS[name]()
