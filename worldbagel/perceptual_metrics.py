"""Learned perceptual metrics through optional PyPI packages: LPIPS, DreamSim and FVD (I3D).

Shape legend:
    ...    leading batch dims; N all of them flattened
    H, W   frame height / width;  frames are channel-last (..., H, W, 3), uint8 or float in [0, 1]
    B, T   videos / frames per video, for FVD: (B, T, H, W, 3)
    D      feature width (FVD: I3D logits, D = 400)

None of these ever downloads anything. Each metric needs its package (`pip install "worldbagel[metrics]"`
plus torchvision, which LPIPS and DreamSim import) and its weights on local disk:

    metric    package   weights (`load(weights_path=...)`)
    lpips     lpips     torchvision AlexNet ImageNet file `alexnet-owt-7be5be79.pth` (or a .safetensors of
                        it); default: the torch hub cache, `$TORCH_HOME/hub/checkpoints/`. The LPIPS v0.1
                        linear heads ship inside the lpips package.
    dreamsim  dreamsim  the folder DreamSim unpacks its release into (`dino_vitb16_pretrain.pth`,
                        `clip_vitb16_pretrain.pth.tar`, `open_clip_vitb16_pretrain.pth.tar` and the three
                        `*_lora` folders); default: `./models`, the package's own default.
    fvd       cd-fvd    `i3d_pretrained_400.pt` (the TATS/StyleGAN-V I3D); default: next to the cd-fvd
                        package's i3d code, where cd-fvd itself would save it.

A missing package raises DependencyNotInstalled and missing weights raise CheckpointError; both say what
to install or where to put which file. These weight files are PyTorch pickles published by the metrics'
authors: load only copies obtained from them (trusted files); `.safetensors` works for LPIPS' AlexNet.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import pickle
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from worldbagel.errors import CheckpointError, DependencyNotInstalled, bad_argument
from worldbagel.frame_metrics import as_unit_frames

logger = logging.getLogger(__name__)

_CHUNK = 16  # frames per forward pass


def import_optional(module: str, package: str, purpose: str):
    """Import an optional dependency or raise DependencyNotInstalled naming what to pip install.

    An ImportError raised *inside* the package (e.g. lpips importing a missing torchvision) is reported
    with the name of the module that is really missing.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        inner = (
            "" if missing == module else f" (it imports '{missing}', which is missing: pip install {missing})"
        )
        raise DependencyNotInstalled(
            f"{purpose} needs the '{package}' package{inner}; install it with "
            f'`pip install {package}` or `pip install "worldbagel[metrics]"` (see docs/metrics.md)'
        ) from None


def _existing(path: str | os.PathLike, what: str, how: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{what} not found at '{p}': {how}")
    return p


class PerceptualMetric(ABC):
    """A learned metric whose network comes from an optional package and local weights.

    Use: `m = LPIPSMetric().load(weights_path=...)`, then `m(pred, target)` -> per-frame distances
    (FVD: `m(pred_videos, real_videos)` -> one float for the two sets).
    """

    name: str = ""  #: key used in metrics.json
    package: str = ""  #: PyPI package name
    module: str = ""  #: import name
    higher_is_better: bool = False
    per_frame: bool = True  #: False for set-level metrics (FVD)
    weights_help: str = ""  #: what the weights are and where to get them

    def __init__(self) -> None:
        self.model = None
        self.device = torch.device("cpu")

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self, weights_path: str | os.PathLike | None = None, device: str = "cpu") -> PerceptualMetric:
        """Import the package and build the network from local weights; returns self.

        Raises:
            CheckpointError: `weights_path` (or the default location when None) holds no weights.
            DependencyNotInstalled: the package (or something it imports) is missing.
        """
        if weights_path is not None:
            _existing(weights_path, f"{self.name} weights", self.weights_help)
        pkg = import_optional(self.module, self.package, f"the {self.name} metric")
        self.device = torch.device(device)
        try:
            self.model = self._build(pkg, None if weights_path is None else Path(weights_path).expanduser())
        except (CheckpointError, DependencyNotInstalled):
            raise
        except ImportError as exc:  # a lazy import inside the package
            raise DependencyNotInstalled(
                f"the {self.name} metric needs '{getattr(exc, 'name', None) or exc}': pip install it (see docs/metrics.md)"
            ) from None
        except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise CheckpointError(
                f"could not build {self.name} from its weights ({type(exc).__name__}: {exc}); {self.weights_help}"
            ) from None
        return self

    @abstractmethod
    def _build(self, pkg, weights_path: Path | None):
        """Construct the network (weights_path None: look in the default location)."""

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise bad_argument(f"{type(self).__name__}.model", None, "call .load(weights_path=...) first")

    def __call__(self, pred, target) -> float | np.ndarray:
        """Per-frame distance between (..., H, W, 3) frames (float for a single frame)."""
        self._require_loaded()
        p = as_unit_frames(pred, "pred")
        t = as_unit_frames(target, "target")
        if p.shape != t.shape or p.shape[-1] != 3:
            raise bad_argument("pred.shape", tuple(p.shape), f"must equal target.shape {tuple(t.shape)}, RGB")
        lead = p.shape[:-3]
        p = p.reshape(-1, *p.shape[-3:]).permute(0, 3, 1, 2).float()  # (N, 3, H, W) in [0, 1]
        t = t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2).float()
        out = []
        with torch.no_grad():
            for s in range(0, p.shape[0], _CHUNK):
                d = self._distance(p[s : s + _CHUNK].to(self.device), t[s : s + _CHUNK].to(self.device))
                out.append(d.reshape(-1).double().cpu())
        arr = torch.cat(out).reshape(tuple(lead)).numpy()
        return float(arr) if arr.ndim == 0 else arr

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(n,) distances of (n, 3, H, W) frames in [0, 1]."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- LPIPS
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a PyTorch state-dict file read with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: one clear message instead of a deep traceback
        raise CheckpointError(f"could not read weights file '{path}': {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' is not a state dict of tensors (got {type(state).__name__})")
    return state


