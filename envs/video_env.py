"""VideoEnv: a recorded video played back as an environment (video continuation and evaluation).

Shape legend: T frames; observations are (H, W, 3) uint8 (or (S, S, 3) with obs_size=S).

Sources: a video file (mp4, gif, webm, avi, mov, mkv; read with imageio, ffmpeg from imageio-ffmpeg),
a folder of frame images (png, jpg, jpeg, bmp, webp; sorted by the numbers in their names, so
0.jpg, 1.jpg, ..., 10.jpg play in order, as in NWM/GNM trajectory folders), or an in-memory array.

Actions: by default Discrete(1) with the single action "no-op". With a recorded action track
(`actions`: ints with `action_names`, or texts) the action space covers the track's vocabulary; the
track's action at step t is what led from frame t to frame t+1. The frames play back whatever the
agent sends; info tells what was recorded: `recorded_action`, `action_text` (its text) and
`action_matches` (whether the agent's action equals it).

Episodes start at frame 0 (or `options={"start": k}`); without `loop` they truncate on reaching the
last frame; with `loop` playback wraps to frame 0 (`max_steps` then bounds an episode, if given).
`info`: frame_index, recorded_action, action_text, action_matches, steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldbagel.errors import InvalidAction, WorldBagelError, bad_argument
from worldbagel.media import read_clip, to_rgb8

from .wrappers import resize_image

NO_OP = "no-op"


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    """An in-memory frame of any dtype / channel count as uint8 RGB (worldbagel.media's conversion)."""
    try:
        return to_rgb8(frame)
    except ValueError as exc:
        raise bad_argument("frames", np.shape(frame), f"{exc}") from None


def load_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video file, an image or a folder of frame images as (H, W, 3) uint8 arrays."""
    return list(read_clip(path, "path"))


class VideoEnv(gym.Env[np.ndarray, np.int64]):
    """Plays recorded frames as observations (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        path: str | Path | None = None,
        frames: np.ndarray | Sequence[np.ndarray] | None = None,
        actions: Sequence[int] | Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
        loop: bool = False,
        obs_size: int | None = None,
        max_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if (path is None) == (frames is None):
            raise bad_argument(
                "path", path, "give exactly one of `path` (video file or frame folder) or `frames` (an array)"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise bad_argument("render_mode", render_mode, "use 'rgb_array' or None")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise bad_argument("max_steps", max_steps, "use an int >= 1, or None")
        raw = load_frames(path) if path is not None else [_as_rgb(f) for f in frames]
        if len(raw) < 2:
            raise bad_argument(
                "path" if path is not None else "frames", len(raw), "a video needs at least 2 frames"
            )
        if obs_size is not None:
            if not isinstance(obs_size, int) or obs_size < 1:
                raise bad_argument("obs_size", obs_size, "use a positive int, or None for the native size")
            raw = [resize_image(f, obs_size, "area") for f in raw]
        shapes = {f.shape for f in raw}
        if len(shapes) != 1:
            raise bad_argument(
                "frames", sorted(shapes), "all frames must share one size; pass obs_size to resize"
            )
        self.frames = np.stack(raw)  # (T, H, W, 3)
        self.frames.setflags(write=False)
        self.path = None if path is None else str(path)
        self.loop = bool(loop)
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.action_names, self.track = self._action_track(actions, action_names, len(self.frames))
        self.action_space = spaces.Discrete(len(self.action_names))
        self.observation_space = spaces.Box(0, 255, self.frames.shape[1:], np.uint8)
        self.index = 0
        self.steps = 0
        self._started = False

    @staticmethod
    def _action_track(
        actions: Sequence[int] | Sequence[str] | None, names: Sequence[str] | None, n_frames: int
    ) -> tuple[tuple[str, ...], list[int] | None]:
        if actions is None:
            if names is not None:
                raise bad_argument(
                    "action_names", names, "names need a recorded `actions` track to go with them"
                )
            return (NO_OP,), None
        actions = list(actions)
        if len(actions) not in (n_frames - 1, n_frames):
            raise bad_argument(
                "actions",
                f"<{len(actions)} actions>",
                f"give one action per transition ({n_frames - 1}) or per frame ({n_frames}) for {n_frames} frames",
            )
        if all(isinstance(a, str) for a in actions):
            vocab = tuple(names) if names is not None else tuple(dict.fromkeys(actions))
            index = {n: i for i, n in enumerate(vocab)}
            missing = [a for a in actions if a not in index]
            if missing:
                raise bad_argument("actions", missing[:5], f"texts not in action_names {list(vocab)}")
            return vocab, [index[a] for a in actions]
        if all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in actions):
            top = max(int(a) for a in actions)
            vocab = tuple(names) if names is not None else tuple(f"action {i}" for i in range(top + 1))
            bad = [int(a) for a in actions if not 0 <= int(a) < len(vocab)]
            if bad:
                raise bad_argument(
                    "actions", bad[:5], f"action ids must lie in 0..{len(vocab) - 1} (action_names)"
                )
            return vocab, [int(a) for a in actions]
        raise bad_argument(
            "actions", actions[:5], "give a list of ints (with action_names) or a list of texts"
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        start = options.pop("start", 0)
        if options:
            raise bad_argument("options", options, "VideoEnv takes only options={'start': frame_index}")
        last = len(self.frames) - (1 if self.loop else 2)
        if not isinstance(start, (int, np.integer)) or not 0 <= int(start) <= last:
            raise bad_argument("options['start']", start, f"use a frame index in 0..{last}")
        self.index, self.steps, self._started = int(start), 0, True
        return self.frames[self.index].copy(), self._info(None, None)

    def step(self, action):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise InvalidAction(
                f"invalid action={action!r}: this video takes an int in 0..{self.action_space.n - 1} "
                f"({', '.join(f'{i} {n!r}' for i, n in enumerate(self.action_names))})"
            )
        if not self.loop and self.index == len(self.frames) - 1:
            raise WorldBagelError("the video has ended (the last step was truncated): call reset() first")
        recorded = None
        if self.track is not None and self.index < len(self.track):
            recorded = self.track[self.index]
        self.index = (self.index + 1) % len(self.frames)  # wraps only with loop=True
        self.steps += 1
        truncated = (not self.loop and self.index == len(self.frames) - 1) or (
            self.max_steps is not None and self.steps >= self.max_steps
        )
        return self.frames[self.index].copy(), 0.0, False, bool(truncated), self._info(int(action), recorded)

    def render(self) -> np.ndarray | None:
        """The current frame (render_mode='rgb_array'); None when render_mode is None."""
        if self.render_mode is None or not self._started:
            return None
        return self.frames[self.index].copy()

    def _info(self, action: int | None, recorded: int | None) -> dict[str, Any]:
        if action is None:
            text = ""
        elif self.track is None:
            text = NO_OP
        else:
            text = self.action_names[recorded] if recorded is not None else ""
        return {
            "frame_index": self.index,
            "recorded_action": -1 if recorded is None else recorded,
            "action_text": text,
            "action_matches": bool(recorded is None or action == recorded),
            "steps": self.steps,
        }
