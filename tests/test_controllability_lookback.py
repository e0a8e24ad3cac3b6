"""Controllability and look-back: the pure metrics on hand-built predictions, the env replay that gives the
true frames, and the eval runners' plumbing (which prediction is scored against which true frame)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worldbagel.data.trajectory import Episode
from worldbagel.errors import ConfigError, DependencyNotInstalled, WorldBagelError
from worldbagel.eval import controllability_eval, lookback_eval
from worldbagel.eval.controllability import controllability
from worldbagel.eval.controllability_eval import evaluate_controllability
from worldbagel.eval.env_replay import EnvReplay, turn_actions
from worldbagel.eval.heldout import record_env_episodes
from worldbagel.eval.lookback import lookback_actions, lookback_scores, memory_gain_db
from worldbagel.eval.lookback_eval import evaluate_lookback
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.rollout import build_env
from worldbagel.world_model import WorldModel, WorldModelConfig

FAST = SamplerConfig(num_steps=2, cfg_text_scale=1.0, cfg_img_scale=1.0)


def flat(*values: int, side: int = 8) -> np.ndarray:
    """(len(values), side, side, 3) uint8 frames, each one grey level."""
    return np.stack([np.full((side, side, 3), v, np.uint8) for v in values])


def db(grey_levels: float) -> float:
    """PSNR of a uniform error of `grey_levels` (out of 255)."""
    return 10 * math.log10(255**2 / grey_levels**2)


# ------------------------------------------------------------------------------------ controllability
def test_perfect_model_scores_one():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 256, (3, 4, 8, 8, 3), dtype=np.uint8)
    result = controllability(true, true, ["up", "right", "down", "left"])
    assert (result.accuracy, result.n, result.ties, result.excluded) == (1.0, 12, 0, 0)
    assert result.chance == pytest.approx(0.25)
    assert result.as_dict()["per_action"]["down"] == {"n": 3, "correct": 3, "accuracy": 1.0}


def test_copy_last_frame_known_value_ties_and_exclusions():
    """The current frame is grey 100; copy-last-frame predicts it for every action.

    history 0: true frames 60, 200, 100 (a blocked step shows the current frame again)
        a0: own |100-60| = 40, nearest rival a2 at 0 -> wrong;  a1: own 100 vs 0 -> wrong;  a2: own 0 -> right
    history 1: true frames 150, 150, 50 (a0 and a1 have the same outcome: not rivals of each other)
        a0, a1: own 50, rival a2 at 50 -> tie, wrong;  a2: own 50, rival 150 at 50 -> tie, wrong
    history 2: every true frame 80: nothing to tell apart -> 3 excluded
    accuracy 1 / 6; chance (3 x 1/3 + 3 x 1/2) / 6.
    """
    true = np.stack([flat(60, 200, 100), flat(150, 150, 50), flat(80, 80, 80)])
    copies = np.stack([flat(100, 100, 100)] * 3)
    names = ["turn left", "turn right", "move forward"]
    result = controllability(copies, true, names)
    assert (result.n, result.correct, result.ties, result.excluded) == (6, 1, 3, 3)
    assert result.accuracy == pytest.approx(1 / 6)
    assert result.chance == pytest.approx((3 / 3 + 3 / 2) / 6)
    per = result.as_dict()["per_action"]
    assert per["move forward"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert per["turn left"]["correct"] == 0
    # a model that draws each outcome slightly off is still nearest to its own true frame
    near = true.astype(int) + 5
    assert controllability(near.astype(np.uint8), true, names).accuracy == 1.0


def test_controllability_takes_per_history_action_sets_and_names_bad_input():
    pred = [flat(10, 200), flat(10, 200, 90)]
    true = [flat(0, 255), flat(0, 255, 100)]
    result = controllability(pred, true, [["a", "b"], ["a", "b", "c"]])
    assert result.n == 5 and result.accuracy == 1.0 and result.per_action["c"] == [1, 1]
    with pytest.raises(ConfigError, match="predicted"):
        controllability(flat(1, 2)[None], flat(1, 2, 3)[None])
    with pytest.raises(ConfigError, match="action_names"):
        controllability(flat(1, 2)[None], flat(1, 2)[None], ["only one"])
    with pytest.raises(ConfigError, match="one entry per history"):
        controllability(flat(1, 2)[None], np.stack([flat(1, 2)] * 2))


# -------------------------------------------------------------------------------------------- look-back
def test_lookback_perfect_and_copy_last_frame_known_values():
    # out and back with k=2: start 100, then 120, 140 (turned away), 120, 100 (back at the start)
    true = np.stack([flat(120, 140, 120, 100), flat(120, 140, 120, 100)])
    start = flat(100, 100)
    perfect = lookback_scores(true, true, start)
    assert perfect == {
        "n": 2,
        "steps": 4,
        "final_psnr": 100.0,
        "final_psnr_frame_mean": 50.0,
        "final_ssim": pytest.approx(1.0),
        "path_psnr": 100.0,
        "returns_exactly": 1.0,
    }
    copy = lookback_scores(np.repeat(start[:, None], 4, axis=1), true, start)
    assert copy["final_psnr"] == 100.0 and copy["final_psnr_frame_mean"] == 50.0  # ends on the start frame
    # ... but not on the frames turned away: mean MSE (20^2 + 40^2 + 20^2 + 0) / 4 grey levels^2
    assert copy["path_psnr"] == pytest.approx(10 * math.log10(255**2 / ((400 + 1600 + 400) / 4)))
    # a model that forgot the start frame draws it 10 grey levels off
    forgot = true.copy()
    forgot[:, -1] = 110
    scores = lookback_scores(forgot, true, start)
    assert scores["final_psnr"] == pytest.approx(db(10)) and scores["final_psnr_frame_mean"] == pytest.approx(
        db(10)
    )
    assert memory_gain_db(perfect, scores) == pytest.approx(100.0 - db(10))
    # an env that does not come back exactly is reported, not hidden
    assert lookback_scores(true, true, flat(100, 99))["returns_exactly"] == 0.5


def test_lookback_actions_and_bad_shapes():
    assert lookback_actions(0, 1, 3) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ConfigError, match="lookback.turns"):
        lookback_actions(0, 1, 0)
    with pytest.raises(ConfigError, match="predicted.shape"):
        lookback_scores(flat(1, 2), flat(1, 2))
    with pytest.raises(ConfigError, match="start.shape"):
        lookback_scores(flat(1, 2)[None], flat(1, 2)[None], flat(1, 2))
    assert turn_actions(["turn left 15 degrees", "turn right 15 degrees", "stop"]) == (0, 1)
    assert turn_actions(["move up", "move right", "move down", "move left"]) is None


# ------------------------------------------------------------------------------------------ env replay
@pytest.fixture(scope="module")
def grid_episodes():
    """Two held-out GridWorld episodes of 6 random steps (recorded with env id, kwargs and seed)."""
    return record_env_episodes(
        "WorldBagel/GridWorld-v0", {"split": "eval"}, "random", episodes=2, seed=11, max_steps=6
    )


def _step_frames(env_id, kwargs, seed, actions):
    env = build_env(env_id, kwargs)
    try:
        frames = [env.reset(seed=seed)[0]]
        frames += [env.step(int(a))[0] for a in actions]
        return frames
    finally:
        env.close()


def test_replay_branches_give_the_envs_true_frames(grid_episodes):
    ep = grid_episodes[0]
    with EnvReplay() as replay:
        assert replay.why_not(ep) is None
        assert replay.action_texts(ep) == ("move up", "move right", "move down", "move left")
        branches = replay.branch(ep, 3, [[a] for a in range(4)] + [[0, 1]])
    # the branch of the episode's own action is its recorded next frame
    np.testing.assert_array_equal(branches[int(ep.actions[3])][0], ep.frames[4])
    for a in range(4):
        want = _step_frames(ep.env_id, {"split": "eval"}, ep.seed, [*ep.actions[:3], a])[-1]
        np.testing.assert_array_equal(branches[a][0], want)
    assert len(branches[4]) == 2


def test_replay_refuses_what_it_cannot_rebuild(grid_episodes):
    ep = grid_episodes[0]
    video = Episode.from_arrays("clip", ep.frames, [None] * ep.length, [""] * ep.length, env_id="video")
    unseeded = Episode.from_arrays("x", ep.frames, ep.actions, ep.action_texts, env_id=ep.env_id)
    replay = EnvReplay()
    assert "not a registered env" in replay.why_not(video)
    assert "no reset seed" in replay.why_not(unseeded)
    # recorded on held-out layouts, replayed without its kwargs (train layouts): a different maze
    wrong = Episode.from_arrays(
        "w", ep.frames, ep.actions, ep.action_texts, env_id=ep.env_id, seed=ep.seed, metadata={}
    )
    with pytest.raises(WorldBagelError, match="does not reproduce its frame 2"):
        replay.branch(wrong, 2, [[0]])
    replay.close()


# ---------------------------------------------------------------------------------------------- runners
def _wm(pipe, history: int = 3) -> WorldModel:
    return WorldModel(pipe, None, WorldModelConfig(sampler=FAST, max_history_frames=history))


class OracleBatch:
    """A fake `predict_batch` that answers the i-th world of each call with `answers[call][i]`, and records
    what each world saw (frames in its history, its last action text, its window)."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, worlds, n_frames=1, actions=None, generator=None, absorb=True):
        assert not absorb, "the last predicted frame never needs to enter a history"
        self.calls.append(
            [
                (w.frames_seen, acts, w.config.max_history_frames, w.config.window_slack)
                for w, acts in zip(worlds, actions)
            ]
        )
        return self.answers.pop(0)


