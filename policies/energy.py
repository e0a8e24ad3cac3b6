"""Planning energies: how far imagined frames are from goal images (lower is better).

Shape legend:
    N   imagined frames scored together            G   goal images (any one of them may be reached)
    H, W  frame height / width                     D   flattened VAE latent features of one frame

A frame distance is called as `distance(frames [N, H, W, 3], goals [G, H', W', 3]) -> [N, G]` (float64).
Goals of another size are resized to the frames' size (SSIM, LPIPS) or pass through the model's VAE
transform like every frame (latent).

- `LatentDistance(pipe)`: mean squared difference of the VAE posterior means (the default: the space
  the world model itself predicts in, cheap, and insensitive to pixel noise the VAE ignores).
- `SSIMDistance()`: 1 - SSIM (torchmetrics-exact SSIM from `worldbagel.frame_metrics`).
- `LPIPSDistance(weights_path)`: LPIPS (AlexNet); needs the `lpips` package and local AlexNet weights
  (raises DependencyNotInstalled / CheckpointError naming what to install otherwise).
- `frame_distance(name, pipe)` builds one by name.

Task scorers add task knowledge to the energy: a scorer is called as
`scorer(frames [T, H, W, 3], actions, info) -> float` on one candidate's imagined frames, its actions and
the real env's latest info. `GridWorldDistanceScorer` decodes each imagined gridworld frame and scores the
maze distance (BFS moves) from the decoded agent cell to the goal; `auto_scorers(env)` lists the scorers
that fit an env (the planner's `scorers=[auto]`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from worldbagel.envs.grid_frames import decode_frame
from worldbagel.envs.gridworld import GridWorldEnv
from worldbagel.envs.maze import bfs_distances, generate_maze, maze_shape
from worldbagel.errors import bad_argument
from worldbagel.frame_metrics import ssim
from worldbagel.perceptual_metrics import LPIPSMetric

__all__ = [
    "FRAME_DISTANCES",
    "SCORERS",
    "GridWorldDistanceScorer",
    "LPIPSDistance",
    "LatentDistance",
    "SSIMDistance",
    "as_frames",
    "auto_scorers",
    "frame_distance",
    "make_scorer",
]

logger = logging.getLogger(__name__)


def as_frames(images: Any, name: str) -> np.ndarray:
    """One [H, W, 3] image or a stack [N, H, W, 3] -> uint8 [N, H, W, 3]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise bad_argument(f"{name}.shape", arr.shape, "give RGB images [H, W, 3] or a stack [N, H, W, 3]")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def _resize_to(images: np.ndarray, height: int, width: int) -> np.ndarray:
    if images.shape[1:3] == (height, width):
        return images
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((width, height), Image.BILINEAR)) for im in images]
    )