def alexnet_to_lpips_keys(alexnet_state: dict[str, torch.Tensor], lpips_keys) -> dict[str, torch.Tensor]:
    """Map torchvision AlexNet keys (`features.{i}.weight`) onto LPIPS' trunk keys (`slice{k}.{i}.weight`).

    LPIPS splits `alexnet().features` into slices but keeps each layer's index, so the layer index
    identifies the source tensor. Raises CheckpointError when a trunk tensor is missing or mis-shaped.
    """
    mapped = {}
    missing = []
    for key in lpips_keys:
        _, index, param = key.split(".", 2)
        src = f"features.{index}.{param}"
        if src not in alexnet_state:
            missing.append(src)
            continue
        mapped[key] = alexnet_state[src]
    if missing:
        raise CheckpointError(
            f"the AlexNet weights lack {missing[:4]}{'...' if len(missing) > 4 else ''}: pass torchvision's "
            f"ImageNet AlexNet state dict ({ALEXNET_FILE})"
        )
    return mapped


class LPIPSMetric(PerceptualMetric):
    """LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018); lower is more similar."""

    name = "lpips"
    package = "lpips"
    module = "lpips"
    weights_help = (
        f"download torchvision's ImageNet AlexNet weights ({ALEXNET_FILE}) on a machine with internet "
        f"(torchvision.models.alexnet(weights='IMAGENET1K_V1') saves it under $TORCH_HOME/hub/checkpoints) "
        f"and pass that file as weights_path, or copy it into {_torch_hub_checkpoints()}"
    )

    def _build(self, pkg, weights_path: Path | None):
        if weights_path is None:
            weights_path = _existing(
                _torch_hub_checkpoints() / ALEXNET_FILE, "AlexNet weights", self.weights_help
            )
        state = read_state_dict(weights_path)
        # pnet_rand=True: build the trunk without torchvision downloading it; we load it below.
        model = pkg.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        trunk_keys = list(model.net.state_dict().keys())
        mapped = alexnet_to_lpips_keys(state, trunk_keys)
        try:
            model.net.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"AlexNet weights in '{weights_path}' do not fit LPIPS' trunk: {exc}"
            ) from None
        return model.eval().to(self.device)

    def _distance(self, pred, target):
        return self.model(pred, target, normalize=True)  # normalize: [0, 1] -> [-1, 1]


# ------------------------------------------------------------------------------------------- DreamSim
DREAMSIM_FILES = (
    "dino_vitb16_pretrain.pth",
    "clip_vitb16_pretrain.pth.tar",
    "open_clip_vitb16_pretrain.pth.tar",
    "dino_vitb16_lora",
    "clip_vitb16_lora",
    "open_clip_vitb16_lora",
)


