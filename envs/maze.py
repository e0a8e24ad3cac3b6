"""Perfect mazes on a cell grid: generation, BFS distances and shortest paths (pure numpy/python).

Layout encoding (shared by the gridworld env, its renderer and the oracle policy):

    walls: bool array (2*rows + 1, 2*cols + 1); True = wall.
      cell (r, c)             lives at walls[2r+1, 2c+1]   (always False: cells are floor)
      passage (r,c)->(r,c+1)  lives at walls[2r+1, 2c+2]   (False = open)
      passage (r,c)->(r+1,c)  lives at walls[2r+2, 2c+1]
      even/even entries are pillars (always True); the outer border is always wall.

Moves are allocentric: 0 up (row - 1), 1 right (col + 1), 2 down (row + 1), 3 left (col - 1).
A maze from `generate_maze` is *perfect*: exactly one simple path joins any two cells, so the
shortest path between two cells is unique.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from worldbagel.errors import bad_argument

MOVES: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""(d_row, d_col) of actions 0 up, 1 right, 2 down, 3 left."""

UNREACHABLE = -1


def maze_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise a maze size (an int for square mazes or (rows, cols)) to (rows, cols)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        rows = cols = int(size)
    elif (
        isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size)
    ):
        rows, cols = int(size[0]), int(size[1])
    else:
        raise bad_argument("size", size, "give the maze size in cells as an int or a (rows, cols) pair")
    if rows < 2 or cols < 2:
        raise bad_argument("size", size, "a maze needs at least 2 cells per side")
    return rows, cols


def cells_shape(walls: np.ndarray) -> tuple[int, int]:
    """(rows, cols) of cells of a wall grid."""
    h, w = walls.shape
    if h % 2 == 0 or w % 2 == 0 or h < 3 or w < 3:
        raise bad_argument("walls", walls.shape, "a wall grid has shape (2*rows+1, 2*cols+1)")
    return (h - 1) // 2, (w - 1) // 2


