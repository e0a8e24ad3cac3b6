"""Stable-Baselines3 interop: every policy's `predict` run by SB3's own `evaluate_policy`, the oracle on SB3 VecEnvs.

GridWorld rewards make an episode's return tell its outcome: 1 - 0.01 * (L - 1) for reaching the goal in L steps,
-0.01 * L for a truncated one.
"""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import BasePolicy as SB3Policy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import worldbagel.policies.reasoning as reasoning_mod
from worldbagel.actions import DiscreteActionCodec
from worldbagel.envs import make_env, shortest_path_actions
from worldbagel.errors import ConfigError, WorldBagelError
from worldbagel.inference.generate import TextOutput
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.policies import BasePolicy, OraclePolicy, RandomPolicy, ScriptedPolicy, make_policy
from worldbagel.policies.reasoning import ReasoningPolicy
from worldbagel.world_model import WorldModel, WorldModelConfig

GRID = "WorldBagel/GridWorld-v0"
PIN = {"layout_seed": 3, "agent": (0, 0), "goal": (7, 7), "heading": 0}


def _success(length: int) -> float:
    return 1.0 - 0.01 * (length - 1)


class Pinned(gym.Wrapper):
    """Every reset starts the same maze, start and goal (SB3 VecEnvs pass reset options only once)."""

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options=PIN)


def _oracle_episode(env) -> tuple[int, int]:
    """(start distance, steps) of one oracle episode from the env's current reset."""
    policy = OraclePolicy(env)
    info = env.unwrapped._info("")
    start, steps, done = info["distance"], 0, False
    while not done:
        _, _, term, trunc, info = env.step(policy.act(None, info))
        steps, done = steps + 1, term or trunc
    assert info["success"]
    return start, steps


def test_predict_has_sb3_signature():
    ours = inspect.signature(BasePolicy.predict).parameters
    theirs = inspect.signature(SB3Policy.predict).parameters
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


def test_predict_tells_one_observation_from_a_batch():
    env = make_env(GRID)
    obs, _ = env.reset(seed=0)
    policy = RandomPolicy.from_env(env, seed=0)
    action, state = policy.predict(obs, deterministic=True)
    assert isinstance(action, np.ndarray) and action.shape == () and env.action_space.contains(int(action))
    assert state is None
    actions, state = policy.predict(np.stack([obs] * 3), state=("kept",), episode_start=np.ones(3, bool))
    assert actions.shape == (3,) and all(env.action_space.contains(int(a)) for a in actions)
    assert state == ("kept",)  # returned as given, as SB3's non-recurrent policies do
    with pytest.raises(ConfigError, match=r"shape \(64, 64\).*\(n_envs, 64, 64, 3\)"):
        policy.predict(obs[..., 0])
    with pytest.raises(ConfigError, match="one flag per env"):
        policy.predict(np.stack([obs] * 3), episode_start=np.ones(2, bool))
    bare = RandomPolicy(env.action_space, seed=0)  # no observation space: episode_start marks a batch
    assert bare.predict(np.stack([obs] * 2), episode_start=np.zeros(2, bool))[0].shape == (2,)
    with pytest.raises(ConfigError, match="does not know its observation space"):
        bare.predict(obs)


def test_predict_splits_dict_observations_per_env():
    space = gym.spaces.Dict(
        {"rgb": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8), "step": gym.spaces.Discrete(9)}
    )
    seen = []

    class Recorder(BasePolicy):
        action_space = gym.spaces.Discrete(2)
        observation_space = space

        def act(self, obs, info):
            seen.append(obs)
            return np.int64(obs["step"] % 2)

    batch = {"rgb": np.zeros((2, 4, 4, 3), np.uint8), "step": np.array([3, 4])}
    actions, _ = Recorder().predict(batch)
    assert (
        actions.tolist() == [1, 0]
        and [o["step"] for o in seen] == [3, 4]
        and seen[0]["rgb"].shape == (4, 4, 3)
    )
    assert Recorder().predict({"rgb": np.zeros((4, 4, 3), np.uint8), "step": 5})[0] == 1


def test_random_policy_through_evaluate_policy_acts_as_act_does():
    env = Monitor(make_env(GRID))
    env.reset(seed=0)
    rewards, lengths = evaluate_policy(
        RandomPolicy.from_env(env, seed=1), env, n_eval_episodes=3, return_episode_rewards=True
    )
    # the same seeds stepped by hand with act(): the same episodes
    manual, policy = make_env(GRID), RandomPolicy(env.action_space, seed=1)
    manual.reset(seed=0)
    expected = []
    for _ in range(3):
        obs, info = manual.reset()
        ret, steps, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, info = manual.step(policy.act(obs, info))
            ret, steps, done = ret + r, steps + 1, term or trunc
        expected.append((ret, steps))
    assert [(pytest.approx(r), n) for r, n in expected] == list(zip(rewards, lengths))
    assert max(lengths) <= 64


