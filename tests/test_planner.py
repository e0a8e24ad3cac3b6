"""WorldModelPlanner: argmin of a known energy, CEM on toy energies, batching, closed loop, GridWorld goals.

Where the answer must be certain, `predict_batch` is replaced by a function whose frames are known (a colour
per action, or a simulated GridWorld); the batching and end-to-end tests run the real tiny fixture.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldbagel.policies.planner as planner_mod
import worldbagel.world_model as wm_mod
from worldbagel.actions import ContinuousActionCodec, DiscreteActionCodec
from worldbagel.envs import decode_frame, make_env
from worldbagel.errors import ConfigError, WorldBagelError
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.policies import make_policy
from worldbagel.policies.energy import GridWorldDistanceScorer, LatentDistance, SSIMDistance
from worldbagel.policies.goal_images import GridWorldGoalImages
from worldbagel.policies.planner import WorldModelPlanner
from worldbagel.world_model import WorldModel, WorldModelConfig

NAMES = ["move up", "move right", "move down", "move left"]
COLOURS = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)], np.uint8)


def _wm(pipe, names=NAMES, codec=None) -> WorldModel:
    sampler = SamplerConfig(num_steps=3, cfg_text_scale=2.0, cfg_img_scale=1.0, cfg_renorm_type="global")
    config = WorldModelConfig(sampler=sampler, use_vit=False, reencode="latents")
    return WorldModel(pipe, codec or DiscreteActionCodec(names), config)


def _colour(action) -> np.ndarray:
    return np.broadcast_to(COLOURS[int(action)], (64, 64, 3)).copy()


class _Recorder:
    """Stands in for predict_batch: frame = the colour of the action; records every call's batch size."""

    def __init__(self, frame_of=_colour):
        self.calls: list[int] = []
        self.frame_of = frame_of

    def __call__(self, worlds, n_frames=1, actions=None, generator=None):
        self.calls.extend([len(worlds)] * n_frames)
        return [[self.frame_of(a) for a in acts] for acts in actions]


def _patch(monkeypatch, fake):
    """Route both imagination paths of the planner (absorbing steps and the unabsorbed last step) to `fake`."""
    monkeypatch.setattr(planner_mod, "predict_batch", fake)
    monkeypatch.setattr(
        planner_mod,
        "predict_unabsorbed",
        lambda worlds, actions, generator=None: [
            fs[0] for fs in fake(worlds, 1, [[a] for a in actions], generator)
        ],
    )


def test_exhaustive_search_picks_the_argmin_energy(tiny_pipe, frame, monkeypatch):
    fake = _Recorder()
    _patch(monkeypatch, fake)
    goal = _colour(2)
    planner = WorldModelPlanner(_wm(tiny_pipe), goal=goal, horizon=2, step_cost=0.01, seed=0)
    assert planner.act(frame, {}) == 2
    plan = planner.last_plan
    assert plan.actions[0] == 2 and plan.energy == pytest.approx(0.0, abs=1e-9)
    assert plan.candidates == 16 and plan.frames.shape == (2, 64, 64, 3)
    assert fake.calls == [4, 16]  # one batched call per imagined step; shared prefixes imagined once
    views = planner.views()  # what a rollout video shows beside the real frame
    assert np.array_equal(views["imagined"], plan.frames[0]) and np.array_equal(views["goal"], plan.goal[0])
    # the energy ranks every first action: direct distances of the four colours to the goal colour
    d = LatentDistance(tiny_pipe)(np.stack([_colour(a) for a in range(4)]), goal)[:, 0]
    assert d[2] == pytest.approx(0.0, abs=1e-9) and (np.delete(d, 2) > 1e-6).all()

    # without dedupe every sequence is imagined in full, still one batched call per step
    fake.calls.clear()
    planner = WorldModelPlanner(_wm(tiny_pipe), goal=goal, horizon=2, dedupe=False, aggregate="final", seed=0)
    planner.act(frame, {})
    assert fake.calls == [16, 16]
    assert planner.last_plan.actions[-1] == 2  # "final" only looks at the last frame


def test_ssim_energy_and_goal_from_info(tiny_pipe, frame, monkeypatch):
    _patch(monkeypatch, _Recorder())
    planner = WorldModelPlanner(_wm(tiny_pipe), energy="ssim", horizon=1, seed=0)
    assert planner.act(frame, {"goal_image": _colour(3)}) == 3
    d = SSIMDistance()(np.stack([_colour(0), _colour(3)]), _colour(3))
    assert d.shape == (2, 1) and d[1, 0] == pytest.approx(0.0, abs=1e-9) and d[0, 0] > 0.01


