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

`annotate=gridworld-think` (no summary thought, `think_share=1.0`) asks every action question in think mode:
    S GRIDWORLD_THINK_PROMPT, Q the same question  A "<think> K B#>C)vK </think> move up"

That thought (`walk_thought`) is the right-hand wall follower's walk from the GOAL to the agent, a move per 3
characters: the move (^ > v <), the cell reached (one character per cell, `CELL_CHARS`) and its open sides (one
character, `OPEN_CHARS`). Every character follows from local facts (the two characters before it, the walls of
one named cell, the agent's cell), so a small model can write it, and the answer is the opposite of the last
move: the first move of the unique shortest path, which a 4-layer model does not find in one forward (a
plain answer does about as well as "the open move closest to the goal"). Train it with
`plan.think_samples=true`: each think question becomes a sample of its own, so the long thought never sits
between a context frame and the frame predicted from it (a thought there breaks the frame copy).

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
from worldbagel.envs.maze import MOVES, can_move, cells_shape, wall_follower_trace
from worldbagel.errors import bad_argument
from worldbagel.think_text import split_think

GRIDWORLD_INSTRUCTION = "reach the green goal"
GOAL_QUESTION = "Where is the goal?"
GRIDWORLD_THINK_PROMPT = "Think: follow the right-hand wall to the goal."
"""The system text of think mode for the gridworld model (configs/model/gridworld.yaml world.think_prompt). It
names the mode more than it describes it (the walk starts at the goal): the shipped model was trained with
exactly these words and answers in think mode only after them, so they stay as they are."""


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


CELL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuwxyz0123456789@$&"
"""One character per maze cell, row-major (cell (r, c) of a maze with `cols` columns is CELL_CHARS[r * cols + c]):
a cell named by ONE token is found in the frame by one attention lookup; two coordinate digits need two."""
MOVE_CHARS = "^>v<"
"""Walk characters of moves 0 up, 1 right, 2 down, 3 left."""
OPEN_CHARS = "!#%()*+-./:;=?[]"
"""A cell's open sides as one character: OPEN_CHARS[up + 2 right + 4 down + 8 left] (1 = open)."""


def walk_thought(walls: Any, agent: tuple[int, int], goal: tuple[int, int], answer: str) -> str:
    """'<think> K B#>C)vK </think> move up': the right-hand wall follower's walk from the GOAL to the agent.

    After `<think> ` comes the agent's cell (where the walk stops), a space, the goal's cell and its open
    sides, then per move: the move, the cell reached and that cell's open sides (the agent's cell ends the walk
    without them). The walk starts facing up and takes the first open move among turn right, straight, turn
    left, back (`maze.wall_follower_trace`), so every character follows from the two before it, the open sides
    of one named cell (read from the frame) or the agent's cell. In a perfect maze it reaches the agent first
    along the unique path, so its LAST move arrives from the agent's next cell on the shortest path: the
    answer is the opposite of the last move character.
    """
    rows, cols = cells_shape(walls)
    if rows * cols > len(CELL_CHARS):
        raise bad_argument(
            "walls", f"a {rows}x{cols} maze", f"the walk names at most {len(CELL_CHARS)} cells"
        )

    def name(cell: tuple[int, int], with_sides: bool = True) -> str:
        sides = sum(1 << m for m in range(4) if can_move(walls, cell, m))
        return CELL_CHARS[cell[0] * cols + cell[1]] + (OPEN_CHARS[sides] if with_sides else "")

    walk, prev = [], tuple(goal)
    for _, cell in wall_follower_trace(walls, goal, agent, heading=0):
        move = MOVES.index((cell[0] - prev[0], cell[1] - prev[1]))
        walk.append(MOVE_CHARS[move] + name(cell, with_sides=cell != tuple(agent)))
        prev = cell
    return f"<think> {name(agent, False)} {name(goal)}{''.join(walk)} </think> {answer}"


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
            thought = walk_thought(base.walls, agent, goal, action_text)
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
    "gridworld-think": lambda: GridWorldAnnotator(thoughts=False, think_share=1.0),
}


WALK_FIELDS = ("agent cell", "space", "goal cell", "goal open sides", "move", "cell", "open sides")
"""The fields of a walk's characters: the first four, then (move, cell, open sides) per move."""


def walk_first_error(thought: str, walk: str) -> str:
    """Where a generated thought (the text inside its think block) first leaves the true `walk_thought` text
    `walk`: "none" when they are equal, "length" when one stops early or runs on, else the field (`WALK_FIELDS`)
    of the first different character. A diagnostic: which step of the walk a model has not learned."""
    truth, got = split_think(walk)[0], thought.strip()
    if not truth:
        raise bad_argument(
            "walk", walk[:60], "pass the text of `walk_thought` (a <think> ... </think> block)"
        )
    k = next((i for i, (a, b) in enumerate(zip(got, truth)) if a != b), None)
    if k is None:
        return "none" if len(got) == len(truth) else "length"
    return WALK_FIELDS[k] if k < 4 else WALK_FIELDS[4 + (k - 4) % 3]


def make_annotator(name: str | None):
    """The annotator registered as `name` (None -> no annotations)."""
    if name is None:
        return None
    if name not in ANNOTATORS:
        raise bad_argument("annotate", name, f"use one of {sorted(ANNOTATORS)} or null")
    return ANNOTATORS[name]()
