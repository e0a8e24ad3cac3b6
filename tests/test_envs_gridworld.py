"""GridWorld: maze generation, BFS, frames that decode exactly, splits, ego view, dynamics."""

from __future__ import annotations

import numpy as np
import pytest

from worldbagel.envs import EVAL_LAYOUT_SEEDS, TRAIN_LAYOUT_SEEDS, GridWorldEnv, layout_split
from worldbagel.envs.grid_frames import (
    AGENT,
    FLOOR,
    GOAL,
    MARKER,
    PALETTE,
    UndecodableFrame,
    classify,
    decode_frame,
)
from worldbagel.envs.maze import (
    MOVES,
    bfs_distances,
    can_move,
    generate_maze,
    shortest_path_actions,
    wall_follower_trace,
)
from worldbagel.errors import ConfigError, InvalidAction


@pytest.mark.parametrize("size", [2, 5, 8, (4, 9)])
def test_mazes_are_perfect_and_connected(size):
    for seed in range(20):
        walls = generate_maze(size, seed)
        rows, cols = (size, size) if isinstance(size, int) else size
        assert walls.shape == (2 * rows + 1, 2 * cols + 1)
        assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
        dist = bfs_distances(walls, (0, 0))
        assert (dist >= 0).all(), "every cell is reachable"
        openings = (~walls[1:-1:2, 2:-1:2]).sum() + (~walls[2:-1:2, 1:-1:2]).sum()
        assert openings == rows * cols - 1, "a spanning tree: exactly cells - 1 passages"


def test_generation_is_seeded():
    assert np.array_equal(generate_maze(8, 3), generate_maze(8, np.random.default_rng(3)))
    assert not np.array_equal(generate_maze(8, 3), generate_maze(8, 4))


def test_shortest_path_is_optimal_and_valid():
    rng = np.random.default_rng(0)
    for seed in range(30):
        walls = generate_maze(8, seed)
        start, goal = tuple(rng.integers(8, size=2)), tuple(rng.integers(8, size=2))
        actions = shortest_path_actions(walls, start, goal)
        assert len(actions) == bfs_distances(walls, goal)[start]
        cell = start
        for a in actions:
            assert can_move(walls, cell, a)
            cell = (cell[0] + MOVES[a][0], cell[1] + MOVES[a][1])
        assert cell == goal


def test_wall_follower_walks_open_passages_to_the_goal_inside_the_shortest_paths_first_branch():
    rng = np.random.default_rng(3)
    lengths = []
    for _ in range(200):
        walls = generate_maze((6, 8), rng)
        start, goal = tuple(map(int, rng.integers((6, 8)))), tuple(map(int, rng.integers((6, 8))))
        heading = int(rng.integers(4))
        trace = wall_follower_trace(walls, start, goal, heading)
        if start == goal:
            assert trace == []
            continue
        cell, last_left = start, None
        for branch, nxt in trace:  # every move goes through an open passage to a neighbour
            move = MOVES.index((nxt[0] - cell[0], nxt[1] - cell[1]))
            assert can_move(walls, cell, move)
            last_left = move if cell == start else last_left
            assert branch == last_left  # the branch is the move that last left the start
            cell = nxt
        assert cell == goal and goal not in [c for _, c in trace[:-1]]
        assert trace[-1][0] == shortest_path_actions(walls, start, goal)[0]
        assert len(trace) <= 2 * (6 * 8 - 1)
        lengths.append(len(trace))
    # the right hand first: at (0, 1), open left, right and down, facing right the walk turns right (down)
    walls = np.ones((5, 7), dtype=bool)
    walls[1::2, 1::2] = False
    walls[1, 2] = walls[1, 4] = walls[2, 3] = False  # (0,0)-(0,1)-(0,2) and (0,1)-(1,1)
    assert wall_follower_trace(walls, (0, 1), (1, 1), heading=1)[0] == (2, (1, 1))
    assert wall_follower_trace(walls, (0, 1), (0, 2), heading=3)[0] == (3, (0, 0))  # up is shut: straight on
    with pytest.raises(ConfigError, match="heading"):
        wall_follower_trace(walls, (0, 0), (0, 1), heading=4)