def test_missing_goal_is_a_clear_error(tiny_pipe, frame, monkeypatch):
    _patch(monkeypatch, _Recorder())
    with pytest.raises(ConfigError, match="no goal image"):
        WorldModelPlanner(_wm(tiny_pipe), horizon=1).act(frame, {})
    with pytest.raises(ConfigError, match="horizon"):
        WorldModelPlanner(_wm(tiny_pipe), horizon=0)
    with pytest.raises(ConfigError, match="energy"):
        WorldModelPlanner(_wm(tiny_pipe), energy="psnr")


def test_cem_finds_a_discrete_sequence_on_a_toy_energy(tiny_pipe, frame, monkeypatch):
    fake = _Recorder()
    _patch(monkeypatch, fake)
    target = (2, 0, 3, 1)  # 256 sequences: more than max_exhaustive, so auto picks CEM

    def hamming(frames, actions, info):
        return float(sum(int(a) != t for a, t in zip(actions, target)))

    kw = dict(horizon=4, energy=None, scorers=[hamming], population=24, elites=4, iterations=6, seed=0)
    planner = WorldModelPlanner(_wm(tiny_pipe), **kw)
    planner.act(frame, {})
    assert [int(a) for a in planner.last_plan.actions] == list(target)
    assert planner.last_plan.energy == 0.0 and planner.last_plan.candidates == 24 * 6
    assert fake.calls == [24] * 4 * 6  # every iteration: one batched call per step for the whole population
    again = WorldModelPlanner(_wm(tiny_pipe), **kw)
    again.act(frame, {})
    assert [int(a) for a in again.last_plan.actions] == list(target)


def test_cem_converges_on_a_continuous_toy_energy(tiny_pipe, frame, monkeypatch):
    _patch(monkeypatch, _Recorder(frame_of=lambda a: np.zeros((64, 64, 3), np.uint8)))
    target = np.array([[0.5, -0.3, 0.2], [-0.6, 0.1, 0.4]])

    def squared(frames, actions, info):
        return float(((np.stack(actions) - target) ** 2).sum())

    space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    wm = _wm(tiny_pipe, codec=ContinuousActionCodec())
    planner = WorldModelPlanner(
        wm,
        space,
        horizon=2,
        energy=None,
        scorers=[(squared, 2.0)],
        population=48,
        elites=6,
        iterations=8,
        seed=1,
    )
    action = planner.act(frame, {})
    assert space.contains(action)
    assert planner.last_plan.energy < 2.0 * 0.05  # the uniform-box mean (zeros) would score 2 * 0.91
    assert np.abs(np.stack(planner.last_plan.actions) - target).max() < 0.2


def test_batched_candidates_use_one_generate_call_per_step(tiny_pipe, frame, monkeypatch):
    sizes: list[int] = []
    real = wm_mod.generate_images

    def counting(requests, grid, config=None, generator=None):
        sizes.append(len(requests))
        return real(requests, grid, config, generator)

    monkeypatch.setattr(wm_mod, "generate_images", counting)
    wm = _wm(tiny_pipe, names=["move up", "move down"])
    planner = WorldModelPlanner(wm, goal=frame, horizon=2, seed=0)
    planner.reset(seed=0)
    a = planner.act(frame, {})
    assert sizes == [2, 4] and a in (0, 1)
    root = planner._slots[0].world
    assert root.frames_seen == 1  # imagining on forks leaves the observed history alone
    # same seed, same plan (imagination noise comes from the planner's seeded generator)
    first = planner.last_plan
    planner.reset(seed=0)
    planner.act(frame, {})
    assert np.array_equal(first.frames, planner.last_plan.frames) and first.energy == planner.last_plan.energy


def test_closed_loop_histories_and_vector_envs(tiny_pipe, frame, monkeypatch):
    _patch(monkeypatch, _Recorder())
    planner = WorldModelPlanner(_wm(tiny_pipe), goal=_colour(1), horizon=1, seed=0)
    obs = np.stack([frame, frame[::-1]])
    infos = {"steps": np.array([0, 0]), "_steps": np.array([True, True])}
    actions = planner.act_batch(obs, infos)
    assert actions.tolist() == [1, 1] and len(planner.last_plans) == 2
    infos = {"steps": np.array([1, 1]), "_steps": np.array([True, True])}
    planner.act_batch(obs, infos)
    assert [s.world.frames_seen for s in planner._slots] == [2, 2]  # each appended its action + frame
    infos = {"steps": np.array([2, 0]), "_steps": np.array([True, True])}
    planner.act_batch(obs, infos)
    # env 1 reports steps == 0 (an autoreset): its history restarted; env 0 kept growing
    assert [s.world.frames_seen for s in planner._slots] == [3, 1]
    texts = [s for s in planner._slots[0].world.context.segments if s.kind == "text"]
    assert len(texts) == 2  # the executed actions entered the history
    planner.reset()
    planner.act_batch(obs, {"steps": np.array([3, 1]), "_steps": np.array([True, True])})
    assert [s.world.frames_seen for s in planner._slots] == [1, 1]  # reset() restarts every env