def test_controllability_runner_scores_each_fork_against_its_actions_true_frame(
    tiny_pipe, grid_episodes, monkeypatch
):
    ctx = 2
    wm = _wm(tiny_pipe, history=ctx)
    # the true next frame of every action from each history, by stepping the env directly
    from worldbagel.eval.probe_samples import probe_samples

    samples, by_id, _ = probe_samples("c", wm, grid_episodes, EnvReplay(), None, 8, 2, 16)
    truth = []
    for s in samples:
        ep = by_id[s.episode_id]
        prefix = list(ep.actions[: s.context_end])
        truth.append(
            [_step_frames(ep.env_id, {"split": "eval"}, ep.seed, [*prefix, a])[-1] for a in range(4)]
        )
    fake = OracleBatch([[[f] for frames in truth for f in frames]])  # one batch: a perfect model
    monkeypatch.setattr(controllability_eval, "predict_batch", fake)
    section, why = evaluate_controllability(wm, grid_episodes, batch_size=8)
    assert why is None and section["accuracy"] == 1.0 and section["n"] == 4 * len(samples)
    assert section["histories"] == len(samples) == 4 and section["context"] == ctx
    assert list(section["per_action"]) == ["move up", "move right", "move down", "move left"]
    # each history holds its true frames up to t0 (the model's window decides what it keeps) ...
    (call,) = fake.calls
    want = [(s.c, [text]) for s in samples for text in section["per_action"]]
    assert [(frames - 1, acts) for frames, acts, _, _ in call] == want
    # ... and copy-last-frame is scored on the same true frames
    copies = [np.stack([s.frames[s.c]] * 4) for s in samples]
    base = controllability(copies, [np.stack(t) for t in truth])
    assert section["copy_last_frame"]["accuracy"] == base.accuracy


