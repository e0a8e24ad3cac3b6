"""The small autoencoder trainer: reconstruction improves, latents are calibrated, FLUX-layout output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worldbagel.errors import ConfigError
from worldbagel.model.configuration import VAEConfig
from worldbagel.train.options import VAETrainConfig

VAE = VAEConfig(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)


@pytest.fixture(scope="module")
def frames():
    from worldbagel.train.toy_episodes import toy_episodes

    return [f for ep in toy_episodes(4, steps=5, seed=2) for f in ep.frames]


@pytest.mark.slow
def test_training_reduces_reconstruction_error_and_calibrates(frames):
    from worldbagel.model.vae import FluxVAE
    from worldbagel.train.vae_trainer import frames_tensor, reconstruction_loss, train_vae

    cfg = VAETrainConfig(steps=40, batch_size=4, lr=3e-3, image_size=32, seed=0, log_every=10)
    x = frames_tensor(frames, cfg.image_size)
    torch.manual_seed(cfg.seed)
    initial = float(reconstruction_loss(FluxVAE.from_config(VAE).eval(), x))  # the trainer's seeded init
    vae, logs = train_vae(frames, VAEConfig(**vars(VAE)), cfg)
    trained = float(reconstruction_loss(vae, x))
    assert trained < 0.5 * initial
    assert [m["step"] for m in logs] == [10, 20, 30, 40] and logs[-1]["recon"] < logs[0]["recon"]
    with torch.no_grad():
        z = vae.encode(x)  # scaled posterior means
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1.0) < 1e-3


def test_saved_autoencoder_is_flux_layout_and_reloads(frames, tmp_path):
    from worldbagel.model.vae import load_vae
    from worldbagel.train.vae_trainer import frames_tensor, save_trained_vae, train_vae

    vae, logs = train_vae(
        frames[:8], VAEConfig(**vars(VAE)), VAETrainConfig(steps=2, batch_size=4, log_every=1)
    )
    save_trained_vae(vae, tmp_path, logs)
    saved = json.loads((tmp_path / "vae_config.json").read_text())
    assert saved["scale_factor"] == vae.config.scale_factor and saved["ch_mult"] == [1, 1, 1, 1]
    back = load_vae(tmp_path, VAEConfig(**saved))
    assert load_vae(tmp_path).config.ch_mult == [1, 1, 1, 1]  # a folder's vae_config.json is read by default
    x = frames_tensor(frames[:2], 64)
    with torch.no_grad():
        assert torch.equal(back.encode(x), vae.encode(x))
    assert len((tmp_path / "vae_metrics.jsonl").read_text().splitlines()) == 2


def test_bad_options():
    with pytest.raises(ConfigError, match="recon"):
        VAETrainConfig(recon="l2")
    with pytest.raises(ConfigError, match="steps"):
        VAETrainConfig(steps=0)
    with pytest.raises(ConfigError, match="recon_weighting"):
        VAETrainConfig(recon_weighting="inverse")


def test_rarity_weights_lift_rare_colours():
    from worldbagel.train.vae_trainer import rarity_weights, weighted_reconstruction

    x = torch.full((2, 3, 10, 10), -1.0)
    x[0, :, 4, 4] = 1.0  # one white pixel among 199 black ones
    w = rarity_weights(x)
    assert w.shape == (2, 1, 10, 10) and float(w.mean()) == pytest.approx(1.0)
    assert float(w[0, 0, 4, 4]) == pytest.approx(199 * float(w[0, 0, 0, 0]))
    x_hat = x.clone()
    x_hat[0, :, 4, 4] = -1.0  # erase the rare pixel: barely visible to plain l1, not to the weighted loss
    plain = float(weighted_reconstruction(x_hat, x, "l1", "none"))
    weighted = float(weighted_reconstruction(x_hat, x, "l1", "rarity"))
    assert plain == pytest.approx(2.0 / 200) and weighted > 40 * plain
    # radius 1: the 3x3 floor around the rare pixel weighs as much as the pixel (painting a halo costs)
    spread = rarity_weights(x, radius=1)
    assert float(spread.mean()) == pytest.approx(1.0)
    ring = spread[0, 0, 3:6, 3:6]
    assert torch.allclose(ring, ring[1, 1].expand(3, 3)) and float(ring[1, 1]) > 10 * float(
        spread[0, 0, 0, 0]
    )
    assert float(spread[0, 0, 2, 2]) == pytest.approx(float(spread[0, 0, 0, 0]))  # outside the radius
    halo = x.clone()
    halo[0, :, 3, 3] = 1.0  # a hallucinated pixel next to the rare one
    assert float(weighted_reconstruction(halo, x, "l1", "rarity", radius=1)) > 10 * float(
        weighted_reconstruction(halo, x, "l1", "rarity")
    )
    with pytest.raises(ConfigError, match="rarity_radius"):
        VAETrainConfig(rarity_radius=-1)


def test_train_vae_cli_then_finetune_with_it(tmp_path, capsys):
    from worldbagel.cli import main
    from worldbagel.data.trajectory import EpisodeWriter
    from worldbagel.model.bagel_folder import load_bagel
    from worldbagel.train.toy_episodes import toy_episodes

    data = tmp_path / "data"
    for ep in toy_episodes(2, steps=3, seed=4):
        with EpisodeWriter(data, ep.id, env_id="Toy-v0") as wr:
            wr.start(ep.frames[0], {})
            for t in range(ep.length):
                wr.add_step(
                    ep.actions[t],
                    ep.frames[t + 1],
                    0.0,
                    False,
                    t == ep.length - 1,
                    action_text=ep.action_texts[t],
                )
            wr.finish()
    vae_dir = tmp_path / "vae"
    args = [
        "train-vae",
        f"data={data}",
        f"out={vae_dir}",
        "train.steps=3",
        "train.batch_size=4",
        "vae.ch_mult=[1,1,1,1]",
        "max_frames=3",
        f"extra_data=[{data}]",  # every frame of an extra folder, beyond max_frames
    ]
    assert main(args) == 0
    assert "train-vae on 11 frames" in capsys.readouterr().out  # 3 of data + all 8 of the extra folder
    assert (vae_dir / "ae.safetensors").is_file() and (vae_dir / "vae_config.json").is_file()
    out = tmp_path / "wm"
    assert (
        main(
            [
                "finetune",
                "model=scratch-tiny",
                f"vae={vae_dir}",
                f"data={data}",
                f"out={out}",
                "train.steps=1",
            ]
        )
        == 0
    )
    loaded = load_bagel(out)
    assert loaded.vae.config.ch_mult == [1, 1, 1, 1]
    with torch.no_grad():
        x = torch.from_numpy(np.zeros((1, 3, 64, 64), np.float32))
        z = loaded.vae.encode(x)
    assert z.shape == (1, 16, 8, 8)


def test_success_repeat_adds_the_final_frames_of_successful_episodes(tmp_path):
    from worldbagel.commands.train_vae import collect_frames
    from worldbagel.data.episode_writer import EpisodeWriter

    data = tmp_path / "data"
    for i, won in enumerate((True, False)):
        with EpisodeWriter(data, f"e{i}", env_id="Toy-v0") as wr:
            wr.start(np.full((8, 8, 3), 10 * i, np.uint8), {})
            for t in range(3):  # frame t + 1 has value 10 * i + t + 1
                last = t == 2
                info = {"success": won and last}
                wr.add_step(0, np.full((8, 8, 3), 10 * i + t + 1, np.uint8), 0.0, won and last, False, info)
            wr.finish()
    base = collect_frames(str(data), None, None)
    assert len(base) == 8
    more = collect_frames(str(data), None, None, success_repeat=2)
    assert len(more) == 10 and [int(f[0, 0, 0]) for f in more[8:]] == [3, 3]  # e0's last frame, twice
    with pytest.raises(ConfigError, match="success_repeat"):
        collect_frames(str(data), None, None, success_repeat=-1)


def test_freeze_encoder_trains_only_the_decoder_and_keeps_the_latents(frames):
    from worldbagel.model.vae import FluxVAE
    from worldbagel.train.vae_trainer import frames_tensor, train_vae

    torch.manual_seed(0)
    start = FluxVAE.from_config(VAEConfig(**vars(VAE)))
    start.config.shift_factor, start.config.scale_factor = 0.1, 2.0
    before = {k: v.clone() for k, v in start.ae.state_dict().items()}
    x = frames_tensor(frames[:4], 32)
    with torch.no_grad():
        z0 = start.encode(x)
    cfg = VAETrainConfig(steps=3, batch_size=4, lr=1e-3, image_size=32, freeze_encoder=True)
    vae, _ = train_vae(frames, start.config, cfg, init=start)
    after = vae.ae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # the decoder learned, nothing else
    with torch.no_grad():
        assert torch.equal(
            vae.encode(x), z0
        )  # same latents, same calibration: a world model on them still fits
    assert (vae.config.shift_factor, vae.config.scale_factor) == (0.1, 2.0)
    with pytest.raises(ConfigError, match="freeze_encoder"):
        train_vae(frames, VAEConfig(**vars(VAE)), cfg)