def test_scripted_policy_restarts_each_env_on_episode_start():
    obs = np.zeros((3, 64, 64, 3), np.uint8)
    policy = ScriptedPolicy.from_env(make_env(GRID), ["move up", "move right", "move down", "move left"])
    assert policy.predict(obs, episode_start=np.ones(3, bool))[0].tolist() == [0, 0, 0]
    assert policy.predict(obs, episode_start=np.zeros(3, bool))[0].tolist() == [1, 1, 1]
    assert policy.predict(obs, episode_start=np.array([False, True, False]))[0].tolist() == [2, 0, 2]
    assert policy.predict(obs, episode_start=np.array([True, False, False]))[0].tolist() == [0, 1, 3]


def test_scripted_shortest_path_through_evaluate_policy_on_a_vec_env():
    env = make_env(GRID)
    env.reset(options=PIN)
    u = env.unwrapped
    path = shortest_path_actions(u.walls, u.agent, u.goal)
    venv = DummyVecEnv([lambda: Monitor(Pinned(make_env(GRID))) for _ in range(2)])
    policy = ScriptedPolicy.from_env(venv, [int(a) for a in path])  # no loop: a script not rewound runs out
    rewards, lengths = evaluate_policy(policy, venv, n_eval_episodes=4, return_episode_rewards=True)
    assert lengths == [len(path)] * 4 and rewards == pytest.approx([_success(len(path))] * 4)


def test_oracle_reaches_goals_through_evaluate_policy_on_a_plain_env():
    env = Monitor(make_env(GRID))
    env.reset(seed=5)
    rewards, lengths = evaluate_policy(OraclePolicy(env), env, n_eval_episodes=4, return_episode_rewards=True)
    manual = make_env(GRID)
    manual.reset(seed=5)
    expected = []
    for _ in range(4):
        manual.reset()
        start, steps = _oracle_episode(manual)
        assert steps == start  # shortest paths
        expected.append(steps)
    assert lengths == expected and rewards == pytest.approx([_success(n) for n in expected])


def test_oracle_reaches_goals_on_a_dummy_vec_env():
    venv = DummyVecEnv([lambda: Monitor(make_env(GRID)) for _ in range(3)])
    venv.seed(11)  # env i: reset(seed=11 + i) first, then the stream goes on
    policy = make_policy("oracle", venv)
    assert policy.strategy == "optimal_action" and policy.observation_space == venv.observation_space
    rewards, lengths = evaluate_policy(policy, venv, n_eval_episodes=6, return_episode_rewards=True)
    expected = []
    for i in range(3):
        manual = make_env(GRID)
        for seed in (11 + i, None):
            manual.reset(seed=seed)
            start, steps = _oracle_episode(manual)
            assert steps == start
            expected.append(steps)
    assert sorted(lengths) == sorted(expected)
    assert rewards == pytest.approx([_success(n) for n in lengths])


def test_oracle_reaches_goals_on_a_subproc_vec_env():
    venv = SubprocVecEnv([lambda: Monitor(make_env(GRID)) for _ in range(2)], start_method="fork")
    try:
        venv.seed(0)
        rewards, lengths = evaluate_policy(
            OraclePolicy(venv), venv, n_eval_episodes=4, return_episode_rewards=True
        )
    finally:
        venv.close()
    assert len(lengths) == 4 and rewards == pytest.approx([_success(n) for n in lengths])


def test_oracle_refuses_a_vec_env_without_an_expert():
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(WorldBagelError, match="optimal_action"):
        OraclePolicy(venv)
    policy = OraclePolicy(DummyVecEnv([lambda: make_env(GRID)]))
    with pytest.raises(WorldBagelError, match="act_batch"):
        policy.act(np.zeros((64, 64, 3), np.uint8), {})


class _AlwaysRight:
    """Stands in for generate_text_batch: answers 'move right' and records each context's text."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, contexts, max_new_tokens=500, **kw):
        tok = contexts[0].pipe.tokenizer
        texts = [
            " | ".join(tok.decode(s.data.tolist()) for s in c.segments if s.kind == "text") for c in contexts
        ]
        self.calls.append(texts)
        return [TextOutput([], "move right") for _ in contexts]


def test_world_model_policy_restarts_its_history_on_episode_start(tiny_pipe, monkeypatch):
    """The reasoning policy's per-env history through evaluate_policy: episode_start restarts it (predict passes
    no info, so the policy cannot see the reset otherwise)."""
    stub = _AlwaysRight()
    monkeypatch.setattr(reasoning_mod, "generate_text_batch", stub)
    codec = DiscreteActionCodec(["move up", "move right", "move down", "move left"])
    sampler = SamplerConfig(num_steps=3, cfg_text_scale=1.0, cfg_img_scale=1.0)
    wm = WorldModel(tiny_pipe, codec, WorldModelConfig(sampler=sampler, use_vit=False))
    venv = DummyVecEnv([lambda: Monitor(Pinned(make_env(GRID, max_steps=2))) for _ in range(2)])
    policy = ReasoningPolicy.from_env(venv, preset=None, world_model=wm, seed=0)
    rewards, lengths = evaluate_policy(policy, venv, n_eval_episodes=4, return_episode_rewards=True)
    assert lengths == [2, 2, 2, 2] and rewards == pytest.approx([-0.02] * 4)
    q = policy.question
    fresh, second = [q, q], [f"move right | {q}"] * 2
    assert stub.calls == [fresh, second, fresh, second]