class DreamSimMetric(PerceptualMetric):
    """DreamSim (Fu et al. 2023), ensemble model, 224x224 inputs; lower is more similar."""

    name = "dreamsim"
    package = "dreamsim"
    module = "dreamsim"
    weights_help = (
        "run `from dreamsim import dreamsim; dreamsim(pretrained=True, cache_dir='models')` once on a machine "
        f"with internet and copy the resulting folder (it holds {', '.join(DREAMSIM_FILES)}); pass it as "
        "weights_path"
    )
    image_size = 224

    def _build(self, pkg, weights_path: Path | None):
        folder = weights_path if weights_path is not None else Path("models")
        missing = [f for f in DREAMSIM_FILES if not (folder / f).exists()]
        if missing:
            raise CheckpointError(
                f"DreamSim weights incomplete in '{folder}' (missing {missing}): {self.weights_help}"
            )
        kwargs = {"pretrained": True, "device": str(self.device), "cache_dir": str(folder)}
        if "dreamsim_type" in inspect.signature(pkg.dreamsim).parameters:
            kwargs["dreamsim_type"] = "ensemble"
        model, _preprocess = pkg.dreamsim(**kwargs)
        return model

    def _distance(self, pred, target):
        size = (self.image_size, self.image_size)
        # DreamSim's own preprocessing is a PIL bicubic resize; antialiased bicubic matches it closely.
        pred = F.interpolate(pred, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        target = F.interpolate(target, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(
            0, 1
        )
        return self.model(pred, target)


# ------------------------------------------------------------------------------------------------ FVD
I3D_FILE = "i3d_pretrained_400.pt"


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (n, D) features (n >= 2)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise bad_argument("features.shape", f.shape, "pass (n, D) features with n >= 2 samples")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

    Pure numpy (symmetric eigendecompositions), the quantity FID and FVD report.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise bad_argument(
            "sigma1.shape", s1.shape, f"means {mu1.shape}/{mu2.shape} and (D, D) covariances must agree"
        )
    r1 = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)


class FVDMetric(PerceptualMetric):
    """Fréchet Video Distance over I3D logits (Unterthiner et al. 2018) via the cd-fvd package.

    Set-level: `m(pred_videos, real_videos)` with (B, T, H, W, 3) uint8 (or float in [0, 1]) videos,
    B >= 2 each, returns one float (lower is better).
    """

    name = "fvd"
    package = "cd-fvd"
    module = "cdfvd.fvd"
    per_frame = False
    weights_help = (
        f"get {I3D_FILE} (the I3D used by TATS / StyleGAN-V FVD, which cd-fvd downloads on first use) on a "
        "machine with internet and pass the file as weights_path"
    )

    def _build(self, pkg, weights_path: Path | None):
        if weights_path is None:
            default = Path(pkg.__file__).parent / "third_party" / "i3d" / I3D_FILE
            weights_path = _existing(default, "I3D weights", self.weights_help)
        return pkg.cdfvd(
            "i3d", ckpt_path=str(weights_path), device=str(self.device), n_real="full", n_fake="full"
        )

    def __call__(self, pred, target) -> float:
        self._require_loaded()
        videos = []
        for name, v in (("pred", pred), ("target", target)):
            u = as_unit_frames(v, name)
            if u.ndim != 5 or u.shape[0] < 2 or u.shape[-1] != 3:
                raise bad_argument(f"{name}.shape", tuple(u.shape), "pass (B, T, H, W, 3) videos with B >= 2")
            videos.append((u * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        self.model.empty_real_stats()
        self.model.empty_fake_stats()
        return float(self.model.compute_fvd(videos[1], videos[0]))


PERCEPTUAL_METRICS: dict[str, type[PerceptualMetric]] = {
    "lpips": LPIPSMetric,
    "dreamsim": DreamSimMetric,
    "fvd": FVDMetric,
}


def load_perceptual(
    name: str, weights_path: str | os.PathLike | None = None, device: str = "cpu"
) -> PerceptualMetric:
    """Build and load a perceptual metric by name ('lpips', 'dreamsim' or 'fvd')."""
    if name not in PERCEPTUAL_METRICS:
        raise bad_argument("name", name, f"choose one of {tuple(PERCEPTUAL_METRICS)}")
    return PERCEPTUAL_METRICS[name]().load(weights_path=weights_path, device=device)
