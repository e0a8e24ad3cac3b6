"""Evaluation metrics: frame, navigation, trajectory, text, symbolic, horizons (perceptual: test_perceptual_metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldbagel.errors import ConfigError
from worldbagel.eval import metrics as M

RNG = np.random.default_rng(1234)


def noisy(frames: np.ndarray, amount: int) -> np.ndarray:
    noise = RNG.integers(-amount, amount + 1, frames.shape)
    return np.clip(frames.astype(np.int64) + noise, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ frames
def test_mse_l1_psnr_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 51, np.uint8)  # 51/255 = 0.2
    assert M.mse(a, b) == pytest.approx(0.04)
    assert M.l1(a, b) == pytest.approx(0.2)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04))
    # float input in [0, 1] gives the same numbers as uint8
    assert M.psnr(a / 255.0, b / 255.0) == pytest.approx(M.psnr(a, b))
    # torch input and an explicit data range
    assert M.mse(torch.zeros(8, 8, 3), torch.full((8, 8, 3), 2.0), data_range=10.0) == pytest.approx(0.04)


def test_psnr_identical_frames_capped_or_inf():
    a = RNG.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert np.all(M.psnr(a, a) == 100.0)
    assert np.all(np.isinf(M.psnr(a, a, max_db=None)))


def test_dataset_psnr_and_capped_frame_mean_known_values():
    assert M.psnr_of_mean_mse([0.01, 0.001]) == pytest.approx(10 * math.log10(1 / 0.0055))
    assert M.psnr_of_mean_mse([0.0, 0.0]) == 100.0 and M.psnr_of_mean_mse([0.0], max_db=60) == 60.0
    assert M.capped_psnr_mean([20.0, 100.0, float("inf")]) == pytest.approx((20 + 50 + 50) / 3)
    assert M.capped_psnr_mean([20.0, 40.0], cap_db=30) == 25.0
    with pytest.raises(ConfigError, match="mse_values"):
        M.psnr_of_mean_mse([])
    with pytest.raises(ConfigError, match="mse_values"):
        M.psnr_of_mean_mse([0.1, -1.0])


def test_identical_frames_cannot_game_the_headline_psnr():
    """One exact frame among poor ones wins the per-frame mean (100 dB counts), not the dataset-level PSNR."""
    real = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 60, 120, 180)])
    copy = real.copy()
    copy[1:] = np.clip(real[1:].astype(int) + 40, 0, 255).astype(np.uint8)  # one exact frame, three ~16 dB
    model = np.clip(real.astype(int) + 8, 0, 255).astype(np.uint8)  # every frame ~30 dB
    scores = M.HorizonScores([1])
    scores.add_frames("copy", 1, copy, real, names=("psnr",))
    scores.add_frames("model", 1, model, real, names=("psnr",))
    modes = scores.summary()["modes"]
    assert np.mean(M.psnr(copy, real)) > np.mean(M.psnr(model, real))  # the old aggregate was gamed
    assert modes["model"]["psnr"]["mean"][0] > modes["copy"]["psnr"]["mean"][0] + 10
    mse_copy = float(np.mean(M.mse(copy, real)))
    assert modes["copy"]["psnr"]["mean"][0] == pytest.approx(10 * math.log10(1 / mse_copy))
    assert modes["copy"][M.PSNR_FRAME_MEAN]["mean"][0] == pytest.approx(
        float(np.mean(np.minimum(M.psnr(copy, real), 50.0)))
    )


def test_batched_shapes_follow_leading_dims():
    a = RNG.integers(0, 256, (2, 3, 16, 20, 3), dtype=np.uint8)
    b = noisy(a, 20)
    for fn in (M.psnr, M.ssim, M.mse, M.l1):
        out = fn(b, a)
        assert out.shape == (2, 3)
        # each entry equals the single-frame call
        assert out[1, 2] == pytest.approx(fn(b[1, 2], a[1, 2]))
    assert isinstance(M.ssim(b[0, 0], a[0, 0]), float)
    both = M.frame_metrics(b, a, names=("psnr", "l1"))
    assert set(both) == {"psnr", "l1"} and both["psnr"].shape == (2, 3)


@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_torchmetrics(channels):
    tm = pytest.importorskip("torchmetrics.functional.image")
    a = RNG.integers(0, 256, (5, 24, 30, channels), dtype=np.uint8)
    b = noisy(a, 40)
    b[0] = a[0]  # one identical pair
    mine = M.ssim(b, a)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255
    ref = tm.structural_similarity_index_measure(tb, ta, data_range=1.0, reduction="none").numpy()
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-10)
    assert mine[0] == pytest.approx(1.0)
    assert np.all(mine[1:] < 0.99)
    ref_psnr = [float(tm.peak_signal_noise_ratio(tb[i], ta[i], data_range=1.0)) for i in range(1, 5)]
    np.testing.assert_allclose(M.psnr(b[1:], a[1:]), ref_psnr, rtol=1e-6)


def test_ssim_orders_by_corruption():
    a = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    light, heavy = noisy(a, 10), noisy(a, 80)
    assert 1.0 > M.ssim(light, a) > M.ssim(heavy, a)
    assert M.psnr(light, a) > M.psnr(heavy, a)


def test_frame_metric_errors_name_the_argument():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match="pred.shape"):
        M.mse(np.zeros((8, 9, 3), np.uint8), a)
    with pytest.raises(ConfigError, match="channel-last"):
        M.psnr(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)))
    with pytest.raises(ConfigError, match="SSIM needs frames larger"):
        M.ssim(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="names"):
        M.frame_metrics(a, a, names=("psnr", "fid"))
    with pytest.raises(ConfigError, match="data_range"):
        M.mse(a, a, data_range=0)


# -------------------------------------------------------------------------------------- navigation
def test_success_spl_soft_spl_known_answers():
    success = [True, True, False, True]
    shortest = [10.0, 10.0, 10.0, 0.0]
    taken = [10.0, 20.0, 5.0, 0.0]
    assert M.success_rate(success) == 0.75
    np.testing.assert_allclose(M.spl_per_episode(success, shortest, taken), [1.0, 0.5, 0.0, 1.0])
    assert M.spl(success, shortest, taken) == pytest.approx(2.5 / 4)
    final = [0.0, 0.0, 4.0, 0.0]
    # episode 3 got 60% of the way with a path shorter than the shortest one: 0.6 * 10/10
    np.testing.assert_allclose(M.soft_spl_per_episode(final, shortest, taken), [1.0, 0.5, 0.6, 1.0])
    # moving away from the goal clips soft success to 0; a separate initial distance is honoured
    assert M.soft_spl([15.0], [10.0], [10.0]) == 0.0
    assert M.soft_spl([5.0], [10.0], [10.0], initial_distance=[20.0]) == pytest.approx(0.75)


def test_navigation_summary_and_errors():
    eps = [
        {"success": True, "shortest": 4, "taken": 4, "final_distance": 0, "steps": 4},
        {"success": False, "shortest": 4, "taken": 8, "final_distance": 2, "steps": 8},
    ]
    s = M.navigation_summary(eps)
    assert s == {
        "n_episodes": 2,
        "success_rate": 0.5,
        "spl": 0.5,
        "soft_spl": pytest.approx((1.0 + 0.5 * 0.5) / 2),
        "episode_length_mean": 6.0,
        "episode_length_std": 2.0,
    }
    with pytest.raises(ConfigError, match="episodes\\[0\\]"):
        M.navigation_summary([{"success": True}])
    with pytest.raises(ConfigError, match="len\\(taken\\)"):
        M.spl([True, False], [1, 1], [1])
    with pytest.raises(ConfigError, match=">= 0"):
        M.spl([True], [1], [-1])


# -------------------------------------------------------------------------------------- trajectory
def _rot3(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_ate_zero_after_rigid_alignment_3d_and_2d():
    rng = np.random.default_rng(0)
    true = np.cumsum(rng.normal(size=(40, 3)), axis=0)
    rot, shift = _rot3(rng), np.array([5.0, -2.0, 1.0])
    pred = true @ rot.T + shift
    assert M.ate(pred, true) == pytest.approx(0.0, abs=1e-9)
    assert M.ate(pred, true, align="none") > 1.0
    r, t, s = M.umeyama_alignment(pred, true)
    np.testing.assert_allclose(r, rot.T, atol=1e-9)
    assert s == 1.0 and np.linalg.det(r) == pytest.approx(1.0)
    # similarity alignment recovers a global scale
    assert M.ate(2.5 * pred, true, align="sim") == pytest.approx(0.0, abs=1e-9)
    assert M.ate(2.5 * pred, true, align="rigid") > 1.0
    # 2-D, given as (x, y, yaw) poses
    xy = np.cumsum(rng.normal(size=(30, 2)), axis=0)
    c, s2 = np.cos(0.7), np.sin(0.7)
    moved = xy @ np.array([[c, -s2], [s2, c]]).T + [3.0, 4.0]
    yaw = np.zeros((30, 1))
    assert M.ate(M.poses_from_xy_yaw(np.hstack([moved, yaw])), xy) == pytest.approx(0.0, abs=1e-9)


def test_ate_constant_offset_without_alignment():
    true = np.stack([np.arange(10.0), np.zeros(10)], axis=1)
    assert M.ate(true + [0.0, 0.3], true, align="none") == pytest.approx(0.3)
    np.testing.assert_allclose(M.ate_errors(true + [0.4, 0.3], true, align="none"), 0.5)


def test_rpe_constant_drift():
    n = 12
    true = np.stack([np.arange(n, dtype=float), np.zeros(n), np.zeros(n)], axis=1)
    # translation drift: 0.1 extra forward per step; rotation drift: yaw grows 0.05 per step
    drift = true.copy()
    drift[:, 0] *= 1.1
    out = M.rpe(M.poses_from_xy_yaw(drift), M.poses_from_xy_yaw(true), delta=1)
    assert out["trans_rmse"] == pytest.approx(0.1) and out["rot_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert out["n"] == n - 1
    assert M.rpe(M.poses_from_xy_yaw(drift), M.poses_from_xy_yaw(true), delta=4)[
        "trans_mean"
    ] == pytest.approx(0.4)
    spin = true.copy()
    spin[:, 2] = 0.05 * np.arange(n)
    r = M.rpe(M.poses_from_xy_yaw(spin), M.poses_from_xy_yaw(spin), delta=2)
    assert r["trans_rmse"] == pytest.approx(0.0, abs=1e-12) and r["rot_rmse"] == pytest.approx(0.0, abs=1e-12)
    turned = true.copy()
    turned[:, 2] = 0.05 * np.arange(n)  # pred turns while true goes straight: rot error 0.05 per step
    r = M.rpe(M.poses_from_xy_yaw(turned), M.poses_from_xy_yaw(true), delta=1)
    assert r["rot_mean"] == pytest.approx(0.05) and r["rot_rmse"] == pytest.approx(0.05)


def test_rpe_3d_rigid_transform_of_both_is_invariant():
    rng = np.random.default_rng(3)
    n = 8
    poses = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        poses[i, :3, :3] = _rot3(rng)
        poses[i, :3, 3] = rng.normal(size=3)
    g = np.eye(4)
    g[:3, :3], g[:3, 3] = _rot3(rng), [1.0, 2.0, 3.0]
    r = M.rpe(g @ poses, poses, delta=1)  # a global frame change leaves relative motions unchanged
    assert r["trans_rmse"] == pytest.approx(0.0, abs=1e-9) and r["rot_rmse"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="delta"):
        M.rpe(poses, poses, delta=n)
    with pytest.raises(ConfigError, match="SE\\(2\\)"):
        M.rpe(np.zeros((4, 3)), np.zeros((4, 3)))


# --------------------------------------------------------------------------------------------- text
def test_exact_match_normalisation():
    assert M.normalize_answer("  The  Goal!\n") == "the goal"
    assert M.exact_match("Move LEFT.", "move left")
    assert M.exact_match("two", ["2", "Two"])
    assert not M.exact_match("goal", "the goal")
    assert M.exact_match("goal", "the goal", drop_articles=True)
    assert not M.exact_match("move left", "move right")
    out = M.qa_accuracy(["Red", "blue ", "3"], ["red", ["Blue", "navy"], "three"])
    assert out == {"accuracy": pytest.approx(2 / 3), "correct": 2, "n": 3}
    with pytest.raises(ConfigError, match="len\\(predictions\\)"):
        M.qa_accuracy(["a"], ["a", "b"])


# ----------------------------------------------------------------------------------------- symbolic
def _toy_decode(frame, size=4):
    """Decoder for toy frames: agent = brightest red pixel, heading = green value, goal = blue pixel."""
    f = np.asarray(frame)
    if f.max() == 0:
        return None
    if f[..., 0].max() == 0:
        raise ValueError("no agent")
    agent = np.unravel_index(np.argmax(f[..., 0]), f.shape[:2])
    goal = np.unravel_index(np.argmax(f[..., 2]), f.shape[:2])
    return {
        "agent": (int(agent[0]) // size, int(agent[1]) // size),
        "heading": int(f[..., 1].max()),
        "goal": goal,
    }


def _toy_frame(agent, heading, goal):
    f = np.zeros((8, 8, 3), np.uint8)
    f[agent[0] * 4, agent[1] * 4, 0] = 255
    f[0, 0, 1] = heading
    f[goal[0], goal[1], 2] = 255
    return f


def test_symbolic_accuracy_with_a_decoder_callable():
    states = [{"agent": (0, 1), "heading": 2, "goal": [3, 3]}] * 5
    frames = [_toy_frame((0, 1), 2, (3, 3))] * 2
    frames.append(_toy_frame((1, 1), 2, (3, 3)))  # wrong agent
    frames.append(np.zeros((8, 8, 3), np.uint8))  # decoder returns None
    only_goal = np.zeros((8, 8, 3), np.uint8)
    only_goal[3, 3, 2] = 255
    frames.append(only_goal)  # decoder raises
    res = M.symbolic_accuracy(np.stack(frames), states, _toy_decode, size=4)
    assert (res.n, res.correct, res.undecodable) == (5, 2, 2)
    d = res.as_dict()
    assert d["accuracy"] == pytest.approx(0.4) and d["undecodable_rate"] == pytest.approx(0.4)
    assert d["agent_accuracy"] == pytest.approx(0.4) and d["goal_accuracy"] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="len\\(frames\\)"):
        M.symbolic_accuracy(frames[:2], states, _toy_decode)
    with pytest.raises(ConfigError, match="decode"):
        M.symbolic_accuracy(frames, states, "decode_frame")


def test_symbolic_accuracy_on_gridworld_frames():
    import worldbagel.envs as envs

    env = envs.GridWorldEnv(size=5, obs_size=64)
    obs, info = env.reset(seed=3)
    frames, states = [obs], [info]
    for a in (0, 1, 2, 3, 1):
        obs, _, term, trunc, info = env.step(a)
        frames.append(obs)
        states.append(info)
        if term or trunc:
            break
    res = M.symbolic_accuracy(frames, states, envs.decode_frame, size=5)
    assert res.accuracy == 1.0 and res.undecodable == 0
    shifted = M.symbolic_accuracy(frames[1:], states[:-1], envs.decode_frame, size=5)  # off-by-one frames
    assert shifted.correct < shifted.n
    blank = M.symbolic_accuracy([np.zeros_like(frames[0])], states[:1], envs.decode_frame, size=5)
    assert (blank.correct, blank.undecodable) == (0, 1)


# ----------------------------------------------------------------------------------------- horizons
def _trajectory(batch=3, steps=20, side=16) -> np.ndarray:
    """(B, T, H, W, 3) frames where a bright square moves one pixel per step."""
    frames = np.zeros((batch, steps, side, side, 3), np.uint8)
    for b in range(batch):
        for t in range(steps):
            x = (t + b) % (side - 4)
            frames[b, t, 4:8, x : x + 4] = 200
    return frames


def test_copy_last_frame_predictions_and_targets():
    frames = _trajectory(steps=10)
    preds = M.copy_last_frame_predictions(frames, context_end=3)
    targets = M.horizon_targets(frames, context_end=3)
    assert sorted(preds) == [1, 2, 4] == sorted(targets)  # 3 + 8 >= 10 is outside
    np.testing.assert_array_equal(preds[4], frames[:, 3])
    np.testing.assert_array_equal(targets[4], frames[:, 7])
    assert M.valid_horizons(20, 3) == (1, 2, 4, 8, 16)
    with pytest.raises(ConfigError, match="context_end"):
        M.copy_last_frame_predictions(frames, context_end=10)
    with pytest.raises(ConfigError, match="horizons"):
        M.valid_horizons(10, 0, horizons=(0, 1))


def test_horizon_scores_summary():
    frames = _trajectory(steps=19)  # context_end 3 + 16 = 19 is outside
    scores = M.HorizonScores()
    scores.add_copy_last_frame(frames, context_end=3, names=("psnr", "mse"))
    targets = M.horizon_targets(frames, context_end=3)
    for k, target in targets.items():
        scores.add_frames(M.SINGLE_STEP, k, target, target, names=("psnr", "mse"))  # a perfect model
    scores.add(M.OPEN_LOOP, 1, {"psnr": [20.0, 30.0]})
    s = scores.summary()
    assert s["horizons"] == [1, 2, 4, 8, 16]
    assert list(s["modes"]) == [M.COPY_LAST_FRAME, M.SINGLE_STEP, M.OPEN_LOOP]
    base = s["modes"][M.COPY_LAST_FRAME]["mse"]
    assert base["n"] == [3, 3, 3, 3, 0] and base["mean"][-1] is None
    # the square moves further with the horizon, so copying the last frame gets worse (then saturates)
    assert base["mean"][0] < base["mean"][1] < base["mean"][2]
    assert s["modes"][M.SINGLE_STEP]["mse"]["mean"][:4] == [0.0] * 4
    # psnr is dataset-level: 20 and 30 dB are MSEs 0.01 and 0.001, PSNR of their mean 0.0055
    assert s["modes"][M.OPEN_LOOP]["psnr"] == {
        "mean": [pytest.approx(10 * math.log10(1 / 0.0055)), None, None, None, None],
        "std": [None] * 5,
        "n": [2, 0, 0, 0, 0],
        "aggregate": "psnr_of_mean_mse",
    }
    # ... and the per-frame mean (capped at 50 dB) sits beside it
    assert s["modes"][M.OPEN_LOOP][M.PSNR_FRAME_MEAN] == {
        "mean": [25.0, None, None, None, None],
        "std": [5.0, None, None, None, None],
        "n": [2, 0, 0, 0, 0],
    }
    assert list(s["modes"][M.SINGLE_STEP]) == ["psnr", M.PSNR_FRAME_MEAN, "mse"]
    perfect = s["modes"][M.SINGLE_STEP]
    assert perfect["psnr"]["mean"][:4] == [100.0] * 4 and perfect[M.PSNR_FRAME_MEAN]["mean"][:4] == [50.0] * 4
    assert "mse" not in s["modes"][M.OPEN_LOOP]
    np.testing.assert_allclose(scores.values(M.OPEN_LOOP, 1, "psnr"), [20.0, 30.0])
    with pytest.raises(ConfigError, match="horizon"):
        scores.add(M.OPEN_LOOP, 3, {"psnr": 1.0})
    with pytest.raises(ConfigError, match="NaN"):
        scores.add(M.OPEN_LOOP, 1, {"psnr": float("nan")})
    with pytest.raises(ConfigError, match="FVD"):
        scores.add_frames(M.OPEN_LOOP, 1, frames[:, 0], frames[:, 0], perceptual=[M.FVDMetric()])