def test_gridworld_goal_images_show_the_agent_on_the_goal():
    env = make_env("WorldBagel/GridWorld-v0")
    _, info = env.reset(seed=4)
    images = GridWorldGoalImages.from_env(env)(info)
    assert images.shape == (4, 64, 64, 3)
    states = [decode_frame(im) for im in images]
    assert all(s["agent"] == info["goal"] == s["goal"] for s in states)
    assert sorted(s["heading"] for s in states) == [0, 1, 2, 3]
    assert GridWorldGoalImages.from_env(gym.make("CartPole-v1")) is None


class _SimWorld(WorldModel):
    """A perfect GridWorld 'world model': the state comes from the real env, frames are rendered exactly."""

    def __init__(self, env):
        self.env = env.unwrapped
        self.codec = DiscreteActionCodec(NAMES)
        self.config = WorldModelConfig()
        self.pipe = None
        self.state = None
        self.pending = None

    def reset(self, first_obs, instruction=None):
        self.state = (self.env.agent, self.env.heading)
        return self

    def observe(self, obs):
        return self.reset(obs)

    def act(self, action):
        self.pending = int(action)
        return self

    def fork(self):
        return copy.copy(self)

    def render(self):
        u = self.env
        sim = GridWorldGoalImages(u.size, u.obs_size)._env
        opts = {
            "layout_seed": u.layout_seed,
            "goal": u.goal,
            "agent": self.state[0],
            "heading": self.state[1],
        }
        return sim.reset(seed=0, options=opts)[0]


def _simulate(worlds, n_frames=1, actions=None, generator=None):
    from worldbagel.envs.maze import MOVES, can_move

    out = []
    for w, acts in zip(worlds, actions):
        frames = []
        for a in acts:
            agent = w.state[0]
            if can_move(w.env.walls, agent, int(a)):
                agent = (agent[0] + MOVES[int(a)][0], agent[1] + MOVES[int(a)][1])
            w.state = (agent, int(a))
            frames.append(w.render())
        out.append(frames)
    return out


def test_planner_with_a_perfect_model_and_the_maze_scorer_reaches_held_out_goals(monkeypatch):
    _patch(monkeypatch, _simulate)
    env = make_env("WorldBagel/GridWorld-v0", split="eval")
    scorer = GridWorldDistanceScorer.from_env(env)
    planner = WorldModelPlanner(
        _SimWorld(env), env.action_space, energy=None, scorers=[scorer], horizon=2, seed=0
    )
    for seed in range(3):
        planner.reset(seed=seed)
        obs, info = env.reset(seed=seed)
        shortest, steps, done = info["distance"], 0, False
        while not done:
            obs, _, terminated, truncated, info = env.step(planner.act(obs, info))
            steps, done = steps + 1, terminated or truncated
        assert info["success"] and steps == shortest  # SPL 1 on a held-out layout


def test_make_policy_planner_end_to_end_on_the_fixture(tiny_dir):
    env = make_env("WorldBagel/GridWorld-v0")
    planner = make_policy(
        "planner",
        env,
        seed=0,
        model={"name": "tiny", "path": str(tiny_dir)},
        sampler={"preset": "fast", "num_steps": 3},
        world={"use_vit": False, "reencode": "latents"},
        scorers=[{"name": "gridworld_distance", "weight": 0.5}],
        horizon=1,
    )
    assert isinstance(planner, WorldModelPlanner) and planner.world_model.config.sampler.num_steps == 3
    obs, info = env.reset(seed=0)
    for _ in range(2):
        action = planner.act(obs, info)
        assert env.action_space.contains(action)
        obs, _, _, _, info = env.step(action)
    plan = planner.last_plan
    assert plan.goal.shape == (4, 64, 64, 3) and plan.frames.shape == (1, 64, 64, 3) and plan.candidates == 4
    torch.testing.assert_close(torch.tensor(plan.energy).isfinite(), torch.tensor(True))