def generate_maze(size: int | Sequence[int], rng: np.random.Generator | int) -> np.ndarray:
    """Carve a perfect maze with a randomised depth-first search.

    Args:
        size: cells per side (int) or (rows, cols).
        rng: a numpy Generator, or an int seed for `np.random.default_rng`.

    Returns:
        walls: bool array (2*rows+1, 2*cols+1), True = wall (see the module docstring).
    """
    rows, cols = maze_shape(size)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    walls = np.ones((2 * rows + 1, 2 * cols + 1), dtype=bool)
    walls[1::2, 1::2] = False
    visited = np.zeros((rows, cols), dtype=bool)
    start = (int(rng.integers(rows)), int(rng.integers(cols)))
    visited[start] = True
    stack = [start]
    while stack:
        r, c = stack[-1]
        options = [
            (dr, dc)
            for dr, dc in MOVES
            if 0 <= r + dr < rows and 0 <= c + dc < cols and not visited[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        dr, dc = options[int(rng.integers(len(options)))]
        walls[2 * r + 1 + dr, 2 * c + 1 + dc] = False
        nxt = (r + dr, c + dc)
        visited[nxt] = True
        stack.append(nxt)
    return walls


def can_move(walls: np.ndarray, cell: tuple[int, int], action: int) -> bool:
    """Whether moving from `cell` in direction `action` (0 up, 1 right, 2 down, 3 left) is open."""
    dr, dc = MOVES[action]
    return not walls[2 * cell[0] + 1 + dr, 2 * cell[1] + 1 + dc]


def _check_cell(name: str, cell: Sequence[int], rows: int, cols: int) -> tuple[int, int]:
    try:
        r, c = int(cell[0]), int(cell[1])
    except (TypeError, IndexError, ValueError):
        raise bad_argument(name, cell, "give a (row, col) cell") from None
    if len(cell) != 2 or not (0 <= r < rows and 0 <= c < cols):
        raise bad_argument(name, cell, f"give a (row, col) cell inside the {rows}x{cols} maze")
    return r, c


def bfs_distances(walls: np.ndarray, source: Sequence[int]) -> np.ndarray:
    """Shortest-path length in moves from every cell to `source` (UNREACHABLE = -1 where cut off).

    Returns an int array (rows, cols).
    """
    rows, cols = cells_shape(walls)
    source = _check_cell("source", source, rows, cols)
    dist = np.full((rows, cols), UNREACHABLE, dtype=np.int64)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        d = dist[r, c] + 1
        for action, (dr, dc) in enumerate(MOVES):
            nr, nc = r + dr, c + dc
            if can_move(walls, (r, c), action) and dist[nr, nc] == UNREACHABLE:
                dist[nr, nc] = d
                queue.append((nr, nc))
    return dist


def greedy_action(walls: np.ndarray, dist_to_goal: np.ndarray, cell: Sequence[int]) -> int:
    """The first action (lowest index on ties) that lowers the distance to the goal by one.

    `dist_to_goal` comes from `bfs_distances(walls, goal)`. Raises ConfigError when the cell is
    the goal itself or cannot reach it.
    """
    r, c = int(cell[0]), int(cell[1])
    d = dist_to_goal[r, c]
    if d <= 0:
        reason = "it is the goal" if d == 0 else "the goal is unreachable from it"
        raise bad_argument("cell", (r, c), f"no move leads closer to the goal: {reason}")
    for action, (dr, dc) in enumerate(MOVES):
        if can_move(walls, (r, c), action) and dist_to_goal[r + dr, c + dc] == d - 1:
            return action
    raise AssertionError("inconsistent distance map")  # pragma: no cover - BFS guarantees a step


def shortest_path_actions(walls: np.ndarray, start: Sequence[int], goal: Sequence[int]) -> list[int]:
    """Actions of a shortest path from `start` to `goal` by breadth-first search.

    Args:
        walls: wall grid from `generate_maze`.
        start, goal: (row, col) cells.

    Returns:
        the list of moves (0 up, 1 right, 2 down, 3 left); empty when start == goal.
    """
    rows, cols = cells_shape(walls)
    start = _check_cell("start", start, rows, cols)
    goal = _check_cell("goal", goal, rows, cols)
    dist = bfs_distances(walls, goal)
    if dist[start] == UNREACHABLE:
        raise bad_argument("goal", goal, f"it cannot be reached from start={start}; pass a connected maze")
    actions: list[int] = []
    cell = start
    while cell != goal:
        action = greedy_action(walls, dist, cell)
        actions.append(action)
        cell = (cell[0] + MOVES[action][0], cell[1] + MOVES[action][1])
    return actions


def wall_follower_trace(
    walls: np.ndarray, start: Sequence[int], goal: Sequence[int], heading: int
) -> list[tuple[int, tuple[int, int]]]:
    """The right-hand wall follower's walk from `start` to `goal`, as (branch, cell) per move.

    Every rule is local: from the current cell, facing the direction of the last move (`heading` before the
    first), take the first open move among turn right, straight, turn left, back. In a perfect maze this walk
    tours each branch depth-first and reaches every cell. `branch` is the move that last left `start`, so the
    goal is reached inside the excursion whose branch is the first move of the unique shortest path:
    `trace[-1][0] == shortest_path_actions(walls, start, goal)[0]`. Empty when start == goal. At most
    2 * (cells - 1) moves (each passage once each way).
    """
    rows, cols = cells_shape(walls)
    cell = _check_cell("start", start, rows, cols)
    goal = _check_cell("goal", goal, rows, cols)
    if heading not in range(4):
        raise bad_argument("heading", heading, "use 0 up, 1 right, 2 down or 3 left")
    trace: list[tuple[int, tuple[int, int]]] = []
    branch = -1
    while cell != goal:
        if len(trace) > 2 * rows * cols:
            raise bad_argument("goal", goal, f"it cannot be reached from start={tuple(start)}")
        move = next(
            (heading + turn) % 4 for turn in (1, 0, 3, 2) if can_move(walls, cell, (heading + turn) % 4)
        )
        if cell == tuple(start):
            branch = move
        heading = move
        cell = (cell[0] + MOVES[move][0], cell[1] + MOVES[move][1])
        trace.append((branch, cell))
    return trace
