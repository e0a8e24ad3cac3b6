"""`worldbagel rollout` / `worldbagel collect` end to end (in-process through cli.main), plus run_rollouts."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from standin_envs import GridStandIn

from worldbagel.cli import main
from worldbagel.data.collect import collect
from worldbagel.data.trajectory import TrajectoryDataset, read_index
from worldbagel.errors import WorldBagelError
from worldbagel.policies import OraclePolicy, RandomPolicy, make_policy
from worldbagel.rollout import build_env, run_rollouts

CRASHY = "WorldBagelTest/CrashyGrid-v0"
if CRASHY not in gym.registry:
    # The second reset of each env instance crashes two steps in (a simulator dying mid-episode).
    gym.register(CRASHY, entry_point=partial(GridStandIn, size=5, crash_on_reset=2), disable_env_checker=True)


def test_rollout_default_is_the_shipped_planner_on_gridworld(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["rollout", f"out={out}"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml"] + [
        f"episode_{i:03d}.{ext}" for i in range(3) for ext in ("gif", "mp4")
    ] + [
        "metrics.json",
        "overrides.yaml",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["env_id"] == "WorldBagel/GridWorld-v0" and metrics["policy"] == "planner"
    eps = metrics["episodes"]
    assert [e["seed"] for e in eps] == [0, 1, 2]
    for (
        e
    ) in eps:  # the planner imagines with the shipped model and reaches every goal (seeded: deterministic)
        assert e["status"] == "ok" and e["success"] is True and 0 < e["spl"] <= 1.0
        assert e["length"] >= e["shortest_path"] > 0 and e["video"] == f"episode_{e['episode']:03d}.mp4"
    agg = metrics["aggregate"]
    assert agg["success_rate"] == 1.0 and agg["completed"] == 3 and agg["failed"] == 0
    assert agg["length"] == pytest.approx(np.mean([e["length"] for e in eps]))
    printed = capsys.readouterr().out
    assert "WorldBagel/GridWorld-v0 x planner" in printed and "3/3 ok" in printed


def test_rollout_oracle_takes_shortest_paths(tmp_path):
    out = tmp_path / "oracle"
    assert main(["rollout", "policy=oracle", "episodes=2", f"out={out}"]) == 0
    eps = json.loads((out / "metrics.json").read_text())["episodes"]
    assert len(eps) == 2
    for e in eps:
        assert e["success"] is True and e["spl"] == 1.0 and e["length"] == e["shortest_path"] > 0


def test_rollout_random_policy_overrides(tmp_path):
    out = tmp_path / "rand"
    assert (
        main(
            [
                "rollout",
                "env=gridworld",
                "policy=random",
                "episodes=2",
                "max_steps=5",
                "gif=false",
                f"out={out}",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["policy"] == "random" and len(metrics["episodes"]) == 2
    assert all(e["length"] <= 5 and e["gif"] is None for e in metrics["episodes"])
    assert not list(out.glob("*.gif")) and len(list(out.glob("*.mp4"))) == 2
    # same seed, same episodes
    again = tmp_path / "rand2"
    assert main(["rollout", "policy=random", "episodes=2", "max_steps=5", "gif=false", f"out={again}"]) == 0
    strip = lambda m: [(e["length"], e["return"]) for e in m["episodes"]]  # noqa: E731
    assert strip(json.loads((again / "metrics.json").read_text())) == strip(metrics)


def test_crashing_env_keeps_finished_episodes(tmp_path, capsys):
    out = tmp_path / "crash"
    rc = main(
        ["rollout", f"env.id={CRASHY}", "env.kwargs.size=5", "policy=random", "episodes=3", f"out={out}"]
    )
    assert rc == 1
    metrics = json.loads((out / "metrics.json").read_text())
    status = [(e["status"], e["error"]) for e in metrics["episodes"]]
    assert status[0] == ("ok", None) and status[2] == ("ok", None)
    assert status[1] == ("failed", "RuntimeError: simulated simulator crash")
    assert (out / "episode_000.mp4").exists() and (out / "episode_002.mp4").exists()
    assert metrics["aggregate"]["completed"] == 2 and metrics["aggregate"]["failed"] == 1
    assert "simulated simulator crash" in capsys.readouterr().out


def test_run_rollouts_library_api(tmp_path):
    seen = []
    result = run_rollouts(
        lambda: GridStandIn(size=5),
        OraclePolicy,
        episodes=2,
        seed=5,
        out_dir=None,
        keep_frames=True,
        progress=lambda done, total, ep: seen.append((done, total, ep.status)),
    )
    assert seen == [(1, 2, "ok"), (2, 2, "ok")]
    assert result.metrics_path is None and result.write_metrics() is None
    ep = result.episodes[0]
    assert ep.frames.shape == (ep.length + 1, 20, 20, 3) and ep.success and ep.spl == 1.0

    def broken_factory():
        raise TypeError("__init__() got an unexpected keyword argument 'sise'")

    with pytest.raises(WorldBagelError, match="could not build the env.*'sise'"):
        run_rollouts(broken_factory, RandomPolicy(gym.spaces.Discrete(4)), episodes=1)


def test_cfg_prints_config_and_bad_override_is_a_clean_error(capsys):
    assert main(["rollout", "env=miniworld", "policy=random", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "WorldBagel/MiniWorld-Hallway-v0" in out and "name: random" in out
    assert main(["collect", "out=x", "--cfg"]) == 0
    assert "episodes: 100" in capsys.readouterr().out
    assert main(["rollout", "policy=nope"]) == 2
    assert "nope" in capsys.readouterr().out


def test_unknown_policy_name_and_env_id_are_clear_errors(tmp_path, capsys):
    assert main(["rollout", "policy.name=nope", f"out={tmp_path / 'a'}"]) == 1
    assert "invalid policy='nope'" in capsys.readouterr().out
    assert main(["rollout", "env.id=Nope-v9", f"out={tmp_path / 'b'}"]) == 1
    assert "env.id" in capsys.readouterr().out


def _steps_and_frames(root, eid):
    ep = TrajectoryDataset(root)[TrajectoryDataset(root).ids.index(eid)]
    return ep.action_texts, ep.actions, ep.frames


def test_collect_resume_continues_without_duplicates(tmp_path, capsys):
    part, full = tmp_path / "part", tmp_path / "full"
    assert main(["collect", "episodes=2", f"out={part}", "env.kwargs.size=5", "env.kwargs.obs_size=40"]) == 0
    (part / ".tmp-ep-000002-dead").mkdir()  # what a killed writer leaves behind
    assert main(["collect", "episodes=4", f"out={part}", "env.kwargs.size=5", "env.kwargs.obs_size=40"]) == 0
    printed = capsys.readouterr().out
    assert "already present" in printed
    ids = [e["id"] for e in read_index(part)]
    assert sorted(ids) == ["ep-000000", "ep-000001", "ep-000002", "ep-000003"] and len(ids) == 4
    assert not [p for p in part.iterdir() if p.name.startswith(".tmp-")]
    assert main(["collect", "episodes=4", f"out={full}", "env.kwargs.size=5", "env.kwargs.obs_size=40"]) == 0
    for eid in ids:  # resumed data equals uninterrupted data
        a, b = _steps_and_frames(part, eid), _steps_and_frames(full, eid)
        assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])
    ds = TrajectoryDataset(part, verify="full")
    assert ds.skipped == [] and all(e.env_id == "WorldBagel/GridWorld-v0" for e in ds)
    ep = ds[0]
    assert ep.action_texts[0] in ("move up", "move right", "move down", "move left")
    assert ep.infos[-1]["success"] is True and ep.length == ep.infos[0]["distance"]
    assert main(["collect", "episodes=1", f"out={part}", "env=gridworld_ego"]) == 1  # refuses to mix envs
    assert "use a new folder" in capsys.readouterr().out


def test_collect_library_records_failures_and_retries_them(tmp_path):
    policy_factory = partial(make_policy, "random", seed=0)
    env_factory = partial(build_env, CRASHY, {})
    result = collect(env_factory, policy_factory, tmp_path, episodes=3, env_id=CRASHY)
    assert [e["id"] for e in result.written] == ["ep-000000", "ep-000002"]
    assert result.failed == [("ep-000001", "RuntimeError: simulated simulator crash")]
    assert [e["id"] for e in read_index(tmp_path)] == ["ep-000000", "ep-000002"]
    retry = collect(env_factory, policy_factory, tmp_path, episodes=3, env_id=CRASHY)
    assert retry.skipped_existing == ["ep-000000", "ep-000002"] and [e["id"] for e in retry.written] == [
        "ep-000001"
    ]
    assert len(TrajectoryDataset(tmp_path)) == 3


def test_collect_with_worker_processes_matches_single_process(tmp_path):
    env_factory = partial(build_env, "WorldBagel/GridWorld-v0", {"size": 5, "obs_size": 40})
    policy_factory = partial(make_policy, "random", seed=0)
    kw = {"episodes": 3, "env_id": "WorldBagel/GridWorld-v0", "max_steps": 6}
    par = collect(env_factory, policy_factory, tmp_path / "par", workers=2, **kw)
    seq = collect(env_factory, policy_factory, tmp_path / "seq", workers=1, **kw)
    assert [e["id"] for e in read_index(tmp_path / "par")] == ["ep-000000", "ep-000001", "ep-000002"]
    assert [e["steps_sha256"] for e in par.written] == [e["steps_sha256"] for e in seq.written]


def test_collect_batches_the_index_and_an_interrupt_keeps_every_finished_episode(tmp_path, monkeypatch):
    import worldbagel.data.collect as collect_module

    env_factory = partial(build_env, "WorldBagel/GridWorld-v0", {"size": 5, "obs_size": 40})
    policy_factory = partial(make_policy, "random", seed=0)
    kw = {"env_id": "WorldBagel/GridWorld-v0", "max_steps": 3}
    index_writes = []
    real_update = collect_module.update_index
    monkeypatch.setattr(
        collect_module,
        "update_index",
        lambda root, entries: (index_writes.append(len(entries)), real_update(root, entries)),
    )
    batched = collect(env_factory, policy_factory, tmp_path / "batched", episodes=6, **kw)
    assert index_writes == [6]  # one rewrite for the whole (fast) collection, not one per episode
    monkeypatch.setattr(collect_module, "INDEX_EVERY_S", 0.0)
    index_writes.clear()
    each = collect(env_factory, policy_factory, tmp_path / "each", episodes=6, **kw)
    assert index_writes[:-1] == [1] * 6  # flushed after every episode (then an empty final flush)
    assert read_index(tmp_path / "batched") == read_index(tmp_path / "each")
    assert [e["steps_sha256"] for e in batched.written] == [e["steps_sha256"] for e in each.written]

    monkeypatch.setattr(collect_module, "INDEX_EVERY_S", 3600.0)

    def stop_after_four(done, todo, eid, error):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(env_factory, policy_factory, tmp_path / "cut", episodes=6, progress=stop_after_four, **kw)
    assert [e["id"] for e in read_index(tmp_path / "cut")] == [f"ep-00000{i}" for i in range(4)]
    resumed = collect(env_factory, policy_factory, tmp_path / "cut", episodes=6, **kw)
    assert [e["id"] for e in resumed.written] == ["ep-000004", "ep-000005"]
    assert read_index(tmp_path / "cut") == read_index(tmp_path / "each")


def test_help_lists_commands_and_groups():
    out = subprocess.run(
        [sys.executable, "-m", "worldbagel.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "rollout" in out and "collect" in out
    groups = out.split("config groups:")[1]
    assert "env" in groups and "policy" in groups


class _DetourOracle:
    """Wastes the first step bumping into a wall or the border, then follows the oracle."""

    def __init__(self, env):
        self.env, self.oracle, self.t = env, OraclePolicy(env), 0
        self.action_space = env.action_space

    def reset(self, seed=None):
        self.t = 0

    def act(self, obs, info):
        self.t += 1
        if self.t == 1:
            u = self.env.unwrapped
            for a, (dr, dc) in enumerate(((-1, 0), (0, 1), (1, 0), (0, -1))):
                r, c = u.agent[0] + dr, u.agent[1] + dc
                if not (0 <= r < u.size and 0 <= c < u.size) or u.walls[r, c]:
                    return a
        return self.oracle.act(obs, info)


class _ReportsSPL(gym.Wrapper):
    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        if term or trunc:
            info = {**info, "spl": 0.42, "soft_spl": 0.5}
        return obs, r, term, trunc, info


def test_spl_from_shortest_distance_and_from_env_info():
    result = run_rollouts(lambda: GridStandIn(size=6, max_steps=60), _DetourOracle, episodes=4, seed=0)
    for ep in result.episodes:
        d = ep.shortest_path
        assert ep.success and d >= 1
        if ep.length == d + 1:  # a wall/border was next to the start: one wasted step
            assert ep.spl == pytest.approx(d / (d + 1))
        else:
            assert ep.spl == 1.0
    assert any(ep.spl < 1.0 for ep in result.episodes)
    reported = run_rollouts(lambda: _ReportsSPL(GridStandIn(size=5)), OraclePolicy, episodes=1)
    ep = reported.episodes[0]
    assert ep.spl == 0.42 and ep.to_json()["soft_spl"] == 0.5


def test_rollout_model_group_feeds_world_model_policies(tmp_path, tiny_dir, capsys):
    from worldbagel.cli import main

    out = tmp_path / "run"
    args = [
        "rollout",
        "policy=planner",
        "model=tiny",
        f"model.path={tiny_dir}",
        "sampler=fast",
        "sampler.num_steps=2",
        "policy.kwargs.horizon=1",
        "episodes=1",
        "max_steps=2",
        f"out={out}",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["policy"] == "planner"
    (ep,) = metrics["episodes"]
    assert ep["status"] == "ok" and 1 <= ep["length"] <= 2
    from worldbagel.media import read_clip

    gif = read_clip(out / ep["gif"])  # real | imagined | goal, side by side
    assert gif.shape[0] == ep["length"] + 1 and gif.shape[2] == 3 * 64 + 2 * 2
    assert (
        main(["rollout", "policy=oracle", "model=tiny", f"model.path={tiny_dir}", f"out={tmp_path / 'x'}"])
        == 1
    )
    assert "does not use a world model" in capsys.readouterr().out
