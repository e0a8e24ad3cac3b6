"""Action codecs: environment actions <-> the action text the world model reads.

The world model sees actions as short English phrases ("move forward 0.25 m", "turn left 30 degrees",
"dx 0.25 dy -0.10 dyaw 15.0"). A codec is the single place where an env's raw action (an int of a
`Discrete` space, or a float vector for NWM-style data) becomes text and back, so data collection,
training and policies share one vocabulary.

Codecs:
- `DiscreteActionCodec(names)`: an env's `action_names` in action order; parsing ignores case, extra
  whitespace, underscores and a trailing full stop.
- `NavActionCodec(kinds, forward_m, turn_deg)`: discrete navigation actions with metric step sizes
  (`move forward 0.25 m`, `turn left 30 degrees`, `stop`); parsing accepts any number format equal to
  the configured step ("0.250 m", "30 deg", "30°").
- `ContinuousActionCodec(max_xy, max_yaw_deg)`: (dx, dy, dyaw) with dx, dy in units of the waypoint
  spacing (already normalised) and dyaw in radians. Text format (fixed, see `ContinuousActionCodec`):
  `dx {dx:.2f} dy {dy:.2f} dyaw {degrees(dyaw):.1f}`.
- `codec_for_env(env)` picks the right one for an env.

Every `decode` failure raises `worldbagel.errors.InvalidAction` naming the text and listing the valid
forms.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from worldbagel.errors import InvalidAction, bad_argument

__all__ = [
    "NEXT_ACTION_QUESTION",
    "ActionCodec",
    "ContinuousActionCodec",
    "DiscreteActionCodec",
    "NavActionCodec",
    "codec_for_env",
    "codec_for_names",
    "next_action_question",
    "normalize_text",
]

NAV_KINDS = ("stop", "move_forward", "move_backward", "turn_left", "turn_right")
"""Action kinds a `NavActionCodec` knows."""


NEXT_ACTION_QUESTION = "Which action should the agent take next? Answer with one of: {actions}."
"""The question the world model is asked (and trained on) for the next action; `{actions}` becomes the
codec's vocabulary joined by ', '."""


def next_action_question(codec: ActionCodec, template: str = NEXT_ACTION_QUESTION) -> str:
    """The next-action question for a codec (continuous codecs list their valid form instead of a vocabulary)."""
    actions = ", ".join(codec.vocabulary) if codec.vocabulary else codec.valid_forms()
    return template.format(actions=actions)


def normalize_text(text: str) -> str:
    """Lower-case, underscores to spaces, collapse whitespace, drop a trailing full stop."""
    out = " ".join(str(text).replace("_", " ").lower().split())
    return out[:-1].rstrip() if out.endswith(".") else out


class ActionCodec(ABC):
    """Maps an env's raw actions to action text and back."""

    vocabulary: tuple[str, ...] | None = None
    """Every action text, in action order, for discrete codecs; None for continuous ones."""

    @abstractmethod
    def encode(self, action: Any) -> str:
        """The canonical text of `action` (raises InvalidAction for an action outside the codec)."""

    @abstractmethod
    def decode(self, text: str) -> Any:
        """The action that `text` names (raises InvalidAction naming the text and the valid forms)."""

    @abstractmethod
    def valid_forms(self) -> str:
        """A human-readable description of the texts `decode` accepts (used in error messages)."""

    def _reject(self, text: str, why: str = "") -> InvalidAction:
        reason = f" ({why})" if why else ""
        return InvalidAction(f"invalid action text {text!r}{reason}; valid forms: {self.valid_forms()}")


class DiscreteActionCodec(ActionCodec):
    """Action i <-> `names[i]`, with tolerant parsing (case, whitespace, underscores, trailing '.')."""

    def __init__(self, names: Sequence[str]):
        names = tuple(str(n) for n in names)
        if not names:
            raise bad_argument("names", names, "give at least one action name")
        keys = [normalize_text(n) for n in names]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise bad_argument("names", names, f"action names must differ after normalising; repeated: {dup}")
        self.vocabulary = names
        self._index = {k: i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, action: Any) -> str:
        i = _as_index(action, len(self.vocabulary))
        return self.vocabulary[i]

    def decode(self, text: str) -> int:
        key = normalize_text(text)
        if key in self._index:
            return self._index[key]
        raise self._reject(text)

    def valid_forms(self) -> str:
        return ", ".join(repr(n) for n in self.vocabulary)

    def __repr__(self) -> str:
        return f"DiscreteActionCodec({list(self.vocabulary)!r})"