class LatentDistance:
    """Mean squared difference of VAE posterior means (after the pipeline's VAE transform)."""

    name = "latent"

    def __init__(self, pipe, batch_size: int = 64):
        if getattr(pipe, "vae", None) is None:
            raise bad_argument("pipe", pipe, "the latent distance needs a pipeline with an autoencoder")
        self.pipe = pipe
        self.batch_size = batch_size
        self._goal_key: str | None = None
        self._goal_latents: torch.Tensor | None = None

    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> latents [N, D] (posterior means)."""
        out = []
        vae = self.pipe.vae
        for s in range(0, len(images), self.batch_size):
            x = torch.stack([self.pipe.vae_transform(im) for im in images[s : s + self.batch_size]])
            with torch.no_grad():
                lat = vae.encode(x.to(vae.device, vae.dtype), sample=False)  # [n, Cz, h, w]
            out.append(lat.float().flatten(1).cpu())
        return torch.cat(out)

    def _goals(self, goals: np.ndarray) -> torch.Tensor:
        key = hashlib.sha1(goals.tobytes() + str(goals.shape).encode()).hexdigest()
        if key != self._goal_key:
            self._goal_latents, self._goal_key = self.encode(goals), key
        return self._goal_latents

    def __call__(self, frames, goals) -> np.ndarray:
        frames, goals = as_frames(frames, "frames"), as_frames(goals, "goals")
        f, g = self.encode(frames), self._goals(goals)
        if f.shape[1] != g.shape[1]:
            raise bad_argument(
                "goals.shape",
                goals.shape,
                f"goal latents ({g.shape[1]} features) differ from the frames' ({f.shape[1]}); give goal "
                "images with the frames' aspect ratio",
            )
        return (torch.cdist(f.double(), g.double()) ** 2 / f.shape[1]).numpy()


class SSIMDistance:
    """1 - SSIM between each frame and each goal."""

    name = "ssim"

    def __call__(self, frames, goals) -> np.ndarray:
        frames, goals = as_frames(frames, "frames"), as_frames(goals, "goals")
        goals = _resize_to(goals, *frames.shape[1:3])
        n, g = len(frames), len(goals)
        pred = np.repeat(frames, g, axis=0)
        target = np.tile(goals, (n, 1, 1, 1))
        return 1.0 - np.asarray(ssim(pred, target), dtype=np.float64).reshape(n, g)


class LPIPSDistance:
    """LPIPS (AlexNet) between each frame and each goal; needs the lpips package and local weights."""

    name = "lpips"

    def __init__(self, weights_path=None, device: str = "cpu"):
        self.metric = LPIPSMetric().load(weights_path=weights_path, device=device)

    def __call__(self, frames, goals) -> np.ndarray:
        frames, goals = as_frames(frames, "frames"), as_frames(goals, "goals")
        goals = _resize_to(goals, *frames.shape[1:3])
        n, g = len(frames), len(goals)
        d = self.metric(np.repeat(frames, g, axis=0), np.tile(goals, (n, 1, 1, 1)))
        return np.asarray(d, dtype=np.float64).reshape(n, g)


FRAME_DISTANCES = ("latent", "ssim", "lpips")


def frame_distance(name: str, pipe=None, **kwargs):
    """A frame distance by name: 'latent' (needs `pipe`), 'ssim' or 'lpips' (kwargs: weights_path, device)."""
    if name == "latent":
        if pipe is None:
            raise bad_argument("pipe", None, "the latent distance needs the world model's pipeline")
        return LatentDistance(pipe, **kwargs)
    if name == "ssim":
        return SSIMDistance()
    if name == "lpips":
        return LPIPSDistance(**kwargs)
    raise bad_argument(
        "energy", name, f"use one of {FRAME_DISTANCES} (or a callable frames, goals -> [N, G])"
    )


class GridWorldDistanceScorer:
    """Maze distance from the agent decoded in imagined top-down gridworld frames to the goal.

    Energy of a candidate: min over its frames t of `distance(agent_t) + step_cost * t` (t from 0), so a
    plan that reaches the goal sooner wins; a frame whose agent cannot be decoded scores
    `undecodable` (default: the number of cells, worse than any real distance); only the agent has to be
    decodable (an imagined frame may draw the agent over the goal without its ring). The maze is rebuilt from
    the info's `layout_seed` and `goal` (GridWorld puts both in every info), so the scorer needs no access
    to the env. Frames must be the env's top-down view (`decode_frame` reads allocentric frames only).
    """

    def __init__(
        self, size: int | Sequence[int] = 8, step_cost: float = 0.01, undecodable: float | None = None
    ):
        self.size = maze_shape(size)
        self.step_cost = float(step_cost)
        self.undecodable = float(undecodable if undecodable is not None else self.size[0] * self.size[1])
        self._key: tuple | None = None
        self._dist: np.ndarray | None = None

    @classmethod
    def from_env(cls, env: Any, **kwargs: Any) -> GridWorldDistanceScorer:
        """A scorer for a GridWorld env (or a vector env of them): takes the maze size from the env."""
        size = _env_attr(env, "size")
        if size is None:
            raise bad_argument("env", env, "GridWorldDistanceScorer needs a WorldBagel GridWorld env")
        if _env_attr(env, "view") not in (None, "topdown"):
            raise bad_argument("env.view", _env_attr(env, "view"), "the scorer decodes top-down frames only")
        return cls(size=size, **kwargs)

    def distances(self, info: Mapping[str, Any]) -> np.ndarray:
        """BFS distances to the goal [R, C] of the maze named by info's layout_seed and goal."""
        if "layout_seed" not in info or "goal" not in info:
            raise bad_argument(
                "info", sorted(info), "the gridworld scorer needs 'layout_seed' and 'goal' in info"
            )
        key = (int(info["layout_seed"]), tuple(int(v) for v in info["goal"]))
        if key != self._key:
            walls = generate_maze(self.size, np.random.default_rng(key[0]))
            self._dist, self._key = bfs_distances(walls, key[1]), key
        return self._dist

    def __call__(self, frames, actions: Sequence[Any], info: Mapping[str, Any]) -> float:
        dist = self.distances(info)
        best = float("inf")
        for t, frame in enumerate(as_frames(frames, "frames")):
            state = decode_frame(frame, self.size, require_goal=False)  # the goal's cell comes from info
            d = self.undecodable
            if state is not None and dist[state["agent"]] >= 0:
                d = float(dist[state["agent"]])
            best = min(best, d + self.step_cost * t)
        return best


def _env_attr(env: Any, name: str) -> Any:
    for getter in (
        lambda: getattr(env.unwrapped, name),
        lambda: env.get_attr(name)[0],  # vector envs
        lambda: getattr(env, name),
    ):
        try:
            return getter()
        except Exception:  # each lookup style may not apply to this env type
            continue
    return None


SCORERS: dict[str, Any] = {"gridworld_distance": GridWorldDistanceScorer}
"""Task scorers by name (each class has `from_env(env, **kwargs)`)."""


def auto_scorers(env: Any) -> list:
    """The task scorers known to fit `env`: GridWorldDistanceScorer for top-down GridWorld, else none."""
    single = env
    if getattr(env, "envs", None):
        single = env.envs[0]
    u = getattr(single, "unwrapped", single)
    if isinstance(u, GridWorldEnv) and u.view == "topdown":
        return [GridWorldDistanceScorer.from_env(u)]
    return []


def make_scorer(name: str, env: Any = None, **kwargs: Any):
    """A task scorer by name, sized for `env` when given."""
    if name not in SCORERS:
        raise bad_argument("scorers", name, f"use one of {sorted(SCORERS)} or a callable")
    cls = SCORERS[name]
    return cls.from_env(env, **kwargs) if env is not None else cls(**kwargs)
