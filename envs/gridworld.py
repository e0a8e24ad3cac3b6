"""GridWorldEnv: seeded perfect mazes with a goal and a heading agent, rendered as RGB frames.

Shape legend: observations are (S, S, 3) uint8 with S = obs_size.

Layout seeds decide the maze. They are split so evaluation mazes are never trained on:
    train: layout seeds in [0, 1_000_000)          (TRAIN_LAYOUT_SEEDS)
    eval:  layout seeds in [1_000_000, 2_000_000)  (EVAL_LAYOUT_SEEDS)
    any:   layout seeds in [0, 2_000_000)
`reset(seed=s)` seeds the episode generator, which draws the layout seed from the split's range,
then the goal cell, the start cell (different from the goal) and the start heading.
`options={"layout_seed": k}` pins the maze (k must lie in the split's range); `options` may also pin
`agent` (row, col), `goal` (row, col) and `heading` (0 up, 1 right, 2 down, 3 left).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldbagel.errors import InvalidAction, bad_argument

from .grid_frames import CELL_PX, PALETTE, VOID, draw_agent, draw_maze, resample
from .maze import MOVES, UNREACHABLE, bfs_distances, can_move, generate_maze, greedy_action, maze_shape

TRAIN_LAYOUT_SEEDS = range(0, 1_000_000)
EVAL_LAYOUT_SEEDS = range(1_000_000, 2_000_000)
ANY_LAYOUT_SEEDS = range(0, 2_000_000)
SPLITS = {"train": TRAIN_LAYOUT_SEEDS, "eval": EVAL_LAYOUT_SEEDS, "any": ANY_LAYOUT_SEEDS}

VIEWS = ("topdown", "ego")


def layout_split(layout_seed: int) -> str:
    """'train' or 'eval': which split a layout seed belongs to."""
    if layout_seed in TRAIN_LAYOUT_SEEDS:
        return "train"
    if layout_seed in EVAL_LAYOUT_SEEDS:
        return "eval"
    raise bad_argument("layout_seed", layout_seed, f"layout seeds lie in [0, {ANY_LAYOUT_SEEDS.stop})")


class GridWorldEnv(gym.Env[np.ndarray, np.int64]):
    """A maze navigation toy world with exactly decodable frames (see `grid_frames.decode_frame`).

    Actions (allocentric): 0 move up, 1 move right, 2 move down, 3 move left. Moving into a wall
    leaves the cell unchanged; the heading always becomes the attempted direction.
    Reward: `goal_reward` on reaching the goal (terminated), otherwise `-step_penalty`; truncated
    after `max_steps` steps.

    `info` (reset and every step): agent (row, col), heading, goal (row, col), distance (BFS moves
    to the goal), layout_seed, success, steps and the step's action_text ("" after reset).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    action_names: tuple[str, ...] = ("move up", "move right", "move down", "move left")

    def __init__(
        self,
        size: int | Sequence[int] = 8,
        obs_size: int = 64,
        view: str = "topdown",
        ego_radius: int = 3,
        max_steps: int = 64,
        step_penalty: float = 0.01,
        goal_reward: float = 1.0,
        split: str = "train",
        render_mode: str | None = None,
    ) -> None:
        self.rows, self.cols = maze_shape(size)
        self.size = (self.rows, self.cols)
        if view not in VIEWS:
            raise bad_argument("view", view, f"choose one of {VIEWS}")
        if split not in SPLITS:
            raise bad_argument("split", split, f"choose one of {tuple(SPLITS)}")
        if not isinstance(ego_radius, int) or ego_radius < 1:
            raise bad_argument("ego_radius", ego_radius, "use a whole number of cells >= 1")
        native = CELL_PX * max(self.rows, self.cols)
        if not isinstance(obs_size, int) or obs_size < 8:
            raise bad_argument("obs_size", obs_size, "use an int >= 8 (pixels per frame side)")
        if view == "topdown" and obs_size < native:
            raise bad_argument(
                "obs_size",
                obs_size,
                f"top-down frames need >= {CELL_PX} pixels per cell: use obs_size >= {native} for a "
                f"{self.rows}x{self.cols} maze (or a smaller maze)",
            )
        if not isinstance(max_steps, int) or max_steps < 1:
            raise bad_argument("max_steps", max_steps, "use an int >= 1")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise bad_argument("render_mode", render_mode, "use 'rgb_array' or None")
        self.obs_size = obs_size
        self.view = view
        self.ego_radius = ego_radius
        self.max_steps = max_steps
        self.step_penalty = float(step_penalty)
        self.goal_reward = float(goal_reward)
        self.split = split
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (obs_size, obs_size, 3), np.uint8)
        self.action_space = spaces.Discrete(len(self.action_names))

        self.layout_seed: int = -1
        self.walls: np.ndarray = np.zeros((0, 0), bool)
        self.goal: tuple[int, int] = (0, 0)
        self.agent: tuple[int, int] = (0, 0)
        self.heading: int = 0
        self.steps = 0
        self.distance_map = np.zeros((0, 0), np.int64)
        self._base = np.zeros((0, 0, 3), np.uint8)
        self._frame: np.ndarray | None = None
        self._success = False

    # ----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"layout_seed", "agent", "goal", "heading"}
        if unknown:
            raise bad_argument("options", options, "known keys: layout_seed, agent, goal, heading")
        seeds = SPLITS[self.split]
        if options.get("layout_seed") is not None:
            layout_seed = int(options["layout_seed"])
            if layout_seed not in seeds:
                raise bad_argument(
                    "options['layout_seed']",
                    layout_seed,
                    f"split={self.split!r} uses layout seeds in [{seeds.start}, {seeds.stop}); "
                    "use split='eval' or 'any' for held-out layouts",
                )
        else:
            layout_seed = int(self.np_random.integers(seeds.start, seeds.stop))
        if layout_seed != self.layout_seed:
            self.walls = generate_maze(self.size, np.random.default_rng(layout_seed))
            self.layout_seed = layout_seed

        n_cells = self.rows * self.cols
        goal = self._cell_option(options, "goal", divmod(int(self.np_random.integers(n_cells)), self.cols))
        start_idx = int(self.np_random.integers(n_cells - 1))
        start_idx += start_idx >= goal[0] * self.cols + goal[1]  # any cell but the goal
        agent = self._cell_option(options, "agent", divmod(start_idx, self.cols))
        heading = int(self.np_random.integers(4))
        if options.get("heading") is not None:
            heading = int(options["heading"])
            if heading not in range(4):
                raise bad_argument(
                    "options['heading']", options["heading"], "use 0 up, 1 right, 2 down, 3 left"
                )

        self.goal, self.agent, self.heading = goal, agent, heading
        self.distance_map = bfs_distances(self.walls, goal)
        self._base = draw_maze(self.walls, goal)
        if self.view == "ego":
            pad = self.ego_radius * CELL_PX
            h, w = self._base.shape[:2]
            padded = np.empty((h + 2 * pad, w + 2 * pad, 3), np.uint8)
            padded[:] = PALETTE[VOID]
            padded[pad : pad + h, pad : pad + w] = self._base
            self._base = padded
        self.steps = 0
        self._success = agent == goal
        self._frame = self._draw()
        return self._frame.copy(), self._info("")

    def _cell_option(self, options: dict[str, Any], key: str, default: tuple[int, int]) -> tuple[int, int]:
        value = options.get(key)
        if value is None:
            return (int(default[0]), int(default[1]))
        try:
            r, c = int(value[0]), int(value[1])
            ok = len(value) == 2 and 0 <= r < self.rows and 0 <= c < self.cols
        except (TypeError, IndexError, ValueError):
            ok = False
        if not ok:
            raise bad_argument(
                f"options[{key!r}]", value, f"give a (row, col) inside the {self.rows}x{self.cols} maze"
            )
        return (r, c)

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise InvalidAction(
                f"invalid action={action!r}: GridWorld takes an int in 0..3 "
                f"({', '.join(f'{i} {n!r}' for i, n in enumerate(self.action_names))})"
            )
        action = int(action)
        self.heading = action
        if can_move(self.walls, self.agent, action):
            dr, dc = MOVES[action]
            self.agent = (self.agent[0] + dr, self.agent[1] + dc)
        self.steps += 1
        terminated = self.agent == self.goal
        self._success = terminated
        truncated = not terminated and self.steps >= self.max_steps
        reward = self.goal_reward if terminated else -self.step_penalty
        self._frame = self._draw()
        return self._frame.copy(), reward, terminated, truncated, self._info(self.action_names[action])

    def render(self) -> np.ndarray | None:
        """The current observation frame (render_mode='rgb_array'); None when render_mode is None."""
        if self.render_mode is None or self._frame is None:
            return None
        return self._frame.copy()

    def optimal_action(self) -> int:
        """The move on the (unique) shortest path to the goal; 0 when the agent is already there."""
        if self.agent == self.goal:
            return 0
        return greedy_action(self.walls, self.distance_map, self.agent)

    def render_topdown(self) -> np.ndarray:
        """The allocentric top-down frame of the current state (whatever `view` is), (S, S, 3) uint8."""
        image = draw_maze(self.walls, self.goal)
        draw_agent(image, self.agent, self.heading)
        size = max(self.obs_size, CELL_PX * max(self.rows, self.cols))
        return resample(image, size)

    # ----------------------------------------------------------------------------------------
    def _draw(self) -> np.ndarray:
        if self.view == "topdown":
            image = self._base.copy()
            draw_agent(image, self.agent, self.heading)
            return resample(image, self.obs_size)
        k, p = self.ego_radius, CELL_PX
        r, c = self.agent
        window = self._base[r * p : (r + 2 * k + 1) * p, c * p : (c + 2 * k + 1) * p].copy()
        draw_agent(window, (k, k), self.heading)
        window = np.rot90(window, k=self.heading)
        return np.ascontiguousarray(resample(np.ascontiguousarray(window), self.obs_size))

    def _info(self, action_text: str) -> dict[str, Any]:
        distance = int(self.distance_map[self.agent])
        return {
            "agent": self.agent,
            "heading": self.heading,
            "goal": self.goal,
            "distance": distance if distance != UNREACHABLE else -1,
            "layout_seed": self.layout_seed,
            "success": bool(self._success),
            "steps": self.steps,
            "action_text": action_text,
        }
