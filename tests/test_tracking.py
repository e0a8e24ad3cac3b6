"""Experiment tracking: TensorBoard / W&B backends read back from their files, the fail-fast dependency check,
finetune's validation loss and predicted frames, train-vae / eval / rollout tracking, the code version and a
rollout's metrics.json."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tracking_files import (
    finished_wandb_records,
    tb_image,
    tb_scalars,
    tb_text,
    tensorboard_events,
    wandb_config,
    wandb_history,
)

from worldbagel.cli import main
from worldbagel.errors import ConfigError, DependencyNotInstalled
from worldbagel.tracking import TrackerConfig, open_tracker, require_backend

ROOT = Path(__file__).resolve().parent.parent


def write_toy_data(root: Path, episodes: int = 3, steps: int = 4, seed: int = 1) -> Path:
    from worldbagel.data.trajectory import EpisodeWriter
    from worldbagel.train.toy_episodes import toy_episodes

    for ep in toy_episodes(episodes, steps=steps, seed=seed):
        with EpisodeWriter(root, ep.id, env_id="Toy-v0", split="train") as wr:
            wr.start(ep.frames[0], {})
            for t in range(ep.length):
                last = t == ep.length - 1
                wr.add_step(ep.actions[t], ep.frames[t + 1], 0.0, last, False, action_text=ep.action_texts[t])
            wr.finish()
    return root


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("tracking") / "data")


SMALL_PACKS = ["packing.expected_tokens=256", "packing.max_tokens=320", "packing.max_tokens_per_sample=256"]


# ------------------------------------------------------------------------------------------------ the interface
def test_tracker_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="tracker.backend"):
        TrackerConfig(backend="mlflow")
    with pytest.raises(ConfigError, match="tracker.mode"):
        TrackerConfig(mode="sometimes")
    with pytest.raises(ConfigError, match="tracker.every"):
        TrackerConfig(every=0)
    with pytest.raises(ConfigError, match="tracker.media_every"):
        TrackerConfig(media_every=-1)


def test_tensorboard_tracker_writes_what_tensorboard_reads(tmp_path):
    pytest.importorskip("tensorboard")
    from worldbagel.code_version import code_version

    tracker = open_tracker(
        TrackerConfig(backend="tensorboard"), tmp_path, "finetune", {"train": {"steps": 7}}
    )
    tracker.log_scalars(1, {"train/loss": 0.5, "val/loss": None})
    tracker.log_scalars(2, {"train/loss": 0.25})
    image = np.zeros((8, 12, 3), np.uint8)
    image[:, :6] = 255
    tracker.log_images(2, "predicted/next_frame", [image, image])
    video = np.stack([np.full((8, 8, 3), 40 * t, np.uint8) for t in range(5)])
    tracker.log_video(2, "predicted/open_loop", video, fps=5)
    tracker.close()

    events = tensorboard_events(tmp_path / "tensorboard")
    assert tb_scalars(events, "train/loss") == {1: 0.5, 2: 0.25}
    assert "val/loss" not in events.Tags()["scalars"]  # None values are skipped
    step, first = tb_image(events, "predicted/next_frame")
    assert step == 2 and first.size == (24, 8)  # TensorBoard tiles the batch of two images
    assert np.asarray(first.convert("RGB"))[0, 0].tolist() == [255, 255, 255]
    step, gif = tb_image(events, "predicted/open_loop")
    assert step == 2 and gif.format == "GIF" and gif.n_frames == 5 and gif.size == (8, 8)
    assert "steps: 7" in tb_text(events, "config") and "finetune" in tb_text(events, "command")
    assert f"version: {code_version()['version']}" in tb_text(events, "code_version")


def test_a_resumed_tensorboard_log_drops_what_the_interrupted_attempt_logged_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    first = open_tracker(TrackerConfig(backend="tensorboard"), tmp_path, "finetune")
    for step in (1, 2, 3, 4):  # a run killed after step 4, whose last checkpoint is step 2
        first.log_scalars(step, {"train/loss": float(step)})
    first.close()
    again = open_tracker(TrackerConfig(backend="tensorboard"), tmp_path, "finetune", resume_step=3)
    again.log_scalars(3, {"train/loss": 30.0})
    again.close()
    assert tb_scalars(tensorboard_events(tmp_path / "tensorboard"), "train/loss") == {1: 1.0, 2: 2.0, 3: 30.0}


def test_wandb_offline_tracker_records_scalars_media_and_config(tmp_path):
    pytest.importorskip("wandb")
    from PIL import Image

    cfg = TrackerConfig(backend="wandb", mode="offline", project="tests")
    tracker = open_tracker(cfg, tmp_path, "train-vae", {"train": {"steps": 3}})
    tracker.log_scalars(1, {"vae/recon": 0.75})
    tracker.log_images(2, "vae/reconstruction", [np.zeros((8, 8, 3), np.uint8)])
    video = np.stack([np.full((8, 8, 3), 60 * t, np.uint8) for t in range(3)])
    tracker.log_video(3, "rollout/episode", video, fps=2)
    tracker.close()

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = finished_wandb_records(run_dir)
    history = wandb_history(records)
    assert history[1]["vae/recon"] == 0.75
    assert history[2]["vae/reconstruction/count"] == 1 and history[3]["rollout/episode/_type"] == "video-file"
    media = run_dir / "files"
    assert (media / history[2]["vae/reconstruction/filenames"][0]).is_file()
    with Image.open(media / history[3]["rollout/episode/path"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
    config = wandb_config(records)
    assert config["config"] == {"train": {"steps": 3}} and config["command"] == "train-vae"
    assert config["code_version"]["version"]
    # a resumed run continues the same W&B run
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    open_tracker(cfg, tmp_path, "train-vae", {}, resume_step=2).close()
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert {name.split("-")[-1] for name in runs} == {run_id}, (runs, run_id)


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_a_missing_backend_is_reported_before_anything_loads(
    backend, monkeypatch, tmp_path, capsys, toy_data
):
    """A missing package fails each command at once: no data read, no model loaded, no run folder made."""
    import worldbagel.commands.rollout as rollout_cmd
    import worldbagel.commands.train_vae as vae_cmd
    import worldbagel.data.episode_source as sources
    import worldbagel.eval.heldout as heldout
    import worldbagel.world_model_loader as loader

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard" if backend == "tensorboard" else "wandb", None)
    loaded = []

    def loads(name):
        return lambda *a, **k: loaded.append(name)

    monkeypatch.setattr(sources, "load_episodes", loads("finetune data"))
    monkeypatch.setattr(vae_cmd, "collect_frames", loads("train-vae frames"))
    monkeypatch.setattr(heldout, "load_heldout", loads("eval data"))
    monkeypatch.setattr(loader, "load_pipeline", loads("eval model"))
    monkeypatch.setattr(rollout_cmd, "run_rollouts", loads("rollout"))
    with pytest.raises(DependencyNotInstalled, match=r"worldbagel\[tracking\]"):
        require_backend(TrackerConfig(backend=backend))
    commands = {
        "finetune": ["model=scratch-tiny", f"data={toy_data}"],
        "train-vae": [f"data={toy_data}"],
        "eval": [],
        "rollout": ["policy=random", "episodes=1"],
    }
    for command, args in commands.items():
        out = tmp_path / command
        assert main([command, *args, f"out={out}", f"tracker.backend={backend}"]) == 1, command
        printed = capsys.readouterr().out.replace("\n", "")
        assert f"tracker.backend={backend}" in printed and "pip install" in printed, command
        assert not out.exists(), command
    assert loaded == []


# ------------------------------------------------------------------------------------------------ finetune
def test_finetune_in_tensorboard_shows_losses_val_loss_predicted_frames_and_config(toy_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = [
        "finetune",
        "model=scratch-tiny",
        f"data={toy_data}",
        f"out={out}",
        "train.steps=3",
        "train.val_every=2",
        "val_fraction=0.34",  # one of the three episodes is held out
        "tracker.backend=tensorboard",
        "tracker.media_every=2",
        "tracker.media_frames=2",
        *SMALL_PACKS,
    ]
    assert main(args) == 0
    events = tensorboard_events(out / "tensorboard")
    assert sorted(tb_scalars(events, "train/loss")) == [1, 2, 3]
    assert sorted(tb_scalars(events, "val/loss")) == [2, 3]  # every val_every steps and the last
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("val_loss" in m) for m in lines] == [False, True, True]
    assert tb_scalars(events, "val/loss")[3] == pytest.approx(lines[2]["val_loss"])
    step, image = tb_image(events, "predicted/next_frame")
    assert step == 3 and image.size[0] > 3 * 64  # context | real | predicted, 64 px frames
    step, video = tb_image(events, "predicted/open_loop")
    assert step == 3 and video.format == "GIF" and video.n_frames == 1 + 2  # context frame + 2 predicted
    assert sorted(e.step for e in events.Images("predicted/next_frame")) == [2, 3]
    config = tb_text(events, "config")
    assert "scratch-tiny" in config and "val_fraction: 0.34" in config
    assert "git_sha" in tb_text(events, "code_version")


def test_finetune_refuses_a_bad_held_out_fraction(toy_data, tmp_path, capsys):
    args = ["finetune", "model=scratch-tiny", f"data={toy_data}", f"out={tmp_path / 'r'}", "val_fraction=1.5"]
    assert main(args) == 1
    assert "val_fraction" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_parts():
    """A fresh scratch-tiny model, its VAE and tokenizer, a frame encoder and toy episodes."""
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset("scratch-tiny", seed=0)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    return fresh, encoder, toy_episodes(3, steps=4, seed=2)


def _training_data(parts, episodes):
    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.train.data_stream import TrainingData

    fresh, encoder, _ = parts
    s = fresh.tokenizer.special
    return TrainingData(
        episodes,
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=1),
        DropoutConfig(),
        PackingConfig(256, 320, 256),
    )


def test_validation_loss_uses_fixed_noise_and_follows_the_weights(tiny_parts):
    from worldbagel.train.objective import LossWeights
    from worldbagel.train.validation import Validation, heldout_data

    fresh, _, episodes = tiny_parts
    train = _training_data(tiny_parts, episodes[:2])
    val = Validation(heldout_data(episodes[2:], train, fresh.tokenizer.encode), packs=2)
    assert val.data.dropout.vae == 0.0 and not val.data.shuffle  # nothing dropped, episode order
    model = copy.deepcopy(fresh.model).train()
    args = (LossWeights(), 1.0, torch.device("cpu"))
    torch.manual_seed(1)
    first = val.evaluate(model, *args)
    torch.manual_seed(2)  # the global RNG does not matter: the noise and timesteps are fixed
    assert val.evaluate(model, *args) == first
    assert model.training and all(p.grad is None for p in model.parameters())
    assert first["val_loss"] == pytest.approx(first["val_loss_ce"] + first["val_loss_mse"])
    with torch.no_grad():
        model.llm2vae.weight.add_(0.01)
    assert val.evaluate(model, *args)["val_loss_mse"] != first["val_loss_mse"]


def test_validation_and_tracking_leave_the_training_run_unchanged(tiny_parts, tmp_path):
    pytest.importorskip("tensorboard")
    from worldbagel.train.loop import Trainer
    from worldbagel.train.options import OptimConfig, TrainConfig
    from worldbagel.train.preview import FramePreview
    from worldbagel.train.validation import Validation, heldout_data

    fresh, encoder, episodes = tiny_parts
    cfg = TrainConfig(steps=3, save_every=100, ema_decay=0.0, val_every=1, optim=OptimConfig(lr=2e-3))

    def run(out: Path, tracked: bool) -> list[float]:
        data = _training_data(tiny_parts, episodes[:2])
        extra = {}
        if tracked:
            val = Validation(heldout_data(episodes[2:], data, fresh.tokenizer.encode), packs=1)
            preview = FramePreview(
                episodes[2:], data.plan_cfg, 1, 1, encoder.vae_transform, encoder.vit_transform
            )
            extra = {"tracking": TrackerConfig(backend="tensorboard", media_every=1), "validation": val}
            extra["preview"] = preview
        trainer = Trainer(copy.deepcopy(fresh.model), data, cfg, out, fresh.vae, fresh.tokenizer, **extra)
        trainer.train()
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert run(tmp_path / "tracked", True) == run(tmp_path / "plain", False)
    events = tensorboard_events(tmp_path / "tracked" / "tensorboard")
    val = tb_scalars(events, "val/loss")
    assert sorted(val) == [1, 2, 3] and len(set(val.values())) == 3  # it follows the training
    assert len(events.Images("predicted/next_frame")) == 3


def test_preview_shows_real_and_predicted_frames_of_fixed_windows(tiny_parts):
    from worldbagel.data.sequence_plan import PlanConfig
    from worldbagel.train.preview import FramePreview

    fresh, encoder, episodes = tiny_parts
    plan = PlanConfig(context_frames=2)
    preview = FramePreview(episodes[:1], plan, 2, 3, encoder.vae_transform, encoder.vit_transform)
    # one episode, two samples: two different windows of it; the video starts at its first frame
    assert [w.context for w in preview.windows] == [2, 2] and len(preview.rollout.frames) == 2 + 3
    assert not np.array_equal(preview.windows[0].frames, preview.windows[1].frames)
    assert preview.rollout.actions == episodes[0].action_texts[:4]
    model = copy.deepcopy(fresh.model).train()
    images, video = preview.render(model, fresh.vae, fresh.tokenizer)
    assert model.training  # the pipeline's eval mode is undone
    assert len(images) == 2 and images[0].dtype == np.uint8 and images[0].shape[1] > 3 * 64
    assert video.shape[0] == 5 and video.shape[2] > 2 * 64
    # the real panel holds the window's real next frame (left label strip of 12 px, then the 64 px frame)
    real = images[0][12 : 12 + 64, 64 + 2 : 64 + 2 + 64]
    assert np.array_equal(real, preview.windows[0].frames[2])
    again, _ = preview.render(model, fresh.vae, fresh.tokenizer)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))  # fixed noise: only weights change it


# ------------------------------------------------------------------------------------------------ other commands
def test_train_vae_tracks_losses_reconstructions_and_config(toy_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "vae"
    args = [
        "train-vae",
        f"data={toy_data}",
        f"out={out}",
        "train.steps=4",
        "train.batch_size=4",
        "vae.ch_mult=[1,1,1,1]",
        "tracker.backend=tensorboard",
        "tracker.every=2",
        "tracker.media_every=2",
    ]
    assert main(args) == 0
    events = tensorboard_events(out / "tensorboard")
    assert sorted(tb_scalars(events, "vae/recon")) == [2, 4] and sorted(tb_scalars(events, "vae/kl")) == [
        2,
        4,
    ]
    step, image = tb_image(events, "vae/reconstruction")
    assert step == 4 and image.size[0] > 2 * 64  # real | reconstructed
    assert "ch_mult" in tb_text(events, "config")


def test_eval_tracks_headline_figures_and_the_contact_sheet(tiny_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from worldbagel.data.trajectory import TrajectoryDataset

    data = write_toy_data(tmp_path / "data", episodes=2, steps=4)
    out = tmp_path / "eval"
    args = [
        "eval",
        "model=tiny",
        f"model.path={tiny_dir}",
        "sampler.num_steps=2",
        "frames.horizons=[1,2]",
        "frames.context=1",
        "frames.max_samples=2",
        "tasks=[frames]",
        "dataset=trajectories",
        f"dataset.path={data}",
        f"out={out}",
        "tracker.backend=tensorboard",
    ]
    assert len(TrajectoryDataset(data)) == 2
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    events = tensorboard_events(out / "tensorboard")
    psnr = doc["frame_prediction"]["modes"]["single_step"]["psnr"]["mean"]
    # each metric is a curve over the horizon (the step)
    assert tb_scalars(events, "eval/frames/single_step/psnr") == pytest.approx({1: psnr[0], 2: psnr[1]})
    step, sheet = tb_image(events, "eval/contact_sheet")
    assert step == 0 and sheet.size[0] > 100
    assert "tasks:" in tb_text(events, "config")
    assert doc["run"]["code_version"]["version"]


def test_rollout_tracks_episodes_and_videos_with_wandb_offline(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "rollout"
    args = [
        "rollout",
        "policy=oracle",
        "episodes=2",
        f"out={out}",
        "tracker.backend=wandb",
        "tracker.mode=offline",
    ]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = finished_wandb_records(run_dir)
    history = wandb_history(records)
    for e in doc["episodes"]:
        row = history[e["episode"]]
        assert row["rollout/return"] == pytest.approx(e["return"]) and row["rollout/spl"] == pytest.approx(
            e["spl"]
        )
        assert (run_dir / "files" / row["rollout/episode/path"]).is_file()  # every episode's video
    assert history[2]["rollout/aggregate/success_rate"] == doc["aggregate"]["success_rate"]
    assert wandb_config(records)["config"]["policy"]["name"] == "oracle"


# ------------------------------------------------------------------------------------------------ what ran
def test_rollout_metrics_json_names_policy_kwargs_model_sampler_and_code(tmp_path):
    out = tmp_path / "r"
    args = [
        "rollout",
        "policy=scripted",
        "policy.kwargs.actions=[1,2]",
        "episodes=1",
        "max_steps=2",
        f"out={out}",
    ]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["policy_kwargs"]["actions"] == [1, 2] and doc["model"] is None and doc["sampler"] is None
    from worldbagel.code_version import code_version

    assert doc["code_version"] == json.loads(json.dumps(code_version()))


def test_policy_metadata_resolves_the_world_model_and_its_sampler():
    from worldbagel.config import ModelConfig
    from worldbagel.rollout import policy_metadata

    given = policy_metadata({"model": {"name": "gridworld", "path": None}, "sampler": "fast", "horizon": 2})
    assert given["model"] == {"name": "gridworld", "path": None}
    assert given["sampler"]["num_steps"] == 8 and given["policy_kwargs"]["horizon"] == 2
    # no sampler: the model's own preset (the shipped gridworld model: 4 unguided steps)
    own = policy_metadata({"model": ModelConfig(name="tiny", path="/m", sampler="gridworld")})
    assert own["model"] == {"name": "tiny", "path": "/m"} and own["sampler"]["num_steps"] == 4
    assert own["policy_kwargs"]["model"]["path"] == "/m"  # dataclasses written as mappings


def test_code_version_is_the_checkout_commit_and_never_fails(monkeypatch, tmp_path):
    import worldbagel.code_version as cv

    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert cv.git_state(ROOT)[0] == head.stdout.strip()
    nested = tmp_path / "repo" / "site-packages"  # a package folder inside someone else's repository
    nested.mkdir(parents=True)
    git = ["git", "-C", str(tmp_path / "repo"), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "outer"], check=True)
    assert cv.git_state(nested) == (None, None)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(cv.subprocess, "run", no_git)
    cv.code_version.cache_clear()
    try:
        assert cv.code_version() == {"version": cv.package_version(), "git_sha": None, "git_dirty": None}
    finally:
        cv.code_version.cache_clear()
