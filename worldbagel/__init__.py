"""worldbagel: BAGEL as a world model for embodied agents.

Public names are imported lazily so that `import worldbagel` stays cheap (no torch import until a
model class is touched).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Bagel": "worldbagel.model.bagel",
    "BagelConfig": "worldbagel.model.configuration",
    "BagelPipeline": "worldbagel.inference.pipeline",
    "WorldModel": "worldbagel.world_model",
    "WorldModelConfig": "worldbagel.world_model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'worldbagel' has no attribute {name!r}")