def test_following_bfs_in_env_reaches_goal_in_distance_moves():
    env = GridWorldEnv()
    for seed in range(20):
        _, info = env.reset(seed=seed)
        plan = shortest_path_actions(env.walls, info["agent"], info["goal"])
        assert len(plan) == info["distance"]
        for i, a in enumerate(plan):
            assert a == env.optimal_action()
            _, reward, terminated, truncated, info = env.step(a)
            assert info["distance"] == len(plan) - i - 1
        assert terminated and not truncated and info["success"] and reward == 1.0


def test_wall_collision_keeps_cell_and_turns_heading():
    env = GridWorldEnv()
    _, info = env.reset(seed=1)
    blocked = [a for a in range(4) if not can_move(env.walls, info["agent"], a)]
    assert blocked, "a perfect maze cell has at least one wall"
    a = blocked[0]
    _, reward, terminated, _, info2 = env.step(a)
    assert info2["agent"] == info["agent"] and info2["heading"] == a
    assert reward == pytest.approx(-0.01) and not terminated
    assert info2["action_text"] == GridWorldEnv.action_names[a]


def test_truncation_at_max_steps():
    env = GridWorldEnv(max_steps=3)
    env.reset(seed=0, options={"agent": (0, 0), "goal": (7, 7)})
    flags = [env.step(0)[3] for _ in range(3)]
    assert flags == [False, False, True]


def _random_states(env, n, rng):
    for _ in range(n):
        agent = tuple(int(v) for v in rng.integers(env.rows, size=2))
        goal = tuple(int(v) for v in rng.integers(env.rows, size=2))
        opts = {
            "layout_seed": int(rng.integers(1000)),
            "agent": agent,
            "goal": goal,
            "heading": int(rng.integers(4)),
        }
        yield env.reset(options=opts)


@pytest.mark.parametrize("obs_size", [64, 96, 128])
def test_decode_frame_is_exact_on_rendered_frames(obs_size):
    env = GridWorldEnv(obs_size=obs_size)
    rng = np.random.default_rng(obs_size)
    for obs, info in _random_states(env, 150, rng):
        assert decode_frame(obs, 8) == {
            "agent": info["agent"],
            "heading": info["heading"],
            "goal": info["goal"],
        }
    # Every heading after real steps too (agent on the goal included, at termination).
    obs, info = env.reset(seed=5)
    for a in rng.integers(4, size=40).tolist():
        obs, _, terminated, truncated, info = env.step(a)
        assert decode_frame(obs, 8) == {
            "agent": info["agent"],
            "heading": info["heading"],
            "goal": info["goal"],
        }
        if terminated or truncated:
            break


def test_decode_agent_standing_on_goal():
    env = GridWorldEnv()
    obs, info = env.reset(options={"layout_seed": 0, "agent": (3, 3), "goal": (3, 3), "heading": 2})
    assert decode_frame(obs) == {"agent": (3, 3), "heading": 2, "goal": (3, 3)}
    hidden = obs.copy()
    hidden[(classify(hidden) == GOAL)] = PALETTE[FLOOR]  # the goal ring painted over (a blurry prediction)
    assert decode_frame(hidden) is None
    assert decode_frame(hidden, require_goal=False) == {"agent": (3, 3), "heading": 2, "goal": None}


def test_decode_is_robust_to_small_noise_and_non_square_mazes():
    rng = np.random.default_rng(1)
    env = GridWorldEnv(size=(6, 8), obs_size=64)
    for obs, info in _random_states(env, 40, rng):
        noisy = np.clip(obs.astype(np.int16) + rng.integers(-25, 26, obs.shape), 0, 255).astype(np.uint8)
        assert decode_frame(noisy, (6, 8)) == {
            "agent": info["agent"],
            "heading": info["heading"],
            "goal": info["goal"],
        }
        assert decode_frame(noisy.astype(np.float32), (6, 8))["agent"] == info["agent"]


def test_undecodable_frames_return_none_or_raise():
    env = GridWorldEnv()
    obs, _ = env.reset(seed=0)
    blank = np.full_like(obs, 235)
    assert decode_frame(blank) is None
    with pytest.raises(UndecodableFrame, match="no agent"):
        decode_frame(blank, strict=True)
    # Two agents: paste the agent cell elsewhere.
    cls = classify(obs)
    ys, xs = np.nonzero((cls == AGENT) | (cls == MARKER))
    two = obs.copy()
    r0, c0 = ys.min() // 8 * 8, xs.min() // 8 * 8
    r1 = (r0 + 32) % 64
    two[r1 : r1 + 8, c0 : c0 + 8] = obs[r0 : r0 + 8, c0 : c0 + 8]
    with pytest.raises(UndecodableFrame, match="more than one agent"):
        decode_frame(two, strict=True)
    with pytest.raises(ConfigError, match="frame"):
        decode_frame(obs[:, :, 0])


