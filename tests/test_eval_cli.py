"""`worldbagel eval` end to end on the tiny fixture (in-process through cli.main)."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from worldbagel.cli import main
from worldbagel.data.collect import collect
from worldbagel.data.trajectory import TrajectoryDataset
from worldbagel.errors import DependencyNotInstalled
from worldbagel.eval.report import read_metrics_json
from worldbagel.frame_metrics import mse, psnr, psnr_of_mean_mse, ssim
from worldbagel.policies import make_policy
from worldbagel.rollout import build_env

GRID_KWARGS = {"size": 8, "obs_size": 64, "max_steps": 64, "split": "eval"}


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory):
    """Two 6-step random GridWorld episodes (64 px) written by the project's collector."""
    root = tmp_path_factory.mktemp("eval-data") / "grid"
    collect(
        partial(build_env, "WorldBagel/GridWorld-v0", GRID_KWARGS),
        partial(make_policy, "random", seed=0),
        root,
        episodes=2,
        seed=3,
        env_id="WorldBagel/GridWorld-v0",
        split="eval",
        max_steps=6,
        metadata={"env": "gridworld", "env_kwargs": GRID_KWARGS},
    )
    return root


def _tiny(tiny_dir) -> list[str]:
    return [
        "model=tiny",
        f"model.path={tiny_dir}",
        "sampler.num_steps=3",
        "frames.horizons=[1,2]",
        "frames.context=2",
    ]