def test_maze_scorer_and_auto_scorers_on_real_frames():
    from worldbagel.policies.energy import auto_scorers

    env = make_env("WorldBagel/GridWorld-v0")
    frames, infos = [], []
    obs, info = env.reset(seed=2)
    for _ in range(2):
        frames.append(obs)
        infos.append(info)
        obs, _, _, _, info = env.step(env.unwrapped.optimal_action())
    (scorer,) = auto_scorers(env)
    assert isinstance(scorer, GridWorldDistanceScorer)
    energy = scorer(np.stack(frames), [0, 0], infos[0])
    assert energy == pytest.approx(min(infos[0]["distance"], infos[1]["distance"] + scorer.step_cost))
    assert scorer(np.zeros((1, 64, 64, 3), np.uint8), [0], infos[0]) == 64.0  # undecodable: worst
    assert auto_scorers(make_env("WorldBagel/GridWorldEgo-v0")) == []


def test_policy_group_yaml_builds_the_planner(tiny_dir):
    from worldbagel.cli_compose import compose_config

    _, cfg = compose_config(
        "rollout",
        ["policy=planner", "policy.kwargs.model.name=tiny", f"policy.kwargs.model.path={tiny_dir}"],
    )
    kwargs = dict(cfg.policy.kwargs)
    kwargs["sampler"] = {"preset": "fast", "num_steps": 3}
    planner = make_policy(cfg.policy.name, make_env("WorldBagel/GridWorld-v0"), seed=0, **kwargs)
    assert isinstance(planner.scorers[0][0], GridWorldDistanceScorer) and planner.horizon == 2


def test_unabsorbed_last_step_predicts_what_predict_batch_predicts(tiny_pipe, frame):
    root = _wm(tiny_pipe, names=["move up", "move down"]).reset(frame)
    a = planner_mod.predict_unabsorbed([root.fork(), root.fork()], [0, 1], torch.Generator().manual_seed(5))
    b = wm_mod.predict_batch([root.fork(), root.fork()], 1, [[0], [1]], torch.Generator().manual_seed(5))
    assert all(np.array_equal(x, y[0]) for x, y in zip(a, b))


def test_make_policy_builds_what_the_cli_builds(tiny_dir):
    from worldbagel.policies.registry import preset_kwargs
    from worldbagel.world_model_loader import sampler_config

    # configs/policy/planner.yaml's kwargs are make_policy's defaults: maze scorer, step cost, `fast` sampler
    assert preset_kwargs("planner")["scorers"] == ["auto"] and preset_kwargs("nope") == {}
    env = make_env("WorldBagel/GridWorld-v0")
    tiny = {"name": "tiny", "path": str(tiny_dir)}
    planner = make_policy("planner", env, seed=0, model=tiny)
    assert isinstance(planner.scorers[0][0], GridWorldDistanceScorer) and planner.step_cost == 0.01
    assert planner.world_model.config.sampler == sampler_config("fast")
    # keyword arguments win over the preset
    bare = make_policy(
        "planner", env, seed=0, model=tiny, scorers=[], step_cost=0.0, sampler={"num_steps": 3}
    )
    assert bare.scorers == [] and bare.step_cost == 0.0 and bare.world_model.config.sampler.num_steps == 3
    # a baseline that needs kwargs (scripted) gets its yaml's action list
    assert make_policy("scripted", env, seed=0).act(None, {}) == 1  # "move right"


def test_from_env_called_directly_plans_like_the_cli(tiny_dir):
    """RL code imports the classes: `WorldModelPlanner.from_env(env)` and `ReasoningPolicy.from_env(env)` get
    the policy yaml's defaults, as `make_policy` and `worldbagel rollout` do; `preset=None` the bare ones."""
    from worldbagel.policies import ReasoningPolicy
    from worldbagel.world_model_loader import sampler_config

    env = make_env("WorldBagel/GridWorld-v0")
    tiny = {"name": "tiny", "path": str(tiny_dir)}
    planner = WorldModelPlanner.from_env(env, seed=0, model=tiny)
    assert isinstance(planner.scorers[0][0], GridWorldDistanceScorer) and planner.step_cost == 0.01
    assert planner.horizon == 2 and planner.world_model.config.sampler == sampler_config("fast")
    assert planner.world_model.config.reencode == "latents"
    bare = WorldModelPlanner.from_env(env, seed=0, model=tiny, preset=None)
    assert bare.scorers == [] and bare.step_cost == 0.0
    assert bare.world_model.config.reencode == "pixels"  # the model's own; the preset says latents
    reasoning = ReasoningPolicy.from_env(env, seed=0, model=tiny)
    assert reasoning.temperature == 0.5 and reasoning.choose == "generate"
    assert ReasoningPolicy.from_env(env, seed=0, model=tiny, preset=None).temperature == 0.0
    with pytest.raises(WorldBagelError, match="preset.*'plannr'.*planner"):
        WorldModelPlanner.from_env(env, model=tiny, preset="plannr")
