"""Observation wrappers for image envs (pure numpy / PIL; no torchvision, no OpenCV).

Shape legend:
    H, W, C   image height, width, channels (observations are HWC)
    K         frames kept by FrameHistory
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from worldbagel.errors import bad_argument

RESIZE_METHODS = ("nearest", "area", "bilinear", "bicubic")
_PIL_FILTERS = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
        return int(size), int(size)
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and s > 0 for s in size)
    ):
        return int(size[0]), int(size[1])
    raise bad_argument("size", size, "give a positive int or an (height, width) pair")


def resize_image(image: np.ndarray, size: int | Sequence[int], method: str = "area") -> np.ndarray:
    """Resize an (H, W, C) image to `size` ((h, w) or an int for square), keeping dtype and C.

    `nearest` is exact pixel picking (numpy); `area` (box filter, best for shrinking), `bilinear`
    and `bicubic` use PIL. uint8 stays uint8; float images are resized per channel in float32.
    """
    if method not in RESIZE_METHODS:
        raise bad_argument("method", method, f"choose one of {RESIZE_METHODS}")
    image = np.asarray(image)
    if image.ndim != 3:
        raise bad_argument("image", image.shape, "pass an (H, W, C) image")
    h, w = _size_hw(size)
    if image.shape[:2] == (h, w):
        return image
    if method == "nearest":
        rows = ((np.arange(h) + 0.5) * image.shape[0] / h).astype(np.int64)
        cols = ((np.arange(w) + 0.5) * image.shape[1] / w).astype(np.int64)
        return image[rows[:, None], cols[None, :]]
    flt = _PIL_FILTERS[method]
    if image.dtype == np.uint8 and image.shape[2] in (3, 4):
        return np.asarray(Image.fromarray(image).resize((w, h), flt))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32)).resize((w, h), flt)
        )
        for c in range(image.shape[2])
    ]
    out = np.stack(channels, axis=-1)
    if image.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(image.dtype, copy=False)


def _resized_box(box: spaces.Box, hw: tuple[int, int]) -> spaces.Box:
    if len(box.shape) != 3:
        raise bad_argument("observation_space", box, "ResizeObservation needs (H, W, C) image observations")
    low = float(box.low.min())
    high = float(box.high.max())
    return spaces.Box(low, high, (*hw, box.shape[2]), box.dtype)


class ResizeObservation(gym.ObservationWrapper):
    """Resize image observations (a Box (H, W, C), or every 3-D Box inside a Dict) to `size`."""

    def __init__(self, env: gym.Env, size: int | Sequence[int], method: str = "area"):
        super().__init__(env)
        if method not in RESIZE_METHODS:
            raise bad_argument("method", method, f"choose one of {RESIZE_METHODS}")
        self.hw = _size_hw(size)
        self.method = method
        space = env.observation_space
        if isinstance(space, spaces.Box):
            self.observation_space = _resized_box(space, self.hw)
            self._keys: tuple[str, ...] | None = None
        elif isinstance(space, spaces.Dict):
            self._keys = tuple(
                k for k, s in space.spaces.items() if isinstance(s, spaces.Box) and len(s.shape) == 3
            )
            self.observation_space = spaces.Dict(
                {k: _resized_box(s, self.hw) if k in self._keys else s for k, s in space.spaces.items()}
            )
        else:
            raise bad_argument("env", env, "ResizeObservation needs a Box or Dict observation space")

    def observation(self, observation: Any) -> Any:
        if self._keys is None:
            return resize_image(observation, self.hw, self.method)
        out = dict(observation)
        for k in self._keys:
            out[k] = resize_image(observation[k], self.hw, self.method)
        return out


class FrameHistory(gym.Wrapper):
    """Stack the last `k` observations into (K, ...) (oldest first); reset repeats the first frame."""

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        if not isinstance(k, int) or k < 1:
            raise bad_argument("k", k, "keep at least one frame (an int >= 1)")
        space = env.observation_space
        if not isinstance(space, spaces.Box):
            raise bad_argument("env", env, "FrameHistory needs a Box observation space")
        self.k = k
        self.observation_space = spaces.Box(
            np.repeat(space.low[None], k, axis=0), np.repeat(space.high[None], k, axis=0), dtype=space.dtype
        )
        self._frames = np.zeros(self.observation_space.shape, space.dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._frames[:] = obs
        return self._frames.copy(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = obs
        return self._frames.copy(), reward, terminated, truncated, info


class SelectImage(gym.ObservationWrapper):
    """Keep one entry (default 'rgb') of a Dict observation, e.g. Habitat with depth on."""

    def __init__(self, env: gym.Env, key: str = "rgb"):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or key not in space.spaces:
            raise bad_argument("key", key, f"the env's observation space {space} has no entry with that name")
        self.key = key
        self.observation_space = space.spaces[key]

    def observation(self, observation: dict[str, Any]) -> Any:
        return observation[self.key]