def test_controllability_runner_real_model_and_skips(tiny_pipe, grid_episodes):
    section, why = evaluate_controllability(_wm(tiny_pipe), grid_episodes, max_samples=1, seed=1)
    assert why is None and section["n"] == 4 and 0.0 <= section["accuracy"] <= 1.0
    assert section["predicted_frames"] == 4 and section["chance"] == 0.25
    ep = grid_episodes[0]
    video = Episode.from_arrays("clip", ep.frames, [None] * ep.length, [""] * ep.length, env_id="video")
    section, why = evaluate_controllability(_wm(tiny_pipe), [video])
    assert section is None and "no episode replays" in why
    section, why = evaluate_lookback(_wm(tiny_pipe), grid_episodes)
    assert section is None and "no turn left / turn right" in why
    with pytest.raises(ConfigError, match="controllability.max_samples"):
        evaluate_controllability(_wm(tiny_pipe), grid_episodes, max_samples=0)


@pytest.fixture(scope="module")
def mini_episodes():
    """Two held-out MiniWorld OneRoom episodes of 5 random steps (32 px); skips where MiniWorld cannot render."""
    try:
        return record_env_episodes(
            "WorldBagel/MiniWorld-OneRoom-v0",
            {"split": "eval", "obs_size": 32, "stop_action": False},  # random stops would end them early
            "random",
            episodes=2,
            seed=5,
            max_steps=5,
        )
    except DependencyNotInstalled as exc:
        pytest.skip(f"MiniWorld cannot render here: {exc}")


