"""Check a torch device string before anything is built on it.

`torch.device("cuda:3")` is accepted on any build; the failure comes later, deep in the first `.to()`, as
`AssertionError: Torch not compiled with CUDA enabled` or an invalid-ordinal RuntimeError. Loading checks
the device first, so the error names the config field and the fix.
"""

from __future__ import annotations

import torch

from worldbagel.errors import bad_argument


def check_device(device: torch.device | str | None, argument: str = "model.device") -> torch.device:
    """`device` as a torch.device (None: cpu), or a ConfigError naming `argument` when it cannot be used."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise bad_argument(argument, device, "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            )
            raise bad_argument(argument, str(device), f"{why}; use {argument}=cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise bad_argument(
                argument, str(device), f"only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})"
            )
    elif dev.type not in ("cpu", "meta", "mps"):
        raise bad_argument(argument, str(device), "use cpu, cuda or cuda:N")
    return dev
