"""Gridworld symbolic accuracy: is the state decoded from a predicted frame the true next state?

A frame decoder (e.g. `worldbagel.envs.decode_frame(frame, size)`) turns a frame into a state dict
with `agent` (row, col), `heading` and `goal` (row, col), or returns None / raises when the frame shows
no clear state. A frame counts as correct only when all compared fields equal the truth; undecodable
frames count as wrong and are also counted on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from worldbagel.errors import WorldBagelError, bad_argument

STATE_FIELDS = ("agent", "heading", "goal")


@dataclass(frozen=True)
class SymbolicAccuracy:
    """Result of `symbolic_accuracy` (fractions are over all n frames)."""

    n: int
    correct: int
    undecodable: int
    field_correct: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def undecodable_rate(self) -> float:
        return self.undecodable / self.n

    def as_dict(self) -> dict[str, float | int]:
        """Flat dict for metrics.json: n, correct, accuracy, undecodable, undecodable_rate, <field>_accuracy."""
        out: dict[str, float | int] = {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "undecodable": self.undecodable,
            "undecodable_rate": self.undecodable_rate,
        }
        for name, count in self.field_correct.items():
            out[f"{name}_accuracy"] = count / self.n
        return out


def _canonical(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def symbolic_accuracy(
    frames: Sequence[np.ndarray] | np.ndarray,
    states: Sequence[Mapping[str, object]],
    decode: Callable[..., Mapping[str, object] | None],
    fields: Sequence[str] = STATE_FIELDS,
    **decode_kwargs,
) -> SymbolicAccuracy:
    """Fraction of frames whose decoded state equals the true state.

    Args:
        frames: (n, H, W, 3) predicted frames (array or sequence of frames).
        states: n true states, mappings with at least `fields` (e.g. the env's `info` dicts).
        decode: frame decoder `decode(frame, **decode_kwargs) -> state dict | None`; a None result or a
            WorldBagelError / ValueError it raises marks the frame undecodable.
        fields: state fields compared (default agent, heading, goal).
        **decode_kwargs: passed to `decode`, e.g. `size=8` for `worldbagel.envs.decode_frame`.
    """
    if not callable(decode):
        raise bad_argument(
            "decode", decode, "pass a callable frame -> state dict, e.g. worldbagel.envs.decode_frame"
        )
    if len(frames) != len(states):
        raise bad_argument(
            "len(frames)", len(frames), f"give one true state per frame ({len(states)} states)"
        )
    if len(states) == 0:
        raise bad_argument("states", states, "pass at least one frame and state")
    for i, s in enumerate(states):
        missing = [f for f in fields if f not in s]
        if missing:
            raise bad_argument(f"states[{i}]", dict(s), f"each true state needs the fields {tuple(fields)}")
    correct = undecodable = 0
    per_field = dict.fromkeys(fields, 0)
    for frame, truth in zip(frames, states):
        try:
            got = decode(frame, **decode_kwargs)
        except (WorldBagelError, ValueError):
            got = None
        if got is None:
            undecodable += 1
            continue
        hits = [f in got and _canonical(got[f]) == _canonical(truth[f]) for f in fields]
        for f, hit in zip(fields, hits):
            per_field[f] += int(hit)
        correct += int(all(hits))
    return SymbolicAccuracy(n=len(states), correct=correct, undecodable=undecodable, field_correct=per_field)