def test_miniworld_turning_left_then_right_returns_to_the_start_frame(mini_episodes):
    ep = mini_episodes[0]
    with EnvReplay() as replay:
        texts = replay.action_texts(ep)
        assert texts[:3] == ("turn left 15 degrees", "turn right 15 degrees", "move forward 0.15 m")
        left, right = turn_actions(texts)
        for t in (0, 3):
            paths = replay.branch(ep, t, [lookback_actions(left, right, k) for k in (3, 4)])
            for k, path in zip((3, 4), paths):
                assert len(path) == 2 * k
                np.testing.assert_array_equal(path[-1], ep.frames[t])
                assert not np.array_equal(path[k - 1], ep.frames[t])  # turned away, the view changed


def test_lookback_runner_with_the_window_and_with_one_frame(tiny_pipe, mini_episodes, monkeypatch):
    wm = WorldModel(tiny_pipe, None, WorldModelConfig(sampler=FAST, max_history_frames=3, window_slack=2))
    with EnvReplay() as replay:
        from worldbagel.eval.probe_samples import probe_samples

        samples, by_id, _ = probe_samples("lookback", wm, mini_episodes, replay, None, 8, 1, 8)
        paths = [replay.branch(by_id[s.episode_id], s.context_end, [[0, 1]])[0] for s in samples]
    forgot = [[*p[:-1], np.zeros_like(p[-1])] for p in paths]  # the run without memory loses the start
    fake = OracleBatch([paths, forgot])
    monkeypatch.setattr(lookback_eval, "predict_batch", fake)
    section, why = evaluate_lookback(wm, mini_episodes, turns=[1])
    assert why is None and section["actions"] == ["turn left 15 degrees", "turn right 15 degrees"]
    k1 = section["turns"]["k1"]
    assert k1["window"]["final_psnr"] == 100.0 and k1["window"]["returns_exactly"] == 1.0
    assert k1["one_frame"]["final_psnr"] < 30 and k1["memory_gain_db"] > 70
    assert k1["copy_last_frame"]["final_psnr"] == 100.0 and k1["copy_last_frame"]["path_psnr"] < 100
    # the same true history both times; the second run keeps one frame and no slack
    window_call, one_call = fake.calls
    assert [(c[0], c[1]) for c in window_call] == [
        (s.c + 1, ["turn left 15 degrees", "turn right 15 degrees"]) for s in samples
    ]
    assert {c[2:] for c in window_call} == {(3, 2)} and {c[2:] for c in one_call} == {(1, 0)}
    assert section["histories"] == len(samples) == 2 and section["predicted_frames"] == 2 * 2 * 2