def test_eval_on_a_trajectory_folder_writes_every_output(tiny_dir, grid_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", *_tiny(tiny_dir), "dataset=trajectories", f"dataset.path={grid_data}", f"out={out}"]
    assert main([*args, "controllability.max_samples=2"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # not the writer lock
    assert names == [
        "config.yaml",
        "contact_sheet.png",
        "horizon_psnr.png",
        "horizon_ssim.png",
        "horizon_symbolic_accuracy.png",
        "metrics.json",
        "overrides.yaml",
    ]
    doc = read_metrics_json(out / "metrics.json")
    run = doc["run"]
    # collected episodes record env id, kwargs and seed: they replay, so controllability runs by default;
    # GridWorld has no turn actions, so the look-back test says why it did not run
    assert run["tasks"] == ["frames", "controllability", "lookback"]
    assert set(run["skipped"]) == {"lookback", "navigation", "trajectory", "text"}
    assert "no turn left / turn right" in run["skipped"]["lookback"] and "lookback" not in doc
    ctrl = doc["controllability"]
    assert (
        ctrl["histories"] == 2
        and ctrl["n"] == 8
        and set(ctrl["per_action"])
        == {
            "move up",
            "move right",
            "move down",
            "move left",
        }
    )
    assert ctrl["chance"] == 0.25 and 0 <= ctrl["accuracy"] <= 1 and "accuracy" in ctrl["copy_last_frame"]
    assert run["frames"]["samples"] == 2 and run["frames"]["predicted_frames"] == 2 * 2 + 2 * 2
    fp = doc["frame_prediction"]
    assert fp["horizons"] == [1, 2]
    assert set(fp["modes"]) == {"single_step", "open_loop", "copy_last_frame", "copy_previous_frame"}
    assert fp["higher_is_better"] == {
        "psnr": True,
        "psnr_frame_mean": True,
        "ssim": True,
        "symbolic_accuracy": True,
    }
    # the baselines equal the metrics computed directly from the stored frames (t0 = context - 1 = 1): psnr is
    # dataset-level (PSNR of the mean MSE), the per-frame mean capped at 50 dB beside it
    eps = TrajectoryDataset(grid_data)
    for j, k in enumerate((1, 2)):
        real = np.stack([ep.frames[1 + k] for ep in eps])
        for mode, t in (("copy_last_frame", 1), ("copy_previous_frame", k)):
            copy = np.stack([ep.frames[t] for ep in eps])
            base = fp["modes"][mode]
            assert base["psnr"]["mean"][j] == pytest.approx(psnr_of_mean_mse(mse(copy, real)))
            assert base["psnr_frame_mean"]["mean"][j] == pytest.approx(
                float(np.mean(np.minimum(psnr(copy, real), 50)))
            )
            assert base["ssim"]["mean"][j] == pytest.approx(float(np.mean(ssim(copy, real))))
            assert base["psnr"]["n"][j] == 2
    assert doc["symbolic"]["next_frame"]["n"] == 4 and "open_loop_k2" in doc["symbolic"]
    printed = capsys.readouterr().out
    assert "Frame prediction" in printed and "copy_last_frame" in printed and str(out) in printed


def test_eval_env_dataset_with_navigation(tiny_dir, tmp_path):
    """dataset=gridworld records held-out episodes now; the oracle's navigation needs no model time."""
    out = tmp_path / "nav"
    args = [
        "eval",
        *_tiny(tiny_dir),
        "dataset.episodes=1",
        "dataset.max_steps=4",
        "frames.modes=[open_loop]",
        "frames.contact_sheet_samples=0",
        "tasks=[frames,navigation]",
        "policy=oracle",
        "navigation.episodes=2",
        f"out={out}",
    ]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["run"]["dataset"]["format"] == "env" and doc["run"]["episodes"] == 1
    assert set(doc["frame_prediction"]["modes"]) == {"open_loop", "copy_last_frame"}
    nav = doc["navigation"]
    assert (
        nav["policy"] == "oracle"
        and nav["n_episodes"] == 2
        and nav["success_rate"] == 1.0
        and nav["spl"] == 1.0
    )
    rollout = json.loads((out / "navigation" / "metrics.json").read_text())
    assert [e["seed"] for e in rollout["episodes"]] == [1000, 1001]  # navigation.seed, held-out layouts
    assert not (out / "contact_sheet.png").exists()
    # the default baselines minus the evaluated policy: random beside the oracle, same seeds
    assert set(nav["baselines"]) == {"random"}
    rand = nav["baselines"]["random"]
    assert rand["policy"] == "random" and rand["n_episodes"] == 2 and rand["spl"] < 1.0


def test_eval_miniworld_records_held_out_scenes_and_runs_controllability_and_lookback(
    tiny_dir, tmp_path, monkeypatch
):
    """`worldbagel eval env=miniworld`: episodes from the eval split (world seeds never trained on), no text
    annotator (annotate=auto), controllability over the moves (stop excluded), and the look-back test."""
    from worldbagel.envs.miniworld_env import EVAL_WORLD_SEEDS
    from worldbagel.eval import heldout

    try:
        build_env("WorldBagel/MiniWorld-OneRoom-v0", {"obs_size": 32}).close()
    except DependencyNotInstalled as exc:
        pytest.skip(f"MiniWorld cannot render here: {exc}")
    recorded, real_record = [], heldout.record_env_episodes

    def record(*args, **kwargs):  # keeps what eval recorded, to look at the episodes' scenes
        recorded.extend(real_record(*args, **kwargs))
        return recorded

    monkeypatch.setattr(heldout, "record_env_episodes", record)
    out = tmp_path / "mini"
    args = ["eval", *_tiny(tiny_dir), "env=miniworld", "env.id=WorldBagel/MiniWorld-OneRoom-v0"]
    args += ["env.kwargs.obs_size=32", "dataset.episodes=2", "dataset.max_steps=6", "dataset.seed=3"]
    args += ["tasks=[controllability,lookback]", "controllability.max_samples=2", "lookback.turns=[1]"]
    args += ["lookback.max_samples=1", f"out={out}"]
    assert main(args) == 0
    assert [ep.metadata["metadata"]["env_kwargs"]["split"] for ep in recorded] == ["eval", "eval"]
    assert all(info["world_seed"] in EVAL_WORLD_SEEDS for ep in recorded for info in ep.infos)
    assert all(not any(ep.annotations) for ep in recorded)
    doc = read_metrics_json(out / "metrics.json")
    assert doc["run"]["tasks"] == ["controllability", "lookback"] and doc["run"]["skipped"] == {}
    ctrl = doc["controllability"]
    assert ctrl["excluded_actions"] == ["stop"] and list(ctrl["per_action"]) == [
        "turn left 15 degrees",
        "turn right 15 degrees",
        "move forward 0.15 m",
    ]
    k1 = doc["lookback"]["turns"]["k1"]
    assert set(k1) == {"window", "one_frame", "copy_last_frame", "memory_gain_db"}
    assert k1["window"]["returns_exactly"] == 1.0 and k1["copy_last_frame"]["final_psnr"] == 100.0


def test_eval_navigation_baselines_sit_beside_the_policy(tiny_dir, tmp_path, capsys):
    out = tmp_path / "base"
    args = ["eval", *_tiny(tiny_dir), "tasks=[navigation]", "policy=random", "navigation.episodes=2"]
    args += ["navigation.baselines=[oracle,random]", f"out={out}"]
    assert main(args) == 0
    nav = json.loads((out / "metrics.json").read_text())["navigation"]
    assert nav["policy"] == "random" and set(nav["baselines"]) == {"oracle"}  # not the policy itself
    oracle = nav["baselines"]["oracle"]
    assert oracle["success_rate"] == 1.0 and oracle["spl"] == 1.0 and oracle["n_episodes"] == 2
    assert "baselines.oracle.spl" in capsys.readouterr().out  # the table shows them
    # an unknown name is refused before any episode runs
    assert main([*args[:-2], "navigation.baselines=[nope]", f"out={tmp_path / 'bad'}"]) == 1
    printed = capsys.readouterr().out.replace("\n", "")
    assert "navigation.baselines" in printed and "nope" in printed and not (tmp_path / "bad").exists()


def test_eval_navigation_baseline_without_an_oracle_is_skipped(tiny_dir, tmp_path):
    from PIL import Image

    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(4):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(clip / f"{i:03d}.png")
    out = tmp_path / "video"
    args = ["eval", *_tiny(tiny_dir), "tasks=[navigation]", "policy=random", "navigation.episodes=1"]
    assert main([*args, "env=video", f"env.kwargs.path={clip}", f"out={out}"]) == 0
    nav = json.loads((out / "metrics.json").read_text())["navigation"]
    assert nav["n_episodes"] == 1 and nav["policy"] == "random"  # the evaluated policy still ran
    # the default baselines are random (the policy itself: not repeated) and oracle (no expert for a video)
    assert list(nav["baselines"]) == ["oracle"] and "oracle" in nav["baselines"]["oracle"]["skipped"].lower()


def test_eval_planner_plans_with_the_evaluated_model(tiny_dir, tmp_path):
    out = tmp_path / "plan"
    args = [
        "eval",
        *_tiny(tiny_dir),
        "tasks=[navigation]",
        "env.kwargs.max_steps=2",
        "navigation.episodes=1",
        "policy.kwargs.horizon=1",
        f"out={out}",
    ]
    assert main(args) == 0
    nav = json.loads((out / "metrics.json").read_text())["navigation"]
    assert nav["policy"] == "planner" and nav["n_episodes"] == 1 and nav["failed"] == 0
    assert nav["episode_length_mean"] <= 2


def test_eval_bad_dataset_path_is_named(tiny_dir, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert (
        main(
            [
                "eval",
                *_tiny(tiny_dir),
                "dataset=trajectories",
                f"dataset.path={missing}",
                f"out={tmp_path / 'r'}",
            ]
        )
        == 1
    )
    printed = capsys.readouterr().out.replace("\n", "")
    assert "dataset.path" in printed and "nope" in printed
    assert not (tmp_path / "r").exists()


def test_eval_bad_task_and_folder_without_index(tiny_dir, tmp_path, capsys):
    assert main(["eval", *_tiny(tiny_dir), "tasks=[frames,dance]", f"out={tmp_path / 'r'}"]) == 1
    assert "tasks" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                *_tiny(tiny_dir),
                "dataset=trajectories",
                f"dataset.path={tmp_path}",
                f"out={tmp_path / 'r'}",
            ]
        )
        == 1
    )
    assert "index.json" in capsys.readouterr().out.replace("\n", "")


def _nwm_layout(root, names=("traj_a", "traj_b"), n=7):
    """A tiny NWM/GNM-layout dataset: jpg frames + traj_data.pkl (we wrote the pickle ourselves)."""
    import pickle

    from PIL import Image

    rng = np.random.default_rng(0)
    base = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    for j, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        yaw = np.cumsum(rng.uniform(-0.2, 0.2, n))
        step = np.column_stack([np.cos(yaw), np.sin(yaw)]) * 0.25
        position = np.cumsum(step, axis=0)
        for i in range(n):
            Image.fromarray(np.roll(base, 2 * i + j, axis=1)).save(folder / f"{i}.jpg")
        with open(folder / "traj_data.pkl", "wb") as f:
            pickle.dump({"position": position, "yaw": yaw}, f)


def test_eval_nwm_layout_runs_frames_and_open_loop_planning(tiny_dir, tmp_path):
    data = tmp_path / "nwm"
    _nwm_layout(data)
    out = tmp_path / "run"
    args = [
        "eval",
        *_tiny(tiny_dir),
        "dataset=nwm",
        f"dataset.path={data}",
        "dataset.metric_waypoint_spacing=0.25",
        "frames.modes=[single_step]",
        "trajectory.horizon=2",
        "trajectory.population=2",
        "trajectory.elites=1",
        "trajectory.iterations=1",
        f"out={out}",
    ]
    assert main(args) == 0
    doc = read_metrics_json(out / "metrics.json")
    assert doc["run"]["tasks"] == ["frames", "trajectory"]
    assert (
        "symbolic" not in doc and "symbolic_accuracy" not in doc["frame_prediction"]["modes"]["single_step"]
    )
    traj = doc["trajectory"]
    assert traj["n_trajectories"] == 2 and traj["units"] == "m" and traj["horizon"] == 2
    assert traj["ate"] >= 0 and traj["rpe"]["trans_rmse"] >= 0 and len(traj["per_trajectory"]) == 2
    # standing still ends as far from the true end as the (nearly straight) true 2-step path is long
    assert traj["zero_motion"]["final_error"] == pytest.approx(traj["path_length_mean"], rel=0.05)
