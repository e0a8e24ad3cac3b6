"""Small gymnasium envs that stand in for worldbagel.envs in the data/policy/rollout tests.

They follow the API the real envs promise (action_names, optimal_action, info keys), so these tests do
not depend on the envs package; tests that run the real envs live next to these and skip when absent.
"""

from __future__ import annotations

import math
from collections import deque

import gymnasium as gym
import numpy as np

GRID_NAMES = ("move up", "move right", "move down", "move left")
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


class GridStandIn(gym.Env):
    """A size x size grid with random walls, a goal, BFS `optimal_action`, RGB obs of `obs_size` pixels."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        size: int = 5,
        obs_size: int = 20,
        max_steps: int = 30,
        crash_on_reset: int | None = None,
        render_mode: str | None = "rgb_array",
        split: str = "train",
    ):
        self.size, self.obs_size, self.max_steps, self.split = size, obs_size, max_steps, split
        self.render_mode = render_mode
        self.crash_on_reset = crash_on_reset
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Box(0, 255, (obs_size, obs_size, 3), np.uint8)
        self.action_names = GRID_NAMES
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets += 1
        while True:
            self.walls = self.np_random.random((self.size, self.size)) < 0.2
            cells = np.argwhere(~self.walls)
            if len(cells) < 2:
                continue
            a, g = self.np_random.choice(len(cells), 2, replace=False)
            self.agent, self.goal = tuple(int(v) for v in cells[a]), tuple(int(v) for v in cells[g])
            self.dist = self._bfs(self.goal)
            if self.dist.get(self.agent, -1) > 0:
                break
        self.t = 0
        return self._obs(), self._info()

    def _bfs(self, src):
        dist, q = {src: 0}, deque([src])
        while q:
            r, c = q.popleft()
            for dr, dc in MOVES:
                n = (r + dr, c + dc)
                if 0 <= n[0] < self.size and 0 <= n[1] < self.size and not self.walls[n] and n not in dist:
                    dist[n] = dist[(r, c)] + 1
                    q.append(n)
        return dist

    def optimal_action(self) -> int:
        r, c = self.agent
        best = min(range(4), key=lambda a: self.dist.get((r + MOVES[a][0], c + MOVES[a][1]), 10**9))
        return int(best)

    def step(self, action):
        if self.crash_on_reset is not None and self.resets == self.crash_on_reset and self.t == 2:
            raise RuntimeError("simulated simulator crash")
        dr, dc = MOVES[int(action)]
        n = (self.agent[0] + dr, self.agent[1] + dc)
        if 0 <= n[0] < self.size and 0 <= n[1] < self.size and not self.walls[n]:
            self.agent = n
        self.t += 1
        success = self.agent == self.goal
        return self._obs(), float(success), success, self.t >= self.max_steps and not success, self._info()

    def _info(self):
        return {
            "agent": self.agent,
            "goal": self.goal,
            "distance": self.dist[self.agent],
            "success": self.agent == self.goal,
        }

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[self.walls] = 90
        img[self.goal] = (0, 220, 0)
        img[self.agent] = (220, 0, 0)
        k = -(-self.obs_size // self.size)
        return np.kron(img, np.ones((k, k, 1), np.uint8))[: self.obs_size, : self.obs_size]

    def render(self):
        return self._obs()


class NavStandIn(gym.Env):
    """A first-person-style open room: pose (x, y, yaw), actions turn left/right 30 degrees, move 0.25 m."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = "rgb_array"):
        self.render_mode = render_mode
        self.action_names = ("turn left 30 degrees", "turn right 30 degrees", "move forward 0.25 m", "stop")
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(0, 4, 2)
        self.yaw = float(self.np_random.uniform(-math.pi, math.pi))
        self.goal = self.np_random.uniform(0, 4, 2)
        self.start_dist = float(np.hypot(*(self.goal - self.pos)))
        self.steps = 0
        return np.zeros((8, 8, 3), np.uint8), self._info()

    def step(self, action):
        name = self.action_names[int(action)]
        self.steps += 1
        if name.startswith("turn left"):
            self.yaw += math.radians(30)
        elif name.startswith("turn right"):
            self.yaw -= math.radians(30)
        elif name.startswith("move"):
            self.pos = self.pos + 0.25 * np.array([math.cos(self.yaw), math.sin(self.yaw)])
        info = self._info()
        done = name == "stop"
        info["success"] = done and info["distance_to_goal"] <= 0.3
        return np.zeros((8, 8, 3), np.uint8), float(info["success"]), done, self.steps >= 200, info

    def _info(self):
        return {
            "agent_pos": self.pos.copy(),
            "agent_yaw": self.yaw,
            "goal_pos": self.goal.copy(),
            "distance_to_goal": float(np.hypot(*(self.goal - self.pos))),
        }
