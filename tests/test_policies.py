"""Policies: seeded determinism, the oracle's shortest paths, scripted replay, vector-env batching."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from standin_envs import GRID_NAMES, GridStandIn, NavStandIn

import worldbagel.envs  # noqa: F401  (registers WorldBagel/GridWorld-v0)
from worldbagel.actions import DiscreteActionCodec
from worldbagel.errors import ConfigError, InvalidAction, WorldBagelError
from worldbagel.policies import (
    OraclePolicy,
    Policy,
    RandomPolicy,
    ScriptedPolicy,
    make_policy,
    split_vector_infos,
)


@pytest.mark.parametrize(
    "name, kwargs",
    [("random", {}), ("oracle", {}), ("scripted", {"actions": ["move up", "move right", 2], "loop": True})],
)
def test_every_policy_keeps_the_protocol_through_an_episode(name, kwargs):
    """What RL code relies on (`Policy` in policies/base.py): each action belongs to the env's action space,
    `reset(seed)` replays an episode's actions, and `act_batch` gives one action per observation as an array."""
    env = GridStandIn(size=6, max_steps=12)
    policy = make_policy(name, env, seed=0, **kwargs)
    assert isinstance(policy, Policy) and policy.action_space == env.action_space

    def episode(seed: int) -> list[int]:
        policy.reset(seed=seed)
        obs, info = env.reset(seed=5)
        actions = []
        for _ in range(12):
            action = policy.act(obs, info)
            assert env.action_space.contains(np.int64(action)), action
            actions.append(int(action))
            obs, _, term, trunc, info = env.step(action)
            if term or trunc:
                break
        return actions

    first = episode(seed=1)
    assert len(first) >= 2 and episode(seed=1) == first
    policy.reset(seed=1)
    obs, infos = zip(*(env.reset(seed=s) for s in (5, 6, 7)))
    batch = policy.act_batch(np.stack(obs), list(infos))
    assert isinstance(batch, np.ndarray) and batch.shape == (3,)
    assert all(env.action_space.contains(np.int64(a)) for a in batch)


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Discrete(5, start=2),
        gym.spaces.Box(-1, 1, (3,), np.float32),
        gym.spaces.MultiDiscrete([3, 4]),
    ],
)
def test_random_policy_is_seeded_and_deterministic(space):
    a = RandomPolicy(space, seed=7)
    b = RandomPolicy(space, seed=7)
    seq_a = [a.act(None, {}) for _ in range(50)]
    seq_b = [b.act(None, {}) for _ in range(50)]
    assert all(np.array_equal(x, y) for x, y in zip(seq_a, seq_b))
    assert all(space.contains(np.asarray(x, dtype=space.dtype)) for x in seq_a)
    assert len({np.asarray(x).tobytes() for x in seq_a}) > 1  # not constant
    a.reset(seed=7)
    assert np.array_equal(a.act(None, {}), seq_a[0])
    c = RandomPolicy(space, seed=8)
    assert not all(np.array_equal(c.act(None, {}), x) for x in seq_a)


def test_random_discrete_covers_all_actions():
    p = RandomPolicy(gym.spaces.Discrete(4), seed=0)
    assert {int(p.act(None, {})) for _ in range(200)} == {0, 1, 2, 3}


def _run_oracle(env, seed):
    policy = OraclePolicy(env)
    obs, info = env.reset(seed=seed)
    start, steps, done = info["distance"], 0, False
    while not done:
        obs, _, term, trunc, info = env.step(policy.act(obs, info))
        steps += 1
        done = term or trunc
    return start, steps, info


def test_oracle_reaches_goal_in_shortest_distance_standin():
    for seed in range(10):
        start, steps, info = _run_oracle(GridStandIn(size=6, max_steps=50), seed)
        assert info["success"] and steps == start


def test_oracle_reaches_goal_in_shortest_distance_real_gridworld():
    env = gym.make("WorldBagel/GridWorld-v0")
    assert OraclePolicy(env).strategy == "optimal_action"
    for seed in range(5):
        start, steps, info = _run_oracle(env, seed)
        assert info["success"] and steps == start


