"""Restricted unpickling of downloaded data files that hold only numpy arrays, numbers, lists and dicts.

Public datasets ship some metadata as Python pickles (the NWM/GNM layout's `traj_data.pkl`). A plain
`pickle.load` calls whatever function the file names, so a downloaded file can run code. `load_arrays`
admits only the globals that pickled numpy arrays, dtypes and numpy scalars need (both the numpy 1.x
`numpy.core` and the numpy 2.x `numpy._core` spellings, for protocols 0-5), plus `_codecs.encode`, which
protocols 0-2 use to store bytes (latin1 only). Lists, dicts, tuples, strings and Python numbers need no global at all.
Any other global (os.system, builtins.eval, subprocess.Popen, ...) is refused before it is called, with
`UnsafePickle` naming the file and what it asked for.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from worldbagel.errors import WorldBagelError

__all__ = ["UnsafePickle", "load_arrays"]


class UnsafePickle(WorldBagelError):
    """A pickle asked for a global outside numpy arrays, numbers, lists and dicts: it was not loaded."""


def _numpy_core(module: str) -> Any:
    """numpy's `_core.<module>` (numpy >= 1.26 has it; 2.x moved everything there), else `core.<module>`."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # numpy < 1.26 has only numpy.core
        return importlib.import_module(f"numpy.core.{module}")


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocols 0-2 call to rebuild bytes; only the latin1 spelling they write is admitted (another
    codec name would make the codec registry import modules)."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickle(
            f"it calls _codecs.encode with encoding {encoding!r} (pickles store bytes as latin1)"
        )
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Callable[..., Any] | type]:
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,  # protocols 0-2 store bytes as _codecs.encode(str, "latin1")
    }
    for package in ("numpy.core", "numpy._core"):  # numpy 1.x writes numpy.core, numpy 2.x numpy._core
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray, protocols 0-4
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars (np.float64(1.0))
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # ndarray, protocol 5
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase):
        super().__init__(file)
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafePickle(
                f"it asks for {module}.{name}, which is not part of a numpy array, number, list or dict"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(f"it holds a persistent id ({pid!r})")


def load_arrays(path: str | os.PathLike) -> Any:
    """The object in the pickle at `path`, built only from numpy arrays/scalars, numbers, strings, lists,
    tuples and dicts; raises `UnsafePickle` (naming the file) for anything else, before calling it."""
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f).load()
        except UnsafePickle as exc:
            raise UnsafePickle(
                f"refusing to load {os.fspath(path)}: {exc}, so loading it could run code chosen by whoever "
                "wrote the file; use a copy from the dataset's publisher, or rebuild it as a dict of numpy "
                "arrays"
            ) from None
