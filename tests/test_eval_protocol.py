"""The NWM frame-prediction protocol, held-out data readers and planning evaluation on the tiny fixture.

Random weights: these tests check the plumbing (which history each prediction sees, which frames are
scored) and that the numbers agree with the metrics computed directly, not the model's quality.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worldbagel.data.nwm import poses_to_actions
from worldbagel.data.trajectory import Episode
from worldbagel.errors import ConfigError
from worldbagel.eval import protocol
from worldbagel.eval.heldout import gridworld_size, has_actions, record_env_episodes, video_episodes
from worldbagel.eval.planning import (
    GoalDistanceInfo,
    evaluate_navigation,
    integrate_actions,
    navigation_section,
    policy_factory,
)
from worldbagel.eval.protocol import (
    COPY_PREVIOUS_FRAME,
    evaluate_frame_prediction,
    make_samples,
    window_starts,
)
from worldbagel.eval.qa_eval import collect_questions, evaluate_text
from worldbagel.frame_metrics import mse, psnr, psnr_of_mean_mse, ssim
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.world_model import WorldModel, WorldModelConfig

FAST = SamplerConfig(num_steps=3, cfg_text_scale=1.0, cfg_img_scale=1.0)


@pytest.fixture(scope="module")
def grid_episodes():
    """Two held-out GridWorld episodes of 8 random steps (64 px top-down frames, symbolic infos)."""
    return record_env_episodes(
        "WorldBagel/GridWorld-v0", {"split": "eval"}, "random", episodes=2, seed=7, max_steps=8
    )


def _wm(pipe, history: int = 4) -> WorldModel:
    return WorldModel(pipe, None, WorldModelConfig(sampler=FAST, max_history_frames=history))


def _texts(world: WorldModel) -> list[str]:
    tok = world.pipe.tokenizer
    return [tok.decode(s.data.tolist()) for s in world.context.segments if s.kind == "text"]


# ----------------------------------------------------------------------------------------------- samples
def test_window_starts_full_context_spread_and_short_clip_fallback():
    # 30 frames, context 4, horizons up to 16: t0 in [3, 13]
    assert window_starts(30, 4, (1, 2, 4, 8, 16), 3) == [(0, 3), (5, 8), (10, 13)]
    assert window_starts(30, 4, (1, 16), 1) == [(0, 3)]
    # too short for k=16: one window keeps the full context, shorter horizons only
    assert window_starts(10, 4, (1, 2, 4, 8, 16), 5) == [(0, 3)]
    # shorter than the context: the last frame but one ends it
    assert window_starts(3, 4, (1, 2), 1) == [(0, 1)]
    assert window_starts(1, 4, (1,), 1) == []


def test_make_samples_cuts_windows_with_texts_states_and_valid_horizons(grid_episodes):
    assert [e.length for e in grid_episodes] == [8, 8]
    samples = make_samples(grid_episodes, None, horizons=(1, 2, 4), context=2, samples_per_trajectory=2)
    assert [(s.episode_id, s.start, s.context_end) for s in samples] == [
        (e.id, a, b) for e in grid_episodes for a, b in ((0, 1), (3, 4))
    ]
    for s in samples:
        ep = next(e for e in grid_episodes if e.id == s.episode_id)
        assert s.c == s.context_end - s.start == 1 and s.horizons == (1, 2, 4)
        assert len(s.frames) == s.c + 4 + 1 == len(s.actions) + 1 == len(s.states)
        np.testing.assert_array_equal(s.target(2), ep.frames[s.context_end + 2])
        assert s.actions == ep.action_texts[s.start : s.start + len(s.actions)]
        assert s.states[s.c + 1]["agent"] == ep.infos[s.context_end + 1]["agent"]
        assert s.grid_size == 8
    # k=16 does not fit in 8 steps: one window per trajectory, scored at the horizons that fit
    long = make_samples(grid_episodes, None, horizons=(1, 4, 16), context=2, samples_per_trajectory=2)
    assert [(s.context_end, s.horizons) for s in long] == [(1, (1, 4))] * 2
    capped = make_samples(
        grid_episodes, None, horizons=(1,), context=2, samples_per_trajectory=3, max_samples=2
    )
    assert len(capped) == 2


def test_make_samples_bad_arguments_name_the_option(grid_episodes):
    with pytest.raises(ConfigError, match="frames.context"):
        make_samples(grid_episodes, None, context=0)
    with pytest.raises(ConfigError, match="frames.symbolic"):
        make_samples(grid_episodes, None, symbolic="maybe")
    video = Episode.from_arrays("clip", np.zeros((5, 64, 64, 3), np.uint8), [0] * 4, ["a"] * 4)
    with pytest.raises(ConfigError, match="not top-down GridWorld"):
        make_samples([video], None, horizons=(1,), symbolic="on")


# ---------------------------------------------------------------------------------------------- protocol
def test_each_mode_sees_the_right_history(tiny_pipe, grid_episodes, monkeypatch):
    """single_step at k observes true frames up to t0+k-1 plus action t0+k-1; open_loop follows the true actions."""
    calls, absorbed = [], []

    def fake_predict_batch(worlds, n_frames=1, actions=None, generator=None, absorb=True):
        if actions is not None:
            for w, acts in zip(worlds, actions):
                w.act(acts[0])
        calls.append([(w.frames_seen, _texts(w)[-1] if _texts(w) else None) for w in worlds])
        absorbed.append(absorb)
        frame = np.full((64, 64, 3), 128, np.uint8)
        for w in worlds if absorb else []:
            w.observe(frame)  # the predicted frame enters the history, as WorldModel does
        return [[frame] for _ in worlds]

    monkeypatch.setattr(protocol, "predict_batch", fake_predict_batch)
    samples = make_samples(grid_episodes[:1], None, horizons=(1, 2, 4), context=3)
    s = samples[0]
    preds, made = protocol.predict_samples(_wm(tiny_pipe, history=8), samples, batch_size=4)
    single, *open_steps = calls
    # one batched call for all single-step horizons: frames 0..c+k-1 seen, then the action at t0+k-1
    assert single == [(s.c + k, s.actions[s.c + k - 1]) for k in (1, 2, 4)]
    # open loop: the context frames, then one step per call along the true actions
    assert [c[0] for c in open_steps] == [(s.c + 1 + j, s.actions[s.c + j]) for j in range(4)]
    assert made == 3 + 4
    # single-step forks and the last open-loop frame are never re-encoded into a history
    assert absorbed == [False, True, True, True, False]
    assert sorted(preds["single_step"][0]) == sorted(preds["open_loop"][0]) == [1, 2, 4]


def test_scores_equal_direct_metrics_and_baselines(tiny_pipe, grid_episodes):
    result = evaluate_frame_prediction(
        _wm(tiny_pipe), grid_episodes, horizons=(1, 2), context=2, samples_per_trajectory=1, seed=3
    )
    summary = result.summary()
    assert summary["horizons"] == [1, 2]
    assert list(summary["modes"]) == ["single_step", "open_loop", "copy_last_frame", COPY_PREVIOUS_FRAME]
    assert result.predicted_frames == 2 * 2 + 2 * 2  # 2 samples x (2 single-step + 2 open-loop steps)
    for k in (1, 2):
        real = np.stack([s.target(k) for s in result.samples])
        last = np.stack([s.frames[s.c] for s in result.samples])
        prev = np.stack([s.frames[s.c + k - 1] for s in result.samples])
        modes = summary["modes"]
        j = k - 1
        # psnr: dataset-level (PSNR of the mean MSE); psnr_frame_mean: per-frame PSNR capped at 50 dB, averaged
        assert modes["copy_last_frame"]["psnr"]["mean"][j] == pytest.approx(psnr_of_mean_mse(mse(last, real)))
        assert modes["copy_last_frame"]["ssim"]["mean"][j] == pytest.approx(float(np.mean(ssim(last, real))))
        assert modes[COPY_PREVIOUS_FRAME]["psnr"]["mean"][j] == pytest.approx(
            psnr_of_mean_mse(mse(prev, real))
        )
        assert modes[COPY_PREVIOUS_FRAME]["ssim"]["mean"][j] == pytest.approx(
            float(np.mean(ssim(prev, real)))
        )
        for mode in ("single_step", "open_loop"):
            pred = np.stack([p[k] for p in result.predictions[mode]])
            assert pred.shape == real.shape and pred.dtype == np.uint8
            assert modes[mode]["psnr"]["mean"][j] == pytest.approx(psnr_of_mean_mse(mse(pred, real)))
            assert modes[mode]["psnr_frame_mean"]["mean"][j] == pytest.approx(
                float(np.mean(np.minimum(psnr(pred, real), 50.0)))
            )
            assert modes[mode]["psnr"]["n"][j] == 2
        # symbolic accuracy of the baseline: state decoded from frame t0 equals the true state at t0+k
        from worldbagel.envs import decode_frame

        truth = [decode_frame(s.frames[s.c]) == _state(s.states[s.c + k]) for s in result.samples]
        assert modes["copy_last_frame"]["symbolic_accuracy"]["mean"][j] == pytest.approx(np.mean(truth))
    sym = result.symbolic_section()
    assert sym["next_frame"]["n"] == 4 and f"open_loop_k{2}" in sym and "copy_last_frame_k2" in sym


def _state(info):
    return {"agent": tuple(info["agent"]), "heading": int(info["heading"]), "goal": tuple(info["goal"])}


def test_same_seed_same_scores(tiny_pipe, grid_episodes):
    a = evaluate_frame_prediction(
        _wm(tiny_pipe), grid_episodes, horizons=(1,), context=2, modes=["open_loop"], seed=5
    )
    b = evaluate_frame_prediction(
        _wm(tiny_pipe), grid_episodes, horizons=(1,), context=2, modes=["open_loop"], seed=5
    )
    assert a.summary() == b.summary()
    assert "single_step" not in a.summary()["modes"] and COPY_PREVIOUS_FRAME not in a.summary()["modes"]


def test_video_clips_are_continued_without_actions(tiny_pipe, tmp_path, frame):
    from worldbagel.video import write_video

    clip = np.stack([np.roll(frame, 4 * i, axis=1) for i in range(6)])
    write_video(tmp_path / "clip.gif", clip, fps=4)
    (episode,) = video_episodes(tmp_path / "clip.gif")
    assert not has_actions(episode) and episode.length == 5 and gridworld_size(episode) is None
    result = evaluate_frame_prediction(_wm(tiny_pipe), [episode], horizons=(1, 2), context=2, seed=0)
    (sample,) = result.samples
    assert sample.actions is None and sample.states is None
    assert "symbolic_accuracy" not in result.summary()["modes"]["open_loop"]
    assert result.symbolic_section() is None
    with pytest.raises(ConfigError, match="dataset.path"):
        video_episodes(tmp_path / "missing.mp4")


# ----------------------------------------------------------------------------------------------- planning
def test_integrate_actions_inverts_nwm_pose_to_action_conversion():
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(12, 2)) * 0.3
    position = np.cumsum(np.vstack([[1.0, -2.0], steps]), axis=0)
    yaw = np.cumsum(rng.normal(size=13) * 0.4) + 0.7
    actions = poses_to_actions(position, yaw, metric_waypoint_spacing=0.25)
    poses = integrate_actions(actions, scale=0.25, start=(position[0, 0], position[0, 1], yaw[0]))
    np.testing.assert_allclose(poses[:, :2], position, atol=1e-5)
    np.testing.assert_allclose(np.cos(poses[:, 2] - yaw), 1.0, atol=1e-6)
    assert integrate_actions(np.zeros((3, 3))).tolist() == [[0.0, 0.0, 0.0]] * 4


def test_navigation_with_the_oracle_and_soft_spl_from_final_distance(tmp_path):
    section, result = evaluate_navigation(
        "WorldBagel/GridWorld-v0", {"split": "eval"}, "oracle", episodes=2, seed=11, out_dir=tmp_path / "nav"
    )
    assert section["n_episodes"] == 2 and section["failed"] == 0
    assert section["success_rate"] == 1.0 and section["spl"] == 1.0 and section["soft_spl"] == 1.0
    lengths = [e.length for e in result.episodes]
    assert section["episode_length_mean"] == pytest.approx(np.mean(lengths))
    assert all(e.extra["distance_to_goal"] == 0.0 for e in result.episodes)
    assert (tmp_path / "nav" / "metrics.json").is_file()


def test_navigation_section_soft_spl_from_distances():
    eps = [
        SimpleNamespace(
            status="ok", success=False, spl=0.0, shortest_path=4.0, length=8, extra={"distance_to_goal": 1.0}
        ),
        SimpleNamespace(
            status="ok", success=True, spl=1.0, shortest_path=2.0, length=2, extra={"soft_spl": 0.9}
        ),
        SimpleNamespace(status="failed", success=None, spl=None, shortest_path=None, length=1, extra={}),
    ]
    s = navigation_section(SimpleNamespace(episodes=eps), "p", "e")
    assert s["n_episodes"] == 2 and s["failed"] == 1 and s["success_rate"] == 0.5
    assert s["soft_spl"] == pytest.approx(((1 - 1 / 4) * 4 / 8 + 0.9) / 2)


def test_goal_distance_info_and_missing_planner_error(monkeypatch):
    import gymnasium as gym

    from worldbagel.policies import POLICIES

    env = GoalDistanceInfo(gym.make("WorldBagel/GridWorld-v0"))
    _, info = env.reset(seed=0)
    assert info["distance_to_goal"] == float(info["distance"])
    env.close()
    monkeypatch.delitem(POLICIES, "planner", raising=False)
    with pytest.raises(ConfigError, match="policy.name.*planner policy registers itself"):
        policy_factory("planner", {}, 0, None)


def _nwm_episode(pipe_frame, n=6, seed=0) -> Episode:
    rng = np.random.default_rng(seed)
    actions = np.column_stack(
        [rng.uniform(0.5, 1.0, n), rng.uniform(-0.2, 0.2, n), rng.uniform(-0.3, 0.3, n)]
    )
    frames = np.stack([np.roll(pipe_frame, 3 * i, axis=0) for i in range(n + 1)])
    from worldbagel.actions import ContinuousActionCodec

    codec = ContinuousActionCodec()
    return Episode.from_arrays(
        f"traj{seed}",
        frames,
        [a.tolist() for a in actions],
        [codec.encode(a) for a in actions],
        metadata={"source": "nwm", "metric_waypoint_spacing": 0.5, "frame_skip": 1},
    )


def test_trajectory_planning_ate_rpe_keys_and_zero_motion_baseline(tiny_pipe, frame):
    from worldbagel.eval.planning import evaluate_trajectory_planning
    from worldbagel.eval.trajectory_metrics import ate

    episodes = [_nwm_episode(frame, seed=s) for s in (0, 1)]
    torch.manual_seed(0)
    out = evaluate_trajectory_planning(
        _wm(tiny_pipe), episodes, horizon=2, trajectories=2, context=2, population=2, elites=1, iterations=1
    )
    assert out["n_trajectories"] == 2 and out["units"] == "m" and out["horizon"] == 2
    assert math.isfinite(out["ate"]) and out["ate"] >= 0 and out["rpe"]["trans_rmse"] >= 0
    # the zero-motion baseline equals ATE of standing still against the integrated true actions
    expected = []
    for ep, rec in zip(episodes, out["per_trajectory"]):
        t0 = rec["t0"]
        truth = integrate_actions(ep.actions[t0 : t0 + 2], scale=0.5)
        expected.append(ate(np.zeros((3, 2)), truth[:, :2], "none"))
    assert out["zero_motion"]["ate"] == pytest.approx(np.mean(expected))
    with pytest.raises(ConfigError, match="trajectory.horizon"):
        evaluate_trajectory_planning(_wm(tiny_pipe), episodes, horizon=50)


def test_text_questions_are_asked_about_their_frame(tiny_pipe, grid_episodes):
    ep = grid_episodes[0]
    annotated = Episode.from_arrays(
        ep.id,
        ep.frames,
        ep.actions,
        ep.action_texts,
        infos=ep.infos,
        annotations=[
            {"qa": [{"q": "where is the goal?", "a": "left"}]} if t in (1, 3) else {}
            for t in range(ep.length)
        ],
    )
    assert [(t, q) for _, t, q, _, _ in collect_questions([annotated])] == [
        (1, "where is the goal?"),
        (3, "where is the goal?"),
    ]
    out = evaluate_text(_wm(tiny_pipe), [annotated], max_new_tokens=4, context=2)
    assert out["n"] == 2 and 0.0 <= out["accuracy"] <= 1.0 and len(out["examples"]) == 2
    assert out["accuracy"] == np.mean([e["correct"] for e in out["examples"]])
    assert evaluate_text(_wm(tiny_pipe), grid_episodes) is None


def test_think_mode_questions_are_asked_with_their_system_text_and_scored_after_the_thought(
    tiny_pipe, grid_episodes, monkeypatch
):
    ep = grid_episodes[0]
    pair = {
        "q": "next? Say a move.",
        "a": "<think> 0,0 to 0,1: r01 </think> move right",
        "system": "Think: walls.",
    }
    plain = {"q": "where?", "a": "here"}
    annotated = Episode.from_arrays(
        ep.id,
        ep.frames,
        ep.actions,
        ep.action_texts,
        annotations=[{"qa": [pair, plain]}] + [{}] * (ep.length - 1),
    )
    asked = []

    def reason(self, question, think=False, max_new_tokens=128, **kw):
        asked.append((self.think_prompt, question, think, max_new_tokens))
        return "move right"

    monkeypatch.setattr(WorldModel, "reason", reason)
    out = evaluate_text(_wm(tiny_pipe), [annotated], max_think_tokens=300)
    assert asked[0] == ("Think: walls.", "next? Say a move.", True, 300) and asked[1][1:3] == (
        "where?",
        False,
    )
    assert out["accuracy"] == 0.5 and out["examples"][0]["answer"] == "move right"
    assert out["examples"][0]["think"] is True
    # the accuracy of each question apart (named by its first sentence), its think form named so
    assert out["by_question"] == {
        "next? (think)": {"accuracy": 1.0, "correct": 1, "n": 1},
        "where?": {"accuracy": 0.0, "correct": 0, "n": 1},
    }


def test_annotated_env_episodes_open_histories_with_the_instruction_and_feed_the_text_task(tiny_pipe):
    from worldbagel.data.annotations import GOAL_QUESTION, GRIDWORLD_INSTRUCTION

    (ep,) = record_env_episodes(
        "WorldBagel/GridWorld-v0",
        {"split": "eval"},
        "random",
        episodes=1,
        seed=3,
        max_steps=4,
        annotate="gridworld",
    )
    assert len(ep.annotations) == ep.length and ep.annotations[0]["instruction"] == GRIDWORLD_INSTRUCTION
    assert [qa["q"] for qa in ep.annotations[1]["qa"]][0] == GOAL_QUESTION
    (sample,) = make_samples([ep], None, horizons=(1,), context=2)
    assert sample.instruction == GRIDWORLD_INSTRUCTION
    world = protocol.fresh_history(_wm(tiny_pipe), sample, sample.c)
    assert _texts(world)[0] == GRIDWORLD_INSTRUCTION and world.frames_seen == sample.c + 1
    out = evaluate_text(_wm(tiny_pipe), [ep], max_questions=2, max_new_tokens=2)
    assert out["n"] == 2 and {e["question"] for e in out["examples"]} <= {
        q["q"] for a in ep.annotations for q in a["qa"]
    }


def test_auto_annotation_is_the_envs_own_annotator():
    """annotate=auto (the eval dataset's default): GridWorld steps get gridworld-think's think-mode questions;
    an unknown name still fails before any env is built."""
    from worldbagel.data.annotations import GRIDWORLD_INSTRUCTION

    kwargs = {"split": "eval"}
    (auto,) = record_env_episodes(
        "WorldBagel/GridWorld-v0", kwargs, episodes=1, seed=3, max_steps=3, annotate="auto"
    )
    (think,) = record_env_episodes(
        "WorldBagel/GridWorld-v0", kwargs, episodes=1, seed=3, max_steps=3, annotate="gridworld-think"
    )
    assert (
        auto.annotations == think.annotations and auto.annotations[0]["instruction"] == GRIDWORLD_INSTRUCTION
    )
    with pytest.raises(ConfigError, match="annotate"):
        record_env_episodes("WorldBagel/GridWorld-v0", kwargs, episodes=1, annotate="gridworld-thinks")
