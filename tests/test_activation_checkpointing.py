"""Activation checkpointing per decoder / ViT layer: off, full, selective (op-level) and the auto size rule."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from worldbagel.data.sequence_plan import PackingConfig, PlanConfig
from worldbagel.errors import ConfigError
from worldbagel.model import parallelize as par
from worldbagel.train.objective import compute_losses
from worldbagel.train.options import AUTO_CHECKPOINT_PARAMS, TrainConfig, checkpointing_mode

MATMULS = ("mm", "addmm", "bmm", "baddbmm")
ELEMENTWISE = ("rsqrt", "silu", "_softmax")  # RMS norms, the MLP activation, attention probabilities


@pytest.fixture(scope="module")
def tiny():
    """The scratch-tiny preset (LLM 128 x 2 layers, ViT 64 x 2) and one pack of ~2 toy samples."""
    from toy_training import toy_training_data

    from worldbagel.train.presets import build_preset

    fresh = build_preset("scratch-tiny", seed=0)
    torch.nn.init.normal_(fresh.model.llm2vae.weight, std=0.02)  # so the MSE reaches every layer
    data = toy_training_data(fresh, PlanConfig(context_frames=2), PackingConfig(256, 512, 256))
    return fresh.model.train(), data


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run (by packet name)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def backward_with(model, data, mode: str) -> tuple[dict[str, torch.Tensor], Counter]:
    """Gradients of one training loss, and the ops the backward pass ran, with checkpointing `mode`."""
    model = copy.deepcopy(model)
    wrapped = par.apply_activation_checkpointing(model, mode)
    assert wrapped == (0 if mode == "off" else len(par.decoder_layers(model)))
    out = compute_losses(model, data.batch(0), data.noise_generator(0))
    with OpCounter() as counter:
        out["loss"].backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, counter.ops


def test_every_mode_gives_the_gradients_of_the_plain_run(tiny):
    model, data = tiny
    plain, ops_off = backward_with(model, data, "off")
    assert len(plain) > 50
    counts = {}
    for mode in ("full", "selective"):
        grads, counts[mode] = backward_with(model, data, mode)
        assert grads.keys() == plain.keys()
        for name, g in plain.items():
            assert torch.equal(grads[name], g), (mode, name)  # the same ops on the same values: bit-identical
    full, selective = counts["full"], counts["selective"]
    # full re-runs each layer's forward in backward: its matmuls and its element-wise ops
    assert sum(full[op] for op in MATMULS) > sum(ops_off[op] for op in MATMULS)
    # selective kept the matmul / attention outputs: no matmul runs again, the cheap element-wise ops do
    assert all(selective[op] == ops_off[op] for op in MATMULS)
    assert all(selective[op] > ops_off[op] for op in ELEMENTWISE)
    assert all(selective[op] == full[op] for op in ELEMENTWISE)


def test_wrapping_is_in_place_and_can_be_replaced_or_undone(tiny):
    model = copy.deepcopy(tiny[0])
    names = [n for n, _ in model.named_parameters()]
    layer = model.language_model.model.layers[0]
    par.apply_activation_checkpointing(model, "full")
    assert "forward" in vars(layer) and [n for n, _ in model.named_parameters()] == names
    par.apply_activation_checkpointing(model, "selective")  # replaces the wrapping, does not stack it
    assert vars(layer)["_plain_forward"].__self__ is layer
    par.apply_activation_checkpointing(model, "off")
    assert "forward" not in vars(layer) and "_plain_forward" not in vars(layer)
    with pytest.raises(ValueError, match="partial"):
        par.apply_activation_checkpointing(model, "partial")


def test_auto_turns_full_checkpointing_on_at_the_release_size():
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig

    with torch.device("meta"):  # the release's shapes (BagelConfig defaults), no memory
        release = sum(p.numel() for p in Bagel(BagelConfig()).parameters())
    assert release > 14e9
    assert checkpointing_mode("auto", release) == "full"
    assert checkpointing_mode("auto", AUTO_CHECKPOINT_PARAMS - 1) == "off"
    assert checkpointing_mode("selective", 10) == "selective" and checkpointing_mode("off", release) == "off"
    assert TrainConfig().activation_checkpointing == "auto"
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing=True)


def test_the_trainer_applies_the_resolved_mode(tiny, tmp_path):
    from worldbagel.train.loop import Trainer

    model, data = tiny
    small = Trainer(copy.deepcopy(model), data, TrainConfig(ema_decay=0.0), tmp_path / "a")
    assert small.checkpointing == "off" and "forward" not in vars(small.model.language_model.model.layers[0])
    sel = Trainer(
        copy.deepcopy(model),
        data,
        TrainConfig(ema_decay=0.0, activation_checkpointing="selective"),
        tmp_path / "b",
    )
    assert sel.checkpointing == "selective" and "forward" in vars(sel.model.language_model.model.layers[0])