_NUM = r"([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)"
_MOVE_RE = re.compile(
    rf"^(?:move|go|step) (forward|forwards|backward|backwards|back) {_NUM} ?(?:m|meters?|metres?)$"
)
_TURN_RE = re.compile(rf"^(?:turn|rotate) (left|right) {_NUM} ?(?:deg|degs|degrees?|°)$")
_STOP_WORDS = {"stop", "done"}


class NavActionCodec(ActionCodec):
    """Discrete navigation actions with metric step sizes.

    `kinds` lists the action kinds in action order, each one of `NAV_KINDS`; the texts are
    `stop`, `move forward {forward_m:g} m`, `move backward {forward_m:g} m`, `turn left {turn_deg:g} degrees`,
    `turn right {turn_deg:g} degrees`. Decoding accepts any spelling of the same step size (the number
    must equal the configured step to within 1e-6 relative), e.g. "Move forward 0.250 m", "turn left 30°".
    Habitat's order is `("stop", "move_forward", "turn_left", "turn_right")`; MiniWorld's is
    `("turn_left", "turn_right", "move_forward", ...)`.
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("stop", "move_forward", "turn_left", "turn_right"),
        forward_m: float = 0.25,
        turn_deg: float = 30.0,
    ):
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in NAV_KINDS]
        if bad or not kinds:
            raise bad_argument("kinds", kinds, f"use a non-empty list of {NAV_KINDS}")
        if len(set(kinds)) != len(kinds):
            raise bad_argument("kinds", kinds, "each action kind may appear once")
        if not (forward_m > 0 and math.isfinite(forward_m)):
            raise bad_argument("forward_m", forward_m, "use a positive step length in metres")
        if not (turn_deg > 0 and math.isfinite(turn_deg)):
            raise bad_argument("turn_deg", turn_deg, "use a positive turn angle in degrees")
        self.kinds = kinds
        self.forward_m = float(forward_m)
        self.turn_deg = float(turn_deg)
        self.vocabulary = tuple(self._text(k) for k in kinds)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> NavActionCodec:
        """Build the codec from action names such as an env's `action_names`.

        Raises InvalidAction if a name is not a navigation phrase or step sizes disagree.
        """
        kinds, fwd, turn = [], set(), set()
        for name in names:
            kind, value = _parse_nav(name)
            if kind is None:
                raise InvalidAction(
                    f"action name {name!r} is not a navigation action; expected 'stop', "
                    "'move forward|backward X m' or 'turn left|right D degrees'"
                )
            kinds.append(kind)
            if kind.startswith("move"):
                fwd.add(round(value, 9))
            elif kind.startswith("turn"):
                turn.add(round(value, 9))
        if len(fwd) > 1 or len(turn) > 1:
            raise InvalidAction(
                f"action names {list(names)!r} use more than one step size: {fwd or ''} {turn or ''}"
            )
        return cls(kinds, forward_m=fwd.pop() if fwd else 0.25, turn_deg=turn.pop() if turn else 30.0)

    def _text(self, kind: str) -> str:
        if kind == "stop":
            return "stop"
        if kind == "move_forward":
            return f"move forward {self.forward_m:g} m"
        if kind == "move_backward":
            return f"move backward {self.forward_m:g} m"
        side = kind.split("_")[1]
        return f"turn {side} {self.turn_deg:g} degrees"

    def index_of(self, kind: str) -> int | None:
        """Action index of a kind ('move_forward', ...), or None if this codec lacks it."""
        return self.kinds.index(kind) if kind in self.kinds else None

    def encode(self, action: Any) -> str:
        return self.vocabulary[_as_index(action, len(self.kinds))]

    def decode(self, text: str) -> int:
        kind, value = _parse_nav(text)
        if kind is None:
            raise self._reject(text)
        if kind not in self.kinds:
            raise self._reject(text, f"this env has no {kind.replace('_', ' ')} action")
        if kind.startswith("move") and not math.isclose(value, self.forward_m, rel_tol=1e-6):
            raise self._reject(text, f"step {value:g} m differs from this env's {self.forward_m:g} m")
        if kind.startswith("turn") and not math.isclose(value, self.turn_deg, rel_tol=1e-6):
            raise self._reject(
                text, f"turn {value:g} degrees differs from this env's {self.turn_deg:g} degrees"
            )
        return self.kinds.index(kind)

    def valid_forms(self) -> str:
        return ", ".join(repr(n) for n in self.vocabulary)

    def __repr__(self) -> str:
        return (
            f"NavActionCodec({list(self.kinds)!r}, forward_m={self.forward_m:g}, turn_deg={self.turn_deg:g})"
        )


def _parse_nav(text: str) -> tuple[str | None, float]:
    t = normalize_text(text).replace(" °", "°")
    if t in _STOP_WORDS:
        return "stop", 0.0
    m = _MOVE_RE.match(t)
    if m:
        direction = "move_forward" if m.group(1).startswith("forward") else "move_backward"
        value = float(m.group(2))
        return (direction, value) if value > 0 else (None, 0.0)
    m = _TURN_RE.match(t)
    if m:
        value = float(m.group(2))
        return (f"turn_{m.group(1)}", value) if value > 0 else (None, 0.0)
    return None, 0.0


class ContinuousActionCodec(ActionCodec):
    """NWM-style relative motion (dx, dy, dyaw) <-> "dx 0.25 dy -0.10 dyaw 15.0".

    The action is a float32 array `[dx, dy, dyaw]`: dx (forward) and dy (left) in the robot frame of the
    current step, in units of the dataset's metric waypoint spacing (so 1.0 = one typical step), and dyaw
    in radians (counter-clockwise positive). The text format is fixed:
    `"dx {dx:.2f} dy {dy:.2f} dyaw {dyaw_degrees:.1f}"` (two decimals for the normalised translation, one
    decimal for the yaw in degrees, "-0.00" written as "0.00"), so a text round trip is exact and an action
    round trip is exact to the printed precision. `decode` accepts any float spelling in that order and
    rejects values outside `|dx|, |dy| <= max_xy` and `|dyaw| <= max_yaw_deg`; `encode` raises on them too
    unless `clip=True`.
    """

    _RE = re.compile(rf"^dx {_NUM} dy {_NUM} dyaw {_NUM}$")

    def __init__(self, max_xy: float = 10.0, max_yaw_deg: float = 180.0, clip: bool = False):
        if not (max_xy > 0 and math.isfinite(max_xy)):
            raise bad_argument("max_xy", max_xy, "use a positive bound (in waypoint-spacing units)")
        if not (0 < max_yaw_deg <= 180):
            raise bad_argument("max_yaw_deg", max_yaw_deg, "use a bound in (0, 180] degrees")
        self.max_xy = float(max_xy)
        self.max_yaw_deg = float(max_yaw_deg)
        self.clip = bool(clip)
        self.vocabulary = None

    def encode(self, action: Any) -> str:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (3,) or not np.all(np.isfinite(a)):
            raise InvalidAction(
                f"continuous action {action!r} must be 3 finite numbers (dx, dy, dyaw radians)"
            )
        dx, dy, yaw = float(a[0]), float(a[1]), math.degrees(float(a[2]))
        if self.clip:
            dx = min(max(dx, -self.max_xy), self.max_xy)
            dy = min(max(dy, -self.max_xy), self.max_xy)
            yaw = min(max(yaw, -self.max_yaw_deg), self.max_yaw_deg)
        else:  # the bounds apply to the printed values: decode's float32 radians of 'dyaw 180.0' encode again
            self._check(repr(action), round(dx, 2), round(dy, 2), round(yaw, 1))
        return f"dx {_fmt(dx, 2)} dy {_fmt(dy, 2)} dyaw {_fmt(yaw, 1)}"

    def decode(self, text: str) -> np.ndarray:
        m = self._RE.match(normalize_text(text))
        if not m:
            raise self._reject(text)
        dx, dy, yaw = (float(g) for g in m.groups())
        self._check(repr(text), dx, dy, yaw, as_text=True)
        return np.array([dx, dy, math.radians(yaw)], dtype=np.float32)

    def _check(self, shown: str, dx: float, dy: float, yaw_deg: float, as_text: bool = False) -> None:
        problems = []
        if abs(dx) > self.max_xy or abs(dy) > self.max_xy:
            problems.append(f"|dx|, |dy| must be <= {self.max_xy:g}")
        if abs(yaw_deg) > self.max_yaw_deg:
            problems.append(f"|dyaw| must be <= {self.max_yaw_deg:g} degrees")
        if problems:
            what = "action text" if as_text else "continuous action"
            raise InvalidAction(
                f"{what} {shown} is out of bounds ({'; '.join(problems)}); valid forms: {self.valid_forms()}"
            )

    def valid_forms(self) -> str:
        return (
            f"'dx <float> dy <float> dyaw <degrees>' e.g. 'dx 0.25 dy -0.10 dyaw 15.0', "
            f"with |dx|, |dy| <= {self.max_xy:g} and |dyaw| <= {self.max_yaw_deg:g}"
        )

    def __repr__(self) -> str:
        return f"ContinuousActionCodec(max_xy={self.max_xy:g}, max_yaw_deg={self.max_yaw_deg:g}, clip={self.clip})"


def _fmt(value: float, decimals: int) -> str:
    s = f"{value:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _as_index(action: Any, n: int) -> int:
    arr = np.asarray(action)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 1 and np.issubdtype(arr.dtype, np.floating) and float(arr) == int(arr):
            arr = arr.astype(np.int64)
        else:
            raise InvalidAction(f"action {action!r} is not an integer action index; use 0..{n - 1}")
    i = int(arr.reshape(()))
    if not 0 <= i < n:
        raise InvalidAction(f"action {i} is out of range; use 0..{n - 1}")
    return i


def codec_for_env(env: Any) -> ActionCodec:
    """The codec of a gymnasium env (or vector env).

    - `action_names` on the env (or any wrapper): a `NavActionCodec` when every name is a navigation
      phrase, else a `DiscreteActionCodec`.
    - a `Box` action space of shape (3,) without names: `ContinuousActionCodec`.
    - a `Discrete(n)` space without names: `DiscreteActionCodec(["action 0", ..., "action n-1"])`.
    """
    names = _action_names(env)
    space = getattr(env, "single_action_space", None) or getattr(env, "action_space", None)
    if names is not None:
        return codec_for_names(names)
    if isinstance(space, gym.spaces.Box) and tuple(space.shape) == (3,):
        return ContinuousActionCodec()
    if isinstance(space, gym.spaces.Discrete):
        return DiscreteActionCodec([f"action {i}" for i in range(int(space.n))])
    raise bad_argument(
        "env", env, f"no action codec for action space {space!r}; give the env an `action_names` attribute"
    )


def codec_for_names(names: Sequence[str]) -> ActionCodec:
    """The codec of a list of action names: a `NavActionCodec` when every name is a navigation phrase, else a
    `DiscreteActionCodec`."""
    try:
        return NavActionCodec.from_names(names)
    except InvalidAction:
        return DiscreteActionCodec(names)


def _action_names(env: Any) -> tuple[str, ...] | None:
    for getter in (
        lambda: env.get_wrapper_attr("action_names"),
        lambda: env.unwrapped.action_names,
        lambda: env.action_names,
        lambda: env.get_attr("action_names")[0],  # vector envs
    ):
        try:
            names = getter()
        except Exception:  # each lookup style may not apply to this env type
            continue
        if names is not None:
            return tuple(names)
    return None
