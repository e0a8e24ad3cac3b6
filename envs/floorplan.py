"""Geodesic distances on a 2-D floorplan given by wall segments (for MiniWorld SPL and its oracle).

Shape legend:
    N        wall segments; segs (N, 2, 2) hold the (x, z) end points of each segment
    H, W     grid rows (along z) and cols (along x) at `resolution` metres per cell

A cell is free when its centre lies inside the floorplan bounds and at least `clearance` metres from
every wall segment: exactly MiniWorld's collision rule for a disc-shaped agent of that radius.
`distance_field` gives octile (8-connected) grid distances to a goal for every cell (Dijkstra; at
most ~8% above the true geodesic), used to steer. `path_length` gives one start-goal length: A* on the
grid, then the cell path pulled taut, which removes most of the octile over-estimate.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

_STEPS = [(dr, dc, math.hypot(dr, dc)) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]


class Floorplan:
    """Free-space grid of a floorplan, with geodesic distance fields to goal points."""

    def __init__(
        self,
        segs: np.ndarray,
        bounds: tuple[float, float, float, float],
        clearance: float,
        resolution: float = 0.2,
    ) -> None:
        """
        Args:
            segs: (N, 2, 2) wall segments as (x, z) end points.
            bounds: (min_x, max_x, min_z, max_z) of the floorplan.
            clearance: agent radius in metres (cells closer than this to a wall are blocked).
            resolution: cell side in metres.
        """
        self.resolution = float(resolution)
        min_x, max_x, min_z, max_z = bounds
        self.origin = (float(min_x), float(min_z))
        self.shape = (
            max(1, math.ceil((max_z - min_z) / resolution)),
            max(1, math.ceil((max_x - min_x) / resolution)),
        )
        self.free = np.ones(self.shape, dtype=bool)
        for seg in np.asarray(segs, float).reshape(-1, 2, 2):
            # Only cells within `clearance` of the segment's bounding box can be blocked by it.
            lo = seg.min(0) - clearance
            hi = seg.max(0) + clearance
            r0, c0 = self.cell((lo[0], lo[1]))
            r1, c1 = self.cell((hi[0], hi[1]))
            zs = self.origin[1] + (np.arange(r0, r1 + 1) + 0.5) * resolution
            xs = self.origin[0] + (np.arange(c0, c1 + 1) + 0.5) * resolution
            pts = np.stack(np.meshgrid(xs, zs), axis=-1)  # (h, w, 2) as (x, z)
            near = _segment_distance(pts, seg) < clearance
            self.free[r0 : r1 + 1, c0 : c1 + 1] &= ~near

    def cell(self, xz: tuple[float, float] | np.ndarray) -> tuple[int, int]:
        """Grid (row, col) containing point (x, z), clipped to the grid."""
        r = int((xz[1] - self.origin[1]) // self.resolution)
        c = int((xz[0] - self.origin[0]) // self.resolution)
        return min(max(r, 0), self.shape[0] - 1), min(max(c, 0), self.shape[1] - 1)

    def centre(self, cell: tuple[int, int]) -> np.ndarray:
        """(x, z) of a cell centre."""
        return np.array(
            [
                self.origin[0] + (cell[1] + 0.5) * self.resolution,
                self.origin[1] + (cell[0] + 0.5) * self.resolution,
            ]
        )

    def nearest_free(self, xz: tuple[float, float] | np.ndarray) -> tuple[int, int] | None:
        """The free cell nearest to a point (the point's own cell when free), or None if none is free."""
        r, c = self.cell(xz)
        if self.free[r, c]:
            return r, c
        rr, cc = np.nonzero(self.free)
        if rr.size == 0:
            return None
        i = int(np.argmin((rr - r) ** 2 + (cc - c) ** 2))
        return int(rr[i]), int(cc[i])

    def distance_field(self, goal_xz: tuple[float, float] | np.ndarray) -> np.ndarray:
        """(H, W) geodesic distance in metres from every free cell to the goal point (inf where cut off).

        The goal cell itself may be blocked (a goal object near a wall); the search starts from it anyway.
        """
        h, w = self.shape
        dist = np.full(self.shape, np.inf)
        src = self.cell(goal_xz)
        src_xz = self.centre(src)
        dist[src] = float(np.hypot(*(np.asarray(goal_xz, float)[:2] - src_xz)))
        free = self.free
        heap = [(dist[src], src[0], src[1])]
        res = self.resolution
        while heap:
            d, r, c = heapq.heappop(heap)
            if d > dist[r, c]:
                continue
            for dr, dc, step in _STEPS:
                nr, nc = r + dr, c + dc
                if not (0 <= nr < h and 0 <= nc < w) or not free[nr, nc]:
                    continue
                if dr and dc and not (free[r + dr, c] and free[r, c + dc]):
                    continue  # no corner cutting
                nd = d + step * res
                if nd < dist[nr, nc]:
                    dist[nr, nc] = nd
                    heapq.heappush(heap, (nd, nr, nc))
        return dist

    def distance(self, field: np.ndarray, xz: tuple[float, float] | np.ndarray) -> float:
        """Geodesic distance from point (x, z) using a field from `distance_field` (inf if unreachable)."""
        cell = self.nearest_free(xz)
        if cell is None or not np.isfinite(field[cell]):
            return math.inf
        return float(field[cell] + np.hypot(*(np.asarray(xz, float)[:2] - self.centre(cell))))

    def waypoint(
        self, field: np.ndarray, xz: tuple[float, float] | np.ndarray, lookahead: int = 12
    ) -> np.ndarray | None:
        """(x, z) of the farthest cell, at most `lookahead` steps down the distance field from a point,
        that is reachable in a straight line through free cells (None when the point is cut off)."""
        start = self.nearest_free(xz)
        if start is None or not np.isfinite(field[start]):
            return None
        h, w = self.shape
        chain = [start]
        for _ in range(lookahead):
            r, c = chain[-1]
            best, best_d = chain[-1], field[r, c]
            for dr, dc, _step in _STEPS:
                nr, nc = r + dr, c + dc
                if 0 <= nr < h and 0 <= nc < w and field[nr, nc] < best_d:
                    best, best_d = (nr, nc), field[nr, nc]
            if best == chain[-1]:
                break
            chain.append(best)
        origin = np.asarray(xz, float)[:2]
        for cell in reversed(chain[1:]):
            if self.line_free(origin, self.centre(cell)):
                return self.centre(cell)
        return self.centre(chain[1] if len(chain) > 1 else chain[0])

    def path_length(
        self, xz: tuple[float, float] | np.ndarray, goal_xz: tuple[float, float] | np.ndarray
    ) -> float:
        """Length of a shortest free-space path from point `xz` to point `goal_xz` (inf if cut off).

        A* on the grid (octile heuristic) finds the cell path; pulling it taut (each leg runs to the
        farthest following path point in straight-line sight) removes most of the octile detour.
        """
        start = self.nearest_free(xz)
        if start is None:
            return math.inf
        cells = self._astar(start, self.cell(goal_xz))
        if cells is None:
            return math.inf
        points = (
            [np.asarray(xz, float)[:2]]
            + [self.centre(c) for c in cells[1:-1]]
            + [np.asarray(goal_xz, float)[:2]]
        )
        total, i = 0.0, 0
        while i < len(points) - 1:
            j = i + 1
            while j + 1 < len(points) and self.line_free(points[i], points[j + 1]):
                j += 1
            total += float(np.hypot(*(points[j] - points[i])))
            i = j
        return total

    def _astar(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]] | None:
        """Cells of a shortest 8-connected path start -> goal (the goal cell may be blocked), or None."""
        h, w = self.shape
        res, diag = self.resolution, math.sqrt(2.0) - 1.0

        def heuristic(r: int, c: int) -> float:
            dr, dc = abs(r - goal[0]), abs(c - goal[1])
            return res * (max(dr, dc) + diag * min(dr, dc))

        cost = {start: 0.0}
        parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        heap = [(heuristic(*start), 0.0, start)]
        free = self.free
        while heap:
            _, g, cell = heapq.heappop(heap)
            if cell == goal:
                path = [cell]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1]
            if g > cost[cell]:
                continue
            r, c = cell
            for dr, dc, step in _STEPS:
                nr, nc = r + dr, c + dc
                nxt = (nr, nc)
                if not (0 <= nr < h and 0 <= nc < w) or not (free[nr, nc] or nxt == goal):
                    continue
                if dr and dc and not (free[r + dr, c] and free[r, c + dc]):
                    continue
                ng = g + step * res
                if ng < cost.get(nxt, math.inf):
                    cost[nxt], parent[nxt] = ng, cell
                    heapq.heappush(heap, (ng + heuristic(nr, nc), ng, nxt))
        return None

    def line_free(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether every grid cell along the segment a -> b (points (x, z)) is free."""
        n = max(2, int(np.ceil(np.hypot(*(b - a)) / (0.5 * self.resolution))) + 1)
        pts = a[None] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None]
        rows = np.clip(((pts[:, 1] - self.origin[1]) // self.resolution).astype(int), 0, self.shape[0] - 1)
        cols = np.clip(((pts[:, 0] - self.origin[0]) // self.resolution).astype(int), 0, self.shape[1] - 1)
        # The first sample is the agent's own cell, which may sit just inside the clearance band.
        return bool(self.free[rows[1:], cols[1:]].all())


def _segment_distance(points: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance from `points` (..., 2) to one segment `seg` (2, 2), shaped like points[..., 0]."""
    a, ab = seg[0], seg[1] - seg[0]
    t = np.clip(((points - a) * ab).sum(-1) / max(float((ab**2).sum()), 1e-12), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.sqrt(((points - closest) ** 2).sum(-1))