def test_layout_splits_never_overlap():
    assert set(TRAIN_LAYOUT_SEEDS).isdisjoint(EVAL_LAYOUT_SEEDS)
    train, held_out = GridWorldEnv(split="train"), GridWorldEnv(split="eval")
    train_seeds = {train.reset(seed=s)[1]["layout_seed"] for s in range(150)}
    eval_seeds = {held_out.reset(seed=s)[1]["layout_seed"] for s in range(150)}
    assert all(layout_split(k) == "train" for k in train_seeds)
    assert all(layout_split(k) == "eval" for k in eval_seeds)
    assert train_seeds.isdisjoint(eval_seeds)
    with pytest.raises(ConfigError, match="layout_seed"):
        train.reset(options={"layout_seed": EVAL_LAYOUT_SEEDS.start})
    _, info = GridWorldEnv(split="any").reset(options={"layout_seed": EVAL_LAYOUT_SEEDS.start + 5})
    assert info["layout_seed"] == EVAL_LAYOUT_SEEDS.start + 5


def test_random_start_never_on_a_pinned_goal():
    env = GridWorldEnv(size=2, obs_size=16)
    for seed in range(40):
        _, info = env.reset(seed=seed, options={"goal": (1, 1)})
        assert info["agent"] != (1, 1) and info["distance"] > 0 and not info["success"]


def test_same_seed_same_maze_and_layout_pinning():
    env = GridWorldEnv()
    a, ia = env.reset(seed=11)
    b, ib = env.reset(seed=11)
    assert np.array_equal(a, b) and ia == ib
    walls = env.walls.copy()
    env.reset(seed=12, options={"layout_seed": ia["layout_seed"]})
    assert np.array_equal(env.walls, walls)


def test_ego_view_rotates_with_heading():
    ego = GridWorldEnv(view="ego", ego_radius=2, obs_size=40)
    frames = []
    for h in range(4):
        obs, _ = ego.reset(options={"layout_seed": 7, "agent": (4, 4), "goal": (0, 0), "heading": h})
        frames.append(obs)
        cls = classify(obs)
        centre = cls[16:24, 16:24]  # the agent cell sits in the middle, 8 px per cell
        marker_rows = np.nonzero((centre == MARKER).any(axis=1))[0]
        body_rows = np.nonzero((centre == AGENT).any(axis=1))[0]
        assert marker_rows.max() < body_rows.max() and marker_rows.min() < body_rows.min(), "heading is up"
    for h in range(1, 4):
        # Heading h sees the heading-0 view rotated by h quarter turns (counter-clockwise).
        rotated = np.rot90(frames[0], k=h)
        body = np.zeros(frames[0].shape[:2], bool)
        body[16:24, 16:24] = True
        assert np.array_equal(frames[h][~body], rotated[~body])


def test_topdown_render_matches_observation_and_info_keys():
    env = GridWorldEnv(render_mode="rgb_array")
    obs, info = env.reset(seed=2)
    assert np.array_equal(env.render(), obs) and np.array_equal(env.render_topdown(), obs)
    assert set(info) == {
        "agent",
        "heading",
        "goal",
        "distance",
        "layout_seed",
        "success",
        "steps",
        "action_text",
    }
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
    assert GridWorldEnv(render_mode=None).render() is None


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="obs_size"):
        GridWorldEnv(size=16, obs_size=64)
    with pytest.raises(ConfigError, match="view"):
        GridWorldEnv(view="side")
    with pytest.raises(ConfigError, match="split"):
        GridWorldEnv(split="test")
    env = GridWorldEnv()
    env.reset(seed=0)
    with pytest.raises(InvalidAction, match="move up"):
        env.step(4)
    with pytest.raises(ConfigError, match="agent"):
        env.reset(options={"agent": (9, 0)})
    with pytest.raises(ConfigError, match="options"):
        env.reset(options={"teleport": 1})
