"""True frames of branches from a recorded episode, by replaying it in its env.

Controllability and the look-back test need what the env shows after actions the episode never took. Every
env of the project is deterministic given its reset seed and actions (GridWorld, MiniWorld without domain
randomisation), so an episode that records its env id, env kwargs and reset seed can be rebuilt at any step:
reset with the seed, step the recorded actions up to t, then step the branch's actions. Each branch replays
from the reset, so no env needs to copy or restore its state.

A replay is checked against the stored frame at t (PSNR >= `match_db`, which lossy frame files pass and a
different state does not); an episode that does not replay raises `WorldBagelError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

import worldbagel.envs  # noqa: F401 - registers the WorldBagel/... ids
from worldbagel.actions import codec_for_env
from worldbagel.data.trajectory import Episode
from worldbagel.errors import WorldBagelError
from worldbagel.frame_metrics import psnr
from worldbagel.rollout import build_env, first_env, frame_of

from .heldout import episode_env_kwargs

__all__ = ["EnvReplay", "turn_actions"]

logger = logging.getLogger(__name__)

MATCH_DB = 35.0


def turn_actions(names: Sequence[str]) -> tuple[int, int] | None:
    """(turn-left id, turn-right id) among action texts ("turn left 15 degrees", ...), else None."""
    left = [i for i, n in enumerate(names) if n.startswith("turn left")]
    right = [i for i, n in enumerate(names) if n.startswith("turn right")]
    return (left[0], right[0]) if left and right else None


def _is_index(action: Any) -> bool:
    return isinstance(action, (int, np.integer)) and not isinstance(action, (bool, np.bool_))


class EnvReplay:
    """Rebuilds the envs of recorded episodes (one env per env id and kwargs, kept open) and replays them."""

    def __init__(self, match_db: float = MATCH_DB) -> None:
        self.match_db = float(match_db)
        self._envs: dict[tuple[str, str], tuple[Any, Any]] = {}

    def why_not(self, episode: Episode) -> str | None:
        """Why the episode cannot be replayed (None when it can)."""
        if not episode.env_id or episode.env_id not in gym.registry:
            return f"its env id {episode.env_id!r} is not a registered env"
        if episode.seed is None:
            return "it records no reset seed"
        if not all(_is_index(a) for a in episode.actions):
            return "its actions are not discrete action ids"
        return None

    def _entry(self, episode: Episode) -> tuple[Any, Any]:
        kwargs = dict(episode_env_kwargs(episode))
        key = (episode.env_id, repr(sorted(kwargs.items())))
        if key not in self._envs:
            env = first_env(lambda: build_env(episode.env_id, kwargs))
            self._envs[key] = (env, codec_for_env(env))
        return self._envs[key]

    def action_texts(self, episode: Episode) -> tuple[str, ...]:
        """The text of every action id of the episode's env (its codec's vocabulary)."""
        _, codec = self._entry(episode)
        if not codec.vocabulary:
            raise WorldBagelError(f"episode {episode.id}: env {episode.env_id} has no discrete action texts")
        return tuple(codec.vocabulary)

    def branch(self, episode: Episode, t: int, branches: Sequence[Sequence[int]]) -> list[list[np.ndarray]]:
        """For each branch (a list of action ids): the frames after each of its actions, taken from the
        episode's state at step t (frame t). Frames are uint8 [H, W, 3] as the env renders them."""
        reason = self.why_not(episode)
        if reason is not None:
            raise WorldBagelError(f"episode {episode.id} cannot be replayed: {reason}")
        if not 0 <= t <= episode.length:
            raise WorldBagelError(f"episode {episode.id}: step {t} is outside 0..{episode.length}")
        env, _ = self._entry(episode)
        out = []
        for b, actions in enumerate(branches):
            obs, _ = env.reset(seed=int(episode.seed))
            for a in episode.actions[:t]:
                obs, *_ = env.step(int(a))
            if b == 0:
                self._check(episode, t, frame_of(obs, env))
            frames = []
            for a in actions:
                obs, *_ = env.step(int(a))
                frames.append(np.asarray(frame_of(obs, env), np.uint8))
            out.append(frames)
        return out

    def _check(self, episode: Episode, t: int, frame: np.ndarray | None) -> None:
        stored = episode.load_frame(t)
        if frame is not None and frame.shape != stored.shape:
            frame = np.asarray(Image.fromarray(frame).resize(stored.shape[1::-1], Image.BILINEAR))
        db = -np.inf if frame is None else float(psnr(frame, stored))
        if db < self.match_db:
            raise WorldBagelError(
                f"episode {episode.id}: replaying its first {t} actions in {episode.env_id} from seed "
                f"{episode.seed} does not reproduce its frame {t} ({db:.1f} dB < {self.match_db:g} dB); the "
                "episode's env kwargs are missing or the env is not deterministic"
            )

    def close(self) -> None:
        for env, _ in self._envs.values():
            try:
                env.close()
            except Exception as exc:  # a broken env may fail to close; nothing more to do about it
                logger.warning("closing %s failed: %s", type(env).__name__, exc)
        self._envs.clear()

    def __enter__(self) -> EnvReplay:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
