"""The fine-tuning loop: loss goes down, stages/freezing, NaN guard, export, schedules, the finetune CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
from worldbagel.errors import ConfigError
from worldbagel.model.sequence import SpecialIds
from worldbagel.model.transforms import ImageTransform
from worldbagel.train.options import OptimConfig, TrainConfig


@pytest.fixture(scope="module")
def parts():
    """Tokenizer, random VAE, frame encoder (latents cached across tests) and toy episodes."""
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.presets import build_preset
    from worldbagel.train.toy_episodes import toy_episodes

    fresh = build_preset("scratch-tiny", seed=0)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    return fresh, encoder, toy_episodes(2, steps=4, annotate=True)


def new_model(parts):
    from worldbagel.model.bagel import Bagel

    torch.manual_seed(0)
    model = Bagel(copy.deepcopy(parts[0].config))
    model.init_weights()
    return model


def make_data(parts, plan=None, dropout=None, expected=256, episodes=None):
    from worldbagel.train.data_stream import TrainingData

    fresh, encoder, all_episodes = parts
    episodes = all_episodes if episodes is None else episodes
    s = fresh.tokenizer.special
    return TrainingData(
        episodes,
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        plan or PlanConfig(context_frames=1),
        dropout or DropoutConfig(),
        PackingConfig(expected, expected + 64, expected),
    )


def trainer(parts, out, model=None, **kw):
    from worldbagel.train.loop import Trainer

    optim = kw.pop("optim", OptimConfig(lr=2e-3))
    cfg = TrainConfig(**{"steps": 2, "save_every": 100, "ema_decay": 0.5, "optim": optim, **kw})
    fresh = parts[0]
    return Trainer(model or new_model(parts), make_data(parts), cfg, out, fresh.vae, fresh.tokenizer)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_data_stream_is_a_pure_function_of_the_cursor(parts):
    a, b = make_data(parts), make_data(parts)
    assert a.epoch_packs(0) == b.epoch_packs(0) and a.epoch_packs(1) != a.epoch_packs(0)
    n0 = len(a.epoch_packs(0))
    assert a.locate(n0) == (1, 0) and a.locate(n0 - 1) == (0, n0 - 1)
    x, y = a.batch(3), b.batch(3)
    assert torch.equal(x.seq.position_ids, y.seq.position_ids) and torch.equal(
        x.seq.vae_tokens, y.seq.vae_tokens
    )
    assert x.dropped == y.dropped
    assert torch.equal(
        torch.randn(3, generator=a.noise_generator(3)), torch.randn(3, generator=b.noise_generator(3))
    )
    assert parts[1].encoded == len(parts[2])  # each episode went through the VAE once


def test_loss_decreases_on_a_tiny_overfit_set(parts, tmp_path):
    tr = trainer(parts, tmp_path, steps=14, optim=OptimConfig(lr=3e-3, warmup_steps=2))
    # one episode, no dropout, all 4 samples in one pack: the same data every step
    tr.data = make_data(parts, dropout=DropoutConfig(0.0, 0.0, 0.0), expected=1024, episodes=parts[2][:1])
    tr.train()
    metrics = read_metrics(tmp_path)
    losses, ce = [m["loss"] for m in metrics], [m["loss_ce"] for m in metrics]
    assert len(losses) == 14 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    assert np.mean(ce[-3:]) < 0.5 * np.mean(ce[:3])
    assert set(metrics[-1]) >= {"loss", "loss_ce", "loss_mse", "lr", "grad_norm", "tokens", "tokens_per_s"}


def test_align_stage_trains_only_the_connector(parts, tmp_path):
    tr = trainer(parts, tmp_path, stage="align")
    before = snapshot(tr.model)
    tr.train()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("connector.") for k in changed)
    assert {n.split(".")[0] for n in tr.trainable} == {"connector"}


def test_position_tables_train_only_when_asked_and_survive_the_export(parts, tmp_path):
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.heads import sincos_2d

    tables = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")
    frozen = trainer(parts, tmp_path / "frozen")
    assert not set(tables) & set(frozen.trainable)
    tr = trainer(parts, tmp_path / "learned", train_pos_embed=True, ema_decay=0.0)
    assert set(tables) <= set(tr.trainable)
    before = snapshot(tr.model)
    tr.train()
    after = tr.model.state_dict()
    for name in tables:
        assert not torch.equal(before[name], after[name]), name
    # the export keeps the learned rows: loading must not refill the sin-cos values
    loaded = Bagel.from_pretrained(tmp_path / "learned").state_dict()
    for name in tables:
        assert torch.equal(loaded[name], after[name]), name
        sincos = torch.from_numpy(sincos_2d(loaded[name].shape[1], int(loaded[name].shape[0] ** 0.5)))
        assert not torch.allclose(loaded[name], sincos.float()), name
    assert not set(tables) & set(
        trainer(parts, tmp_path / "align", stage="align", train_pos_embed=True).trainable
    )
    und_frozen = trainer(parts, tmp_path / "und", freeze_und=True, train_pos_embed=True).trainable
    assert "latent_pos_embed.pos_embed" in und_frozen and "vit_pos_embed.pos_embed" not in und_frozen


def test_freeze_und_trains_only_the_generation_path(parts, tmp_path):
    from worldbagel.train.objective import compute_losses

    tr = trainer(parts, tmp_path, freeze_und=True)
    before = snapshot(tr.model)
    tr.train()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    gen = ("time_embedder.", "vae2llm.", "llm2vae.")
    assert changed and all("moe_gen" in k or k.startswith(gen) for k in changed)
    assert any("moe_gen" in k for k in changed)
    unchanged_und = [k for k in before if k.startswith("language_model.") and "moe_gen" not in k]
    assert unchanged_und and all(torch.equal(before[k], after[k]) for k in unchanged_und)
    compute_losses(tr.model, tr.data.batch(0), torch.Generator().manual_seed(0))["loss"].backward()
    grads = {n: p.grad for n, p in tr.model.named_parameters()}
    assert all(
        grads[n] is None for n in grads if n.startswith(("vit_model.", "connector.")) or n in unchanged_und
    )
    assert grads["llm2vae.weight"].abs().sum() > 0
    assert grads["language_model.model.layers.0.mlp_moe_gen.up_proj.weight"].abs().sum() > 0


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(parts, tmp_path, monkeypatch):
    from worldbagel.train import loop
    from worldbagel.train.state import latest_checkpoint, load_checkpoint

    real = loop.compute_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] >= 3:
            out["loss"] = out["loss"] * float("nan")
            out["mse_sum"] = out["mse_sum"] * float("nan")
        return out

    monkeypatch.setattr(loop, "compute_losses", poisoned)
    tr = trainer(parts, tmp_path, steps=6, save_every=2)
    with pytest.raises(loop.TrainingDiverged, match=r"step 3 .*step-00000002"):
        tr.train()
    last = latest_checkpoint(tmp_path)
    assert last is not None and last.name == "step-00000002"
    ck = load_checkpoint(last)
    assert ck.state.step == 2
    now = tr.model.state_dict()
    assert all(torch.equal(ck.model_state[k], now[k]) for k in ck.model_state)  # the bad step changed nothing
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]


def test_export_is_a_bagel_folder_with_ema_and_raw_weights(parts, tmp_path):
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.bagel_folder import load_bagel
    from worldbagel.model.weights_file import load_file

    tr = trainer(parts, tmp_path, steps=3, save_every=2, ema_decay=0.5)
    result = tr.train()
    assert result.steps == 3 and result.checkpoint.name == "step-00000003"
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [
        "step-00000002",
        "step-00000003",
    ]
    ema_model = Bagel.from_pretrained(tmp_path)
    raw = load_file(tmp_path / "model.safetensors")
    now = tr.model.state_dict()
    assert all(torch.equal(raw[k], now[k]) for k in now)
    ema = ema_model.state_dict()
    name = "language_model.model.layers.0.mlp.gate_proj.weight"
    assert not torch.equal(ema[name], raw[name])  # EMA differs from the raw weights ...
    shadow = tr.ema.state_dict()[name]
    assert torch.equal(ema[name], shadow)  # ... and is exactly the shadow
    assert torch.equal(ema["vit_pos_embed.pos_embed"], raw["vit_pos_embed.pos_embed"])
    loaded = load_bagel(tmp_path)
    assert len(loaded.tokenizer) == len(parts[0].tokenizer) and loaded.vae.config.ch == 32


def test_lr_schedule():
    from worldbagel.train.loop import lr_at

    cfg = TrainConfig(steps=10, optim=OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=2, schedule="cosine"))
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    const = TrainConfig(steps=10, optim=OptimConfig(lr=1e-4))
    assert {lr_at(s, const) for s in range(10)} == {1e-4}
    with pytest.raises(ConfigError, match="schedule"):
        OptimConfig(schedule="linear")


def test_an_existing_run_needs_resume(parts, tmp_path):
    trainer(parts, tmp_path, steps=1).train()
    with pytest.raises(ConfigError, match="resume=true"):
        trainer(parts, tmp_path, steps=2)


def test_finetune_cli_end_to_end(tmp_path):
    from worldbagel.cli import main
    from worldbagel.data.trajectory import EpisodeWriter
    from worldbagel.model.bagel import Bagel
    from worldbagel.train.toy_episodes import toy_episodes

    data = tmp_path / "data"
    for ep in toy_episodes(2, steps=3, seed=1):
        with EpisodeWriter(data, ep.id, env_id="Toy-v0", split="train") as wr:
            wr.start(ep.frames[0], {})
            for t in range(ep.length):
                wr.add_step(
                    ep.actions[t],
                    ep.frames[t + 1],
                    0.0,
                    t == ep.length - 1,
                    False,
                    action_text=ep.action_texts[t],
                )
            wr.finish()
    out = tmp_path / "run"
    args = [
        "finetune",
        "model=scratch-tiny",
        f"data={data}",
        f"out={out}",
        "train.steps=2",
        "packing.expected_tokens=256",
        "packing.max_tokens=320",
        "packing.max_tokens_per_sample=256",
    ]
    assert main(args) == 0
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert (out / "latent_cache").is_dir() and any((out / "latent_cache").iterdir())
    Bagel.from_pretrained(out)
    assert main(args) == 1  # the run exists: refused without train.resume=true
    assert main([*args, "train.resume=true", "train.steps=3"]) == 0
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]


def test_activation_checkpointing_gives_the_same_training(parts, tmp_path):
    plain = trainer(parts, tmp_path / "plain", steps=2)
    plain.train()
    ckpt = trainer(parts, tmp_path / "ckpt", steps=2, activation_checkpointing="full")
    layer = ckpt.model.language_model.model.layers[0]
    assert "forward" in vars(layer)  # the layer's forward is wrapped in place, names unchanged
    ckpt.train()
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "ckpt")
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["grad_norm"] == pytest.approx(
            x["grad_norm"], rel=1e-4
        )
    assert ckpt.model.state_dict().keys() == plain.model.state_dict().keys()


def test_cached_features_equal_what_inference_feeds_the_model(parts):
    from worldbagel.inference.pipeline import BagelPipeline

    fresh, encoder, episodes = parts
    pipe = BagelPipeline(
        fresh.model, fresh.vae, fresh.tokenizer, encoder.vae_transform, encoder.vit_transform
    )
    frame = episodes[0].frames[2]
    feats = encoder.features(episodes[0].frames)
    resized = encoder.vae_transform.resize(frame)  # Context.add_image resizes once, then encodes both views
    tokens, grid = pipe.encode_vae(resized)
    patches, vit_grid = pipe.encode_vit(resized)
    assert grid == feats.grid and vit_grid == feats.vit_grid
    assert torch.allclose(feats.latents[2], tokens, atol=1e-5)
    assert torch.equal(feats.vit_patches(2), patches) and feats.vit.dtype == torch.uint8
    assert feats.latent_std is not None and bool((feats.latent_std > 0).all())


def test_finetune_cli_rejects_bad_options_cleanly(capsys):
    from worldbagel.cli import main

    assert main(["finetune", "model=scratch-tiny", "data=x", "out=y", "plan.target_mode=joint"]) == 2
    assert "plan.target_mode='joint'" in capsys.readouterr().out


def test_mse_change_weight_reaches_the_trainers_loss(parts, tmp_path):
    from worldbagel.train.objective import compute_losses

    plain = trainer(parts, tmp_path / "a", steps=1)
    weighted = trainer(parts, tmp_path / "b", steps=1, mse_change_weight=3.0)
    assert weighted.weights.change == 3.0 and plain.weights.change == 0.0
    batch = weighted.data.batch(0)
    assert batch.change is not None and batch.change.shape == (batch.num_mse,) and batch.change.sum() > 0
    model = new_model(parts)
    a = compute_losses(model, batch, torch.Generator().manual_seed(0), weights=plain.weights)
    b = compute_losses(model, batch, torch.Generator().manual_seed(0), weights=weighted.weights)
    assert b["loss_mse"].item() > a["loss_mse"].item()
