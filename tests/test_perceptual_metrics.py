"""Optional perceptual metrics (LPIPS, DreamSim, FVD): clear offline errors, weight loading, Fréchet distance.

The real packages need torchvision and downloaded weights, neither available here: error paths are tested
for real, loading through small stand-in modules, and the happy path only where lpips is importable.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from worldbagel import perceptual_metrics as P
from worldbagel.errors import CheckpointError, ConfigError, DependencyNotInstalled
from worldbagel.eval import metrics as M

RNG = np.random.default_rng(4321)


def noisy(frames: np.ndarray, amount: int) -> np.ndarray:
    noise = RNG.integers(-amount, amount + 1, frames.shape)
    return np.clip(frames.astype(np.int64) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("cls", [M.LPIPSMetric, M.DreamSimMetric, M.FVDMetric])
def test_perceptual_missing_package_is_one_clear_error(cls, monkeypatch):
    if importlib.util.find_spec(cls.module.split(".")[0]) is not None:
        monkeypatch.setitem(sys.modules, cls.module, None)  # make the import fail even where installed
    with pytest.raises(DependencyNotInstalled) as err:
        cls().load()
    msg = str(err.value)
    assert cls.package in msg and "pip install" in msg and "docs/metrics.md" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_dependency_error_names_the_inner_missing_module(monkeypatch):
    fake = types.ModuleType("wb_fake_pkg")

    def boom(name, *a, **k):
        raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")

    monkeypatch.setattr(P.importlib, "import_module", boom)
    with pytest.raises(DependencyNotInstalled, match="'torchvision'.*pip install torchvision"):
        P.import_optional(fake.__name__, "fake-pkg", "a test")


@pytest.mark.parametrize("name", ["lpips", "dreamsim", "fvd"])
def test_perceptual_missing_weights_path(name, tmp_path):
    with pytest.raises(CheckpointError, match="not found at") as err:
        M.load_perceptual(name, weights_path=tmp_path / "nope.pth")
    assert "weights_path" in str(err.value)  # says how to provide them


def _fake_package(monkeypatch, module: str, **attrs) -> None:
    mod = types.ModuleType(module)
    mod.__file__ = "/nonexistent/pkg/__init__.py"
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, module, mod)


def test_lpips_default_weights_missing_points_at_torch_hub(monkeypatch, tmp_path):
    _fake_package(monkeypatch, "lpips", LPIPS=lambda **k: pytest.fail("must not build without weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as err:
        M.LPIPSMetric().load()
    msg = str(err.value)
    assert P.ALEXNET_FILE in msg and str(tmp_path / "hub" / "checkpoints") in msg and "weights_path" in msg


def test_lpips_corrupt_weights_file(monkeypatch, tmp_path):
    _fake_package(
        monkeypatch, "lpips", LPIPS=lambda **k: pytest.fail("must not build with unreadable weights")
    )
    bad = tmp_path / "alexnet.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read weights file"):
        M.LPIPSMetric().load(weights_path=bad)


def test_dreamsim_incomplete_folder_lists_missing_files(monkeypatch, tmp_path):
    _fake_package(
        monkeypatch, "dreamsim", dreamsim=lambda **k: pytest.fail("must not call with missing files")
    )
    (tmp_path / "dino_vitb16_pretrain.pth").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="clip_vitb16_lora") as err:
        M.DreamSimMetric().load(weights_path=tmp_path)
    assert "dino_vitb16_pretrain.pth'" not in str(err.value).split("missing")[1]


def test_fvd_default_weights_missing(monkeypatch):
    _fake_package(monkeypatch, "cdfvd.fvd", cdfvd=lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(CheckpointError, match=P.I3D_FILE):
        M.FVDMetric().load()


def test_package_errors_while_building_become_one_clear_error(monkeypatch, tmp_path):
    i3d = tmp_path / "i3d_pretrained_400.pt"
    i3d.write_bytes(b"corrupt")

    def corrupt(*a, **k):
        raise RuntimeError("PytorchStreamReader failed reading zip archive")

    _fake_package(monkeypatch, "cdfvd.fvd", cdfvd=corrupt)
    with pytest.raises(CheckpointError, match="could not build fvd.*PytorchStreamReader") as err:
        M.FVDMetric().load(weights_path=i3d)
    assert err.value.__cause__ is None and err.value.__suppress_context__

    def lazy_import(*a, **k):
        raise ModuleNotFoundError("No module named 'open_clip'", name="open_clip")

    for f in P.DREAMSIM_FILES:
        (tmp_path / f).mkdir()
    _fake_package(monkeypatch, "dreamsim", dreamsim=lazy_import)
    with pytest.raises(DependencyNotInstalled, match="open_clip"):
        M.DreamSimMetric().load(weights_path=tmp_path)


def test_unloaded_metric_and_unknown_name():
    with pytest.raises(ConfigError, match="load"):
        M.LPIPSMetric()(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="choose one of"):
        M.load_perceptual("fid")


class _FakeLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS (which needs torchvision): same trunk key layout, simple distance."""

    def __init__(self, **kwargs):
        super().__init__()
        assert kwargs["net"] == "alex" and kwargs["version"] == "0.1" and kwargs["pnet_rand"] is True
        self.net = torch.nn.Module()
        self.net.slice1 = torch.nn.Sequential()
        self.net.slice1.add_module("0", torch.nn.Conv2d(3, 2, 1))
        self.net.slice2 = torch.nn.Sequential()
        self.net.slice2.add_module("3", torch.nn.Conv2d(2, 1, 1, bias=False))

    def forward(self, in0, in1, normalize=False):
        assert normalize and in0.dtype == torch.float32 and in0.shape[1] == 3
        f0, f1 = self.net.slice2(self.net.slice1(in0)), self.net.slice2(self.net.slice1(in1))
        return ((f0 - f1) ** 2).mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_loads_alexnet_weights_into_the_trunk_and_scores_frames(monkeypatch, tmp_path):
    _fake_package(monkeypatch, "lpips", LPIPS=_FakeLPIPS)
    state = {
        "features.0.weight": torch.randn(2, 3, 1, 1),
        "features.0.bias": torch.randn(2),
        "features.3.weight": torch.randn(1, 2, 1, 1),
        "classifier.1.weight": torch.randn(4, 4),  # torchvision's head: ignored
    }
    path = tmp_path / P.ALEXNET_FILE
    torch.save(state, path)
    metric = M.LPIPSMetric().load(weights_path=path)
    assert torch.equal(metric.model.net.slice2[0].weight, state["features.3.weight"])
    a = RNG.integers(0, 256, (2, 3, 12, 12, 3), dtype=np.uint8)
    b = noisy(a, 50)
    d = metric(b, a)
    assert d.shape == (2, 3) and np.all(d > 0)
    assert d[1, 2] == pytest.approx(metric(b[1, 2], a[1, 2]), rel=1e-6)
    assert np.all(metric(a, a) == 0)
    # a trunk of another shape is a CheckpointError naming the file
    state["features.0.weight"] = torch.randn(5, 3, 1, 1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        M.LPIPSMetric().load(weights_path=path)
    # loaded per-frame perceptual metrics feed the horizon bookkeeping
    scores = M.HorizonScores()
    values = scores.add_frames(M.SINGLE_STEP, 1, b[0], a[0], names=("l1",), perceptual=[metric])
    assert set(values) == {"l1", "lpips"} and scores.summary()["modes"]["single_step"]["lpips"]["n"][0] == 3


def test_alexnet_key_mapping():
    state = {
        f"features.{i}.{p}": torch.full((2,), float(i)) for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")
    }
    keys = ["slice1.0.weight", "slice2.3.bias", "slice5.10.weight"]
    out = P.alexnet_to_lpips_keys(state, keys)
    assert list(out) == keys and out["slice2.3.bias"][0] == 3.0
    with pytest.raises(CheckpointError, match=r"features\.1\.weight"):
        P.alexnet_to_lpips_keys(state, ["slice1.1.weight"])


def test_read_state_dict_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.ones(2, 2)}, tmp_path / "a.safetensors")
    assert P.read_state_dict(tmp_path / "a.safetensors")["features.0.weight"].sum() == 4


def test_frechet_distance_known_answers():
    mu, cov = np.zeros(3), np.diag([1.0, 2.0, 3.0])
    assert M.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    assert M.frechet_distance(mu, cov, mu + [1, 2, 2], cov) == pytest.approx(9.0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s
    assert M.frechet_distance([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(1.0 + 1.0)
    feats = RNG.normal(size=(500, 4))
    mu1, s1 = M.gaussian_stats(feats)
    assert mu1.shape == (4,) and s1.shape == (4, 4)
    with pytest.raises(ConfigError, match="n >= 2"):
        M.gaussian_stats(feats[:1])


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="lpips not installed")
def test_lpips_happy_path():
    import os

    path = os.environ.get("WORLDBAGEL_ALEXNET_WEIGHTS")
    if not path:
        pytest.skip("set WORLDBAGEL_ALEXNET_WEIGHTS to torchvision's alexnet-owt-7be5be79.pth")
    m = M.LPIPSMetric().load(weights_path=path)
    a = RNG.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    d = m(noisy(a, 60), a)
    assert d.shape == (2,) and np.all(d > 0) and np.all(m(a, a) < 1e-6)
