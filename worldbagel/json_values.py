"""Values made JSON-ready: numpy scalars and arrays, tuples and paths become JSON types.

Every JSON file worldbagel writes from env or model values goes through `to_jsonable`: the trajectory format's
steps.jsonl and metadata (worldbagel/data/trajectory.py), rollout and imagine metrics.json. Non-finite floats
become null (JSON has no NaN), and large arrays (depth maps, images) are refused rather than written inline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MAX_INFO_ARRAY", "to_jsonable"]

MAX_INFO_ARRAY = 4096
"""Info arrays with more elements than this (depth maps, images) are not stored in steps.jsonl."""


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to JSON types; raises TypeError for anything else."""
    if _depth > 20:
        raise TypeError("nesting too deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        if value.size > MAX_INFO_ARRAY:
            raise TypeError(f"array of {value.size} elements is too large for steps.jsonl")
        return to_jsonable(value.tolist(), _depth + 1)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, _depth + 1) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