def test_oracle_greedy_follower_reaches_goal_in_open_room():
    env = NavStandIn()
    policy = OraclePolicy(env, stop_radius=0.2)
    assert policy.strategy == "greedy"
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(policy.act(obs, info))
            done = term or trunc
        assert term and info["success"], seed


def test_oracle_without_expert_raises_clear_error():
    env = gym.make("CartPole-v1")
    with pytest.raises(WorldBagelError, match="OraclePolicy cannot act"):
        OraclePolicy(env)
    with pytest.raises(WorldBagelError, match="vector env needs optimal_action"):
        OraclePolicy(gym.vector.SyncVectorEnv([NavStandIn]))
    with pytest.raises(WorldBagelError, match="not bound"):
        OraclePolicy().act(None, {})


def test_scripted_replays_actions_and_texts():
    codec = DiscreteActionCodec(GRID_NAMES)
    p = ScriptedPolicy(
        ["move up", 1, "Move Down", np.int64(3)], codec=codec, action_space=gym.spaces.Discrete(4)
    )
    assert [int(p.act(None, {})) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(WorldBagelError, match="ran out of actions after 4"):
        p.act(None, {})
    p.reset()
    assert int(p.act(None, {})) == 0
    looping = ScriptedPolicy([2, 3], loop=True)
    assert [looping.act(None, {}) for _ in range(5)] == [2, 3, 2, 3, 2]


def test_scripted_envs_keep_their_own_place_in_the_script():
    p = ScriptedPolicy([0, 1, 2, 3])
    batch = np.zeros((2, 4))
    assert int(p.act(None, {})) == 0
    assert p.act_batch(batch).tolist() == [1, 1]  # a new env joins at env 0's place
    p.start_episode(1)
    assert p.act_batch(batch).tolist() == [2, 0] and p.position == 3
    p.start_episode()
    assert p.act_batch(batch).tolist() == [0, 0]


def test_scripted_rejects_bad_scripts_early():
    codec = DiscreteActionCodec(GRID_NAMES)
    with pytest.raises(InvalidAction, match="'fly'"):
        ScriptedPolicy(["move up", "fly"], codec=codec)
    with pytest.raises(ConfigError, match="codec"):
        ScriptedPolicy(["move up"])
    with pytest.raises(ConfigError, match="actions"):
        ScriptedPolicy([0, 7], action_space=gym.spaces.Discrete(4))
    with pytest.raises(ConfigError, match="actions"):
        ScriptedPolicy([])


def test_split_vector_infos_handles_masks_and_nesting():
    infos = {
        "distance": np.array([3, 0, 5]),
        "_distance": np.array([True, False, True]),
        "final_info": {"success": np.array([False, True, False]), "_success": np.array([False, True, False])},
        "_final_info": np.array([False, True, False]),
    }
    per_env = split_vector_infos(infos, 3)
    assert per_env[0] == {"distance": 3}
    assert per_env[1] == {"final_info": {"success": True}}
    assert per_env[2] == {"distance": 5}
    assert split_vector_infos(None, 2) == [{}, {}]
    with pytest.raises(ValueError, match="2 infos for a batch of 3"):
        split_vector_infos([{}, {}], 3)


def test_act_batch_with_sync_vector_env():
    n = 3
    vec = gym.vector.SyncVectorEnv([lambda: GridStandIn(size=6, max_steps=50) for _ in range(n)])
    obs, infos = vec.reset(seed=[10, 11, 12])
    oracle = make_policy("oracle", vec)
    rand = make_policy("random", vec, seed=3)
    assert oracle.action_space == gym.spaces.Discrete(4)
    assert rand.act_batch(obs, infos).shape == (n,)
    start = infos["distance"].copy()
    done_at = np.full(n, -1)
    for t in range(1, 60):
        obs, _, term, trunc, infos = vec.step(oracle.act_batch(obs, infos))
        for i in np.flatnonzero(term & (done_at < 0)):
            done_at[i] = t
        if (done_at > 0).all():
            break
    assert np.array_equal(done_at, start)
    scripted = ScriptedPolicy(["move up", "move left"], codec=DiscreteActionCodec(GRID_NAMES))
    assert scripted.act_batch(obs, infos).tolist() == [0, 0, 0]
    assert scripted.act_batch(obs, infos).tolist() == [3, 3, 3]


def test_base_act_batch_loops_act_with_split_infos():
    env = NavStandIn()
    vec = gym.vector.SyncVectorEnv([NavStandIn, NavStandIn])
    policy = OraclePolicy(env)
    obs, infos = vec.reset(seed=[0, 1])
    batch = policy.act_batch(obs, infos)
    singles = [policy.act(obs[i], split_vector_infos(infos, 2)[i]) for i in range(2)]
    assert batch.tolist() == [int(a) for a in singles]


def test_make_policy_unknown_name():
    with pytest.raises(ConfigError, match=r"invalid policy='nope'.*oracle"):
        make_policy("nope", GridStandIn())


def test_oracle_act_batch_with_make_vec_gridworld():
    vec = gym.make_vec("WorldBagel/GridWorld-v0", num_envs=2, vectorization_mode="sync")
    policy = make_policy("oracle", vec)
    obs, infos = vec.reset(seed=[3, 4])
    start = infos["distance"].copy()
    done_at = np.full(2, -1)
    for t in range(1, 80):
        obs, _, term, _, infos = vec.step(policy.act_batch(obs, infos))
        done_at[(done_at < 0) & term] = t
        if (done_at > 0).all():
            break
    assert np.array_equal(done_at, start)
    vec.close()


def test_oracle_uses_habitat_shortest_path_follower_when_importable(monkeypatch):
    # habitat-sim cannot be installed here: a fake `habitat` module stands in for habitat-lab's follower,
    # and the test checks the plumbing (which goal is asked for, id -> env action mapping, None -> stop).
    import sys
    import types

    calls = []

    class FakeFollower:
        def __init__(self, sim, goal_radius, return_one_hot):
            calls.append(("init", sim, goal_radius, return_one_hot))
            self.plan = [1, 2, 3, None]

        def get_next_action(self, goal):
            calls.append(("goal", tuple(goal)))
            return self.plan.pop(0)

    mod = types.ModuleType("habitat.tasks.nav.shortest_path_follower")
    mod.ShortestPathFollower = FakeFollower
    for name in ("habitat", "habitat.tasks", "habitat.tasks.nav"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "habitat.tasks.nav.shortest_path_follower", mod)

    class FakeHabitatEnv(gym.Env):
        # MiniWorld-like order on purpose, to check the mapping goes through names, not ids.
        action_names = ("turn left 30 degrees", "turn right 30 degrees", "move forward 0.25 m", "stop")
        action_space = gym.spaces.Discrete(4)
        observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)

        def __init__(self):
            goal = types.SimpleNamespace(position=[1.0, 0.0, -2.0])
            self.habitat_env = types.SimpleNamespace(
                sim="SIM", current_episode=types.SimpleNamespace(goals=[goal])
            )

    policy = OraclePolicy(FakeHabitatEnv(), stop_radius=0.3)
    assert policy.strategy == "habitat"
    acts = [int(policy.act(None, {})) for _ in range(4)]
    assert acts == [2, 0, 1, 3]  # move_forward, turn_left, turn_right, stop (None)
    assert calls[0] == ("init", "SIM", 0.3, False) and calls[1] == ("goal", (1.0, 0.0, -2.0))


def test_make_policy_refuses_an_unknown_kwarg_naming_it_and_the_known_ones():
    from worldbagel.errors import ConfigError
    from worldbagel.policies import make_policy
    from worldbagel.rollout import build_env

    env = build_env("WorldBagel/GridWorld-v0", {})
    with pytest.raises(ConfigError, match=r"policy.kwargs.stop_radus=.*'oracle' takes \['stop_radius'\]"):
        make_policy("oracle", env, stop_radus=1.0)
    with pytest.raises(ConfigError, match="'random' takes no keyword arguments"):
        make_policy("random", env, foo=1)
