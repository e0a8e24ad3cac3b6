"""ImaginedEnv: a Gymnasium env whose dynamics are a WorldModel (DIAMOND-style "training in imagination").

    env = ImaginedEnv(world_model=wm, real_env=gym.make("WorldBagel/GridWorld-v0"))
    obs, info = env.reset(seed=0)            # the first frame comes from the real env (or `initial_frames`)
    obs, reward, terminated, truncated, info = env.step(1)   # world_model.act(1) + one predicted frame

Registered as `WorldBagel/Imagined-v0`; `gymnasium.make("WorldBagel/Imagined-v0")` loads the gridworld
model shipped in the package and starts episodes from `WorldBagel/GridWorld-v0` frames. RL code can swap
it for the real env: same observation and action spaces, same Gymnasium 1.x contract.

Shape legend: observations are uint8 [H, W, 3] with (H, W) the model's frame size for the real env's frames
(`pipe.vae_transform.target_size`); first frames of another size are resized to it.

- reset(seed, options): the first observation is `options["obs"]` when given, else the real env's
  `reset(seed=seed, options=<the other options>)` observation, else one of `initial_frames` drawn with
  the env's seeded generator. The torch generator that draws the flow noise is reseeded from the env's
  `np_random`, so the same seed and the same actions give identical frames.
- step(action): the action must be in `action_space` (the real env's, else Discrete(|codec vocabulary|)).
  Reward and termination come from `reward_fn(frame, info) -> (reward, terminated)` (it may add keys to
  info); default: `GridWorldImaginedReward` for a top-down GridWorld source (the agent and goal decoded
  from the imagined frame), else 0.0 / False. Truncated after `max_steps` steps.
- info: `steps`, `action_text`, `outcome_text` (what the model said before drawing the frame, with
  `WorldModelConfig.outcome_text`) and what the reward function adds (reset also passes the real env's info).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from PIL import Image

import worldbagel.envs  # noqa: F401 - registers the WorldBagel ids
from worldbagel.actions import ActionCodec, codec_for_env
from worldbagel.envs.grid_frames import decode_frame
from worldbagel.envs.gridworld import GridWorldEnv
from worldbagel.errors import InvalidAction, bad_argument
from worldbagel.world_model import WorldModel
from worldbagel.world_model_loader import load_world_model

__all__ = ["IMAGINED_ENV_ID", "GridWorldImaginedReward", "ImaginedEnv"]

logger = logging.getLogger(__name__)

IMAGINED_ENV_ID = "WorldBagel/Imagined-v0"

RewardFn = Callable[[np.ndarray, dict], tuple[float, bool]]


class GridWorldImaginedReward:
    """GridWorld's reward read off an imagined top-down frame: `goal_reward` and termination when the decoded
    agent stands on the decoded goal, else `-step_penalty`. Adds `decoded` (the state, or None when the frame
    does not decode) and `success` to info."""

    def __init__(self, size: Any = 8, goal_reward: float = 1.0, step_penalty: float = 0.01):
        self.size = size
        self.goal_reward = float(goal_reward)
        self.step_penalty = float(step_penalty)

    @classmethod
    def from_env(cls, env: gym.Env) -> GridWorldImaginedReward | None:
        """The reward of a top-down GridWorld env (same size and reward constants); None for other envs."""
        u = env.unwrapped
        if not isinstance(u, GridWorldEnv) or u.view != "topdown":
            return None
        return cls(u.size, u.goal_reward, u.step_penalty)

    def __call__(self, frame: np.ndarray, info: dict) -> tuple[float, bool]:
        state = decode_frame(frame, self.size)
        success = state is not None and tuple(state["agent"]) == tuple(state["goal"])
        info["decoded"] = state
        info["success"] = bool(success)
        return (self.goal_reward, True) if success else (-self.step_penalty, False)


class ImaginedEnv(gym.Env):
    """A Gymnasium env stepping a WorldModel (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        world_model: WorldModel | None = None,
        real_env: gym.Env | str | None = "WorldBagel/GridWorld-v0",
        real_env_kwargs: Mapping[str, Any] | None = None,
        initial_frames: Any = None,
        model: Any = None,
        sampler: Any = None,
        world: Mapping[str, Any] | None = None,
        codec: ActionCodec | None = None,
        reward_fn: RewardFn | str | None = "auto",
        instruction: str | None = None,
        max_steps: int = 64,
        render_mode: str | None = "rgb_array",
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise bad_argument("render_mode", render_mode, "use 'rgb_array' or None")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise bad_argument("max_steps", max_steps, "use an int >= 1")
        self.render_mode = render_mode
        self.max_steps = max_steps
        self.instruction = instruction
        self.real_env = self._make_real(real_env, real_env_kwargs)
        self.initial_frames = None if initial_frames is None else _frames(initial_frames)
        if self.real_env is None and self.initial_frames is None:
            raise bad_argument(
                "real_env", None, "give a real env (or its id) or initial_frames to start episodes from"
            )
        if codec is None:
            codec = world_model.codec if world_model is not None and world_model.codec is not None else None
        if codec is None and self.real_env is not None:
            codec = codec_for_env(self.real_env)
        if codec is None:
            raise bad_argument("codec", None, "give the action codec (no real env to take it from)")
        self.codec = codec
        if world_model is None:
            world_model = load_world_model(model, sampler, codec, world)
        elif world_model.codec is None:
            world_model.codec = codec
        self.world_model = world_model

        if self.real_env is not None:
            self.action_space = copy.deepcopy(self.real_env.action_space)
            shape = self.real_env.observation_space.shape
        else:
            if not codec.vocabulary:
                raise bad_argument("codec", codec, "without a real env the codec must list its actions")
            self.action_space = spaces.Discrete(len(codec.vocabulary))
            shape = self.initial_frames.shape[1:]
        if shape is None or len(shape) != 3 or shape[-1] != 3:
            raise bad_argument(
                "real_env.observation_space", shape, "the real env must observe RGB frames [H, W, 3]"
            )
        h, w = world_model.pipe.vae_transform.target_size(int(shape[0]), int(shape[1]))
        self.frame_size = (h, w)
        self.observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)

        if reward_fn == "auto":
            reward_fn = GridWorldImaginedReward.from_env(self.real_env) if self.real_env is not None else None
        elif isinstance(reward_fn, str):
            raise bad_argument("reward_fn", reward_fn, "use 'auto', None or a callable(frame, info)")
        self.reward_fn = reward_fn
        self._generator = torch.Generator()
        self._frame: np.ndarray | None = None
        self.steps = 0

    @staticmethod
    def _make_real(real_env: gym.Env | str | None, kwargs: Mapping[str, Any] | None) -> gym.Env | None:
        if real_env is None or isinstance(real_env, gym.Env):
            return real_env
        if isinstance(real_env, str):
            if real_env == IMAGINED_ENV_ID:
                raise bad_argument("real_env", real_env, "the real env cannot itself be imagined")
            if real_env not in gym.registry:
                raise bad_argument(
                    "real_env", real_env, "use a registered gymnasium id, e.g. WorldBagel/GridWorld-v0"
                )
            kw = dict(kwargs or {})
            kw.setdefault("render_mode", "rgb_array")
            return gym.make(real_env, **kw)
        raise bad_argument("real_env", real_env, "give a gymnasium env, a registered id or None")

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        first = options.pop("obs", None)
        instruction = options.pop("instruction", None) or self.instruction
        info: dict[str, Any] = {}
        if first is None and self.real_env is not None:
            first, real_info = self.real_env.reset(seed=seed, options=options or None)
            info.update(real_info)
        elif first is None:
            first = self.initial_frames[int(self.np_random.integers(len(self.initial_frames)))]
        elif options:
            raise bad_argument(
                "options", sorted(options), "with options['obs'] only 'instruction' may be given"
            )
        frame = self._fit(np.asarray(first))
        self._generator.manual_seed(int(self.np_random.integers(2**62)))
        self.world_model.reset(frame, instruction=instruction)
        self._frame = frame
        self.steps = 0
        info.update(steps=0, action_text="")
        return frame.copy(), info

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise InvalidAction(f"invalid action={action!r}: use an element of {self.action_space}")
        text = self.codec.encode(action)
        self.world_model.act(text)
        frame = self.world_model.predict(1, generator=self._generator)[0]
        self.steps += 1
        info: dict[str, Any] = {"steps": self.steps, "action_text": text}
        if self.world_model.config.outcome_text:
            info["outcome_text"] = self.world_model.last_outcome
        reward, terminated = 0.0, False
        if self.reward_fn is not None:
            reward, terminated = self.reward_fn(frame, info)
        truncated = not terminated and self.steps >= self.max_steps
        self._frame = frame
        return frame.copy(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """The latest (imagined) frame; None when render_mode is None or before reset."""
        if self.render_mode is None or self._frame is None:
            return None
        return self._frame.copy()

    def close(self) -> None:
        if self.real_env is not None:
            self.real_env.close()
        super().close()

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise bad_argument("obs", frame.shape, "the first observation must be an RGB frame [H, W, 3]")
        frame = frame.astype(np.uint8, copy=False)
        h, w = self.frame_size
        if frame.shape[:2] != (h, w):
            frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))
        return frame


def _frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise bad_argument(
            "initial_frames", f"array of shape {arr.shape}", "give frames [N, H, W, 3] (or one frame)"
        )
    return arr.astype(np.uint8, copy=False)
