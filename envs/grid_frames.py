"""Gridworld frames: drawing mazes as RGB images and decoding the symbolic state back from them.

Shape legend:
    R, C   maze rows / cols (cells)
    P      CELL_PX = 8, native pixels per cell side
    S      output frame side (obs_size); frames are (S, S, 3) uint8

Native cell drawing (8x8 pixels, row/col offsets 0..7 inside the cell):
    offsets 0 and 7 form the cell border: corners are always wall; an edge is wall-coloured when a
    wall closes that side (a wall between two cells therefore shows as a 2-pixel line);
    [1:7, 1:7] interior: floor, or goal colour on the goal cell;
    [2:6, 2:6] agent body: agent colour, with the half toward the heading in marker colour
               (heading 0 up -> rows 2:4, 1 right -> cols 4:6, 2 down -> rows 4:6, 3 left -> cols 2:4).
The goal ring (interior minus body) stays visible when the agent stands on the goal.

A native image (R*P, C*P) maps to any S x S frame by nearest-neighbour index maps, and decoding
classifies every frame pixel to its nearest palette colour, then counts classes per cell region
through the same maps: exact on rendered frames and robust to small pixel noise.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from worldbagel.errors import WorldBagelError, bad_argument

from .maze import cells_shape, maze_shape

CELL_PX = 8

FLOOR, WALL, GOAL, AGENT, MARKER, VOID = range(6)
PALETTE = np.array(
    [
        (235, 235, 225),  # floor
        (70, 70, 90),  # wall
        (50, 190, 80),  # goal
        (220, 40, 40),  # agent body
        (255, 210, 0),  # heading marker
        (0, 0, 0),  # void (outside the maze, ego view only)
    ],
    dtype=np.uint8,
)
PALETTE_NAMES = ("floor", "wall", "goal", "agent", "marker", "void")

# Body halves toward each heading, as (row slice, col slice) of cell offsets.
_HALF = (
    (slice(2, 4), slice(2, 6)),
    (slice(2, 6), slice(4, 6)),
    (slice(4, 6), slice(2, 6)),
    (slice(2, 6), slice(2, 4)),
)


class UndecodableFrame(WorldBagelError, ValueError):
    """A frame does not show exactly one agent with a heading and exactly one goal."""


def draw_maze(walls: np.ndarray, goal: tuple[int, int] | None) -> np.ndarray:
    """Native (R*P, C*P, 3) uint8 image of the maze and goal, without the agent."""
    rows, cols = cells_shape(walls)
    cls = np.full((rows * CELL_PX, cols * CELL_PX), FLOOR, dtype=np.uint8)
    p = CELL_PX
    # Corners of every cell.
    for o in (0, p - 1):
        for q in (0, p - 1):
            cls[o::p, q::p] = WALL
    # Horizontal walls above/below each cell (walls rows 0, 2, ... between cell rows).
    top = walls[0:-1:2, 1::2]  # (R, C): wall above cell (r, c)
    bottom = walls[2::2, 1::2]  # (R, C): wall below cell (r, c)
    left = walls[1::2, 0:-1:2]
    right = walls[1::2, 2::2]
    edge = slice(1, p - 1)
    for mask, row_off, col_off in (
        (top, 0, None),
        (bottom, p - 1, None),
        (left, None, 0),
        (right, None, p - 1),
    ):
        rr, cc = np.nonzero(mask)
        for r, c in zip(rr.tolist(), cc.tolist()):
            if row_off is not None:
                cls[r * p + row_off, c * p + edge.start : c * p + edge.stop] = WALL
            else:
                cls[r * p + edge.start : r * p + edge.stop, c * p + col_off] = WALL
    if goal is not None:
        r, c = goal
        cls[r * p + 1 : r * p + p - 1, c * p + 1 : c * p + p - 1] = GOAL
    return PALETTE[cls]


def draw_agent(image: np.ndarray, cell: tuple[int, int], heading: int) -> None:
    """Draw the agent body and heading marker into a native image, in place."""
    top, left = cell[0] * CELL_PX, cell[1] * CELL_PX
    block = image[top : top + CELL_PX, left : left + CELL_PX]
    block[2:6, 2:6] = PALETTE[AGENT]
    rs, cs = _HALF[heading]
    block[rs, cs] = PALETTE[MARKER]


@lru_cache(maxsize=64)
def index_map(native: int, out: int) -> np.ndarray:
    """Nearest-neighbour source index (into `native` pixels) of each of `out` output pixels."""
    idx = ((np.arange(out) + 0.5) * native / out).astype(np.int64)
    idx.setflags(write=False)
    return idx


def resample(image: np.ndarray, out_size: int) -> np.ndarray:
    """Nearest-neighbour resize of a native image to (out_size, out_size, 3)."""
    h, w = image.shape[:2]
    if h == out_size and w == out_size:
        return image
    # Two 1-D takes are ~7x faster than one broadcast 2-D fancy index.
    return image.take(index_map(h, out_size), axis=0).take(index_map(w, out_size), axis=1)


def classify(frame: np.ndarray) -> np.ndarray:
    """(H, W) palette class of each pixel of an (H, W, 3) frame (nearest palette colour)."""
    h, w = frame.shape[:2]
    f = frame.reshape(-1, 3).astype(np.float32)
    p = PALETTE.astype(np.float32)
    # argmin_k |f - p_k|^2 = argmin_k (|p_k|^2 - 2 f.p_k): one small matmul instead of a (H, W, K, 3) tensor.
    d = (p * p).sum(-1)[None, :] - 2.0 * (f @ p.T)
    return d.argmin(-1).astype(np.uint8).reshape(h, w)


def decode_frame(
    frame: np.ndarray, size: int | tuple[int, int] = 8, *, strict: bool = False, require_goal: bool = True
) -> dict[str, object] | None:
    """Recover `agent` (row, col), `heading` and `goal` (row, col) from a top-down gridworld frame.

    Args:
        frame: (S, S, 3) uint8 (or float in 0..255) top-down frame, e.g. a predicted frame.
        size: maze size in cells (int or (rows, cols)) of the env that drew it.
        strict: raise UndecodableFrame instead of returning None when the frame does not show
            exactly one agent with a clear heading and exactly one goal.
        require_goal: with False, a frame without a visible goal still decodes (goal None), e.g. to read
            only the agent when the goal's position is known from elsewhere.

    Returns:
        dict(agent=(r, c), heading=int, goal=(r, c)), or None when undecodable (strict=False).
    """
    rows, cols = maze_shape(size)
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise bad_argument("frame", frame.shape, "pass an (H, W, 3) RGB frame")
    try:
        return _decode(frame, rows, cols, require_goal)
    except UndecodableFrame:
        if strict:
            raise
        return None


def _decode(frame: np.ndarray, rows: int, cols: int, require_goal: bool = True) -> dict[str, object]:
    h, w = frame.shape[:2]
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    cls = classify(frame)
    src_r = index_map(rows * CELL_PX, h)
    src_c = index_map(cols * CELL_PX, w)
    cell_r, off_r = src_r // CELL_PX, src_r % CELL_PX
    cell_c, off_c = src_c // CELL_PX, src_c % CELL_PX
    cell_id = cell_r[:, None] * cols + cell_c[None, :]  # (H, W) cell of each pixel
    n_cells = rows * cols

    def region(rs: slice, cs: slice) -> np.ndarray:
        return ((off_r >= rs.start) & (off_r < rs.stop))[:, None] & ((off_c >= cs.start) & (off_c < cs.stop))[
            None, :
        ]

    def per_cell(mask: np.ndarray) -> np.ndarray:
        return np.bincount(cell_id[mask], minlength=n_cells).astype(np.float64)

    body = region(slice(2, 6), slice(2, 6))
    interior = region(slice(1, 7), slice(1, 7))
    ring = interior & ~body
    is_agent = (cls == AGENT) | (cls == MARKER)
    agent_frac = per_cell(body & is_agent) / np.maximum(per_cell(body), 1)
    goal_frac = per_cell(ring & (cls == GOAL)) / np.maximum(per_cell(ring), 1)

    agent_cell = _single_cell("agent", agent_frac, cols)
    goal_cell = _single_cell("goal", goal_frac, cols) if require_goal or goal_frac.max() >= 0.5 else None

    in_agent = cell_id == agent_cell[0] * cols + agent_cell[1]
    marker = in_agent & (cls == MARKER)
    body_px = (in_agent & body).sum()
    if marker.sum() < 0.25 * body_px:
        raise UndecodableFrame(f"agent at {agent_cell} shows no heading marker")
    halves = np.array([(marker & region(rs, cs)).sum() for rs, cs in _HALF])
    order = np.argsort(halves)[::-1]
    if halves[order[0]] == halves[order[1]]:
        raise UndecodableFrame(f"agent at {agent_cell} has an ambiguous heading marker {halves.tolist()}")
    return {"agent": agent_cell, "heading": int(order[0]), "goal": goal_cell}


def _single_cell(what: str, frac: np.ndarray, cols: int) -> tuple[int, int]:
    order = np.argsort(frac)[::-1]
    best, second = frac[order[0]], frac[order[1]]
    if best < 0.5:
        raise UndecodableFrame(f"no {what} found (best cell covers {best:.0%} of its {what} region)")
    if second >= 0.5:
        raise UndecodableFrame(f"more than one {what} found ({best:.0%} and {second:.0%} coverage)")
    idx = int(order[0])
    return (idx // cols, idx % cols)
