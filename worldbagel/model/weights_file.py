"""Safetensors files read and written one tensor at a time, with checks that give clear errors.

Why not `safetensors.torch.load_file`: it memory-maps the file, and every mapped page it touches stays in
the process's resident set until the mapping closes, so a 29 GB checkpoint costs about two copies of RAM at
the peak (page cache + tensors). Here each tensor is read with plain `readinto` into its final buffer, so the
peak is one copy of the weights (plus one tensor when a dtype cast is asked for). The format is the public
safetensors layout: 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets},
"__metadata__": {...}}`, then the raw little-endian tensor bytes. Files written here are read by the official
`safetensors` library (tested) and vice versa. Writing streams too: `write_file` takes a dict or a
`StreamedTensors` (the header from shapes and dtypes given up front, each tensor fetched only when its bytes
are written), so an export gathered tensor by tensor from sharded ranks never holds the whole state.

Model weights are checked as they are read (`read_tensors(..., model_weights=True)`): every tensor must be
stored as floating point (from the header, before anything is read) and hold only finite values (a min/max
reduction per tensor, after the optional cast; it costs a few percent of the read). A NaN in one weight would
otherwise spread through every output (`%%%%` text, black images), and an integer tensor would fail deep
inside torch; here a CheckpointError names the file and the tensor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from worldbagel.errors import CheckpointError

logger = logging.getLogger(__name__)

#: safetensors dtype names <-> torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100_000_000  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    dtype: str
    """safetensors dtype name, e.g. "BF16"."""
    shape: tuple[int, ...]
    """Tensor shape."""
    start: int
    """Absolute byte offset of the first byte in the file."""
    end: int
    """Absolute byte offset one past the last byte."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class WeightsHeader:
    """The parsed, validated header of a safetensors file."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    file_size: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.entries.items()}

    def dtype_counts(self) -> dict[str, int]:
        """Number of parameters stored in each dtype (e.g. {"BF16": 14_607_000_000})."""
        out: dict[str, int] = {}
        for e in self.entries.values():
            out[e.dtype] = out.get(e.dtype, 0) + e.numel
        return out


def read_header(path: str | Path, hint: str = "") -> WeightsHeader:
    """Parse and validate the header of a safetensors file without reading any tensor data.

    Raises CheckpointError naming the file when it is missing, truncated or not a safetensors file.
    `hint` is appended to every message (e.g. what the model folder should contain).
    """
    path = Path(path)
    suffix = f" {hint}" if hint else ""
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}.{suffix}")
    size = path.stat().st_size

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(
            f"weights file {path} is corrupt or truncated ({why}); re-download or re-save it.{suffix}"
        )

    if size < 8:
        raise corrupt(f"{size} bytes, too short for a safetensors header")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise corrupt(f"header claims {n} bytes but the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries: dict[str, TensorEntry] = {}
    covered = 0
    for name, info in header.items():
        try:
            dtype, shape, (lo, hi) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"entry {name!r} lacks dtype/shape/data_offsets") from None
        if dtype not in DTYPES:
            raise corrupt(f"entry {name!r} has unknown dtype {dtype!r}")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if hi - lo != expected or lo < 0:
            raise corrupt(f"entry {name!r} spans {hi - lo} bytes, its shape {list(shape)} needs {expected}")
        if data_start + hi > size:
            raise corrupt(f"tensor {name!r} ends at byte {data_start + hi} beyond the file end {size}")
        entries[name] = TensorEntry(dtype, shape, data_start + lo, data_start + hi)
        covered = max(covered, hi)
    if data_start + covered != size:
        logger.warning("%s has %d trailing bytes after the last tensor", path, size - data_start - covered)
    return WeightsHeader(path=path, entries=entries, metadata=dict(metadata), file_size=size)


def read_tensors(
    header: WeightsHeader,
    names: Iterable[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    model_weights: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, tensor)` for `names` (all by default), in file order, one buffer per tensor.

    `dtype` casts floating-point tensors (integer/bool tensors keep their dtype); `device` moves each
    tensor right after it is read, so host memory holds at most one tensor that is not on its device.
    `model_weights` checks that every tensor is floating point and finite (see the module docstring).
    """
    wanted = list(header.entries) if names is None else list(names)
    if model_weights:
        check_weight_dtypes(header, wanted)
    order = sorted(wanted, key=lambda k: header.entries[k].start)
    try:
        with open(header.path, "rb", buffering=0) as f:
            for name in order:
                e = header.entries[name]
                buf = torch.empty(e.nbytes, dtype=torch.uint8)
                f.seek(e.start)
                view = memoryview(buf.numpy())
                got = 0
                while got < e.nbytes:
                    k = f.readinto(view[got:])
                    if not k:
                        raise CheckpointError(
                            f"weights file {header.path} ended while reading tensor {name!r}: the file is "
                            "truncated; re-download or re-save it"
                        )
                    got += k
                t = (
                    buf.view(e.torch_dtype).reshape(e.shape)
                    if e.nbytes
                    else torch.empty(e.shape, dtype=e.torch_dtype)
                )
                stored = t
                if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                    t = t.to(dtype)
                if torch.device(device).type != "cpu":
                    t = t.to(device)
                if model_weights and not all_finite(t):  # on the device: nearly free on a GPU
                    raise non_finite_weight(header, name, stored, t.cpu())
                del stored
                yield name, t
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {header.path}: {exc}") from None


def check_weight_dtypes(header: WeightsHeader, names: Iterable[str]) -> None:
    """Raise CheckpointError naming the first of `names` that the header stores in a non-floating dtype."""
    for name in names:
        e = header.entries[name]
        if not e.torch_dtype.is_floating_point:
            raise CheckpointError(
                f"weights file {header.path}: tensor {name!r} is stored as {e.dtype} ({e.torch_dtype}), but model "
                "weights are floating point (F32, BF16, F16, ...); the file is corrupt or was written from "
                "something else than this model: re-download or re-save it"
            )


def all_finite(t: torch.Tensor) -> bool:
    """True when a floating tensor holds no NaN or inf (its min and max are finite: NaN propagates through both,
    and a reduction allocates nothing, unlike `isfinite`); non-floating tensors are always finite."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    try:
        lo, hi = torch.aminmax(t)
    except (RuntimeError, NotImplementedError):  # dtypes without an aminmax kernel (float8)
        lo, hi = torch.aminmax(t.float())
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


def non_finite_weight(
    header: WeightsHeader, name: str, stored: torch.Tensor, loaded: torch.Tensor
) -> CheckpointError:
    """The error for tensor `name` holding NaN/inf after loading: in the file itself, or only after the cast."""
    if loaded.dtype != stored.dtype and all_finite(stored):
        return CheckpointError(
            f"weights file {header.path}: tensor {name!r} overflows {loaded.dtype} when cast from "
            f"{stored.dtype} (values up to {float(stored.float().abs().max()):.3g}); load it with dtype=float32 "
            "or dtype=keep"
        )
    bad = stored.float().reshape(-1)
    nan, inf = int(torch.isnan(bad).sum()), int(torch.isinf(bad).sum())
    return CheckpointError(
        f"weights file {header.path}: tensor {name!r} holds {nan} NaN and {inf} inf value(s) of "
        f"{bad.numel()}; the checkpoint is corrupt (or training diverged): re-download it or use an earlier "
        "checkpoint"
    )


def load_file(
    path: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a whole safetensors file into a dict (see `read_tensors`)."""
    return dict(read_tensors(read_header(path), dtype=dtype, device=device))


@dataclass(frozen=True)
class TensorSpec:
    """The dtype and shape of a tensor that will be written later (all a safetensors header needs)."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class StreamedTensors:
    """Tensors written one at a time: `specs` fix the header up front, `fetch(name)` makes each tensor only
    when the writer reaches it, so a file larger than RAM (or gathered from sharded ranks tensor by tensor)
    is written with one tensor in memory. `write_file` accepts it in place of a dict; iterating yields
    `(name, tensor)` in the file's order (what a rank that does not write runs to take part in the same
    collectives in the same order)."""

    def __init__(self, specs: Mapping[str, TensorSpec], fetch: Callable[[str], torch.Tensor]):
        self.specs = dict(specs)
        self.fetch = fetch

    def order(self) -> list[str]:
        return file_order(self.specs)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.order():
            yield name, self.fetch(name)


def file_order(specs: Mapping[str, TensorSpec]) -> list[str]:
    """Tensor order in a file written here: decreasing element size, then name (every tensor starts aligned
    to its element size)."""
    return sorted(specs, key=lambda k: (-specs[k].dtype.itemsize, k))


def write_file(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor] | StreamedTensors,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `tensors` as a safetensors file atomically (temp file + os.replace), streaming tensor bytes.

    Tensors are laid out by decreasing element size then name (`file_order`); the header is padded with
    spaces to a multiple of 8 bytes, as the safetensors library does. A `StreamedTensors` is fetched one
    tensor at a time, and each tensor it yields must match its spec (else CheckpointError, file not written).
    """
    path = Path(path)
    if isinstance(tensors, StreamedTensors):
        stream = tensors
    else:
        for name, t in tensors.items():
            if t.dtype not in DTYPE_NAMES:
                raise CheckpointError(f"cannot save tensor {name!r} of dtype {t.dtype} in safetensors")
        specs = {k: TensorSpec(t.dtype, tuple(t.shape)) for k, t in tensors.items()}
        stream = StreamedTensors(specs, tensors.__getitem__)
    names = stream.order()
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in names:
        spec = stream.specs[name]
        if spec.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"cannot save tensor {name!r} of dtype {spec.dtype} in safetensors")
        header[name] = {
            "dtype": DTYPE_NAMES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name in names:
                t = stream.fetch(name).detach()
                spec = stream.specs[name]
                if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                    raise CheckpointError(
                        f"cannot write {path}: tensor {name!r} is {t.dtype} {list(t.shape)} but its header "
                        f"entry says {spec.dtype} {list(spec.shape)}"
                    )
                if t.device.type != "cpu":
                    t = t.cpu()
                if t.numel():
                    f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
                del t
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def describe_mismatch(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], show: int = 5
) -> str | None:
    """None when `found` (a file's key -> shape) equals `expected` (the model's); else a one-line summary of
    the missing keys, unexpected keys and shape mismatches (first `show` of each, plus counts)."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    bad = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or extra or bad):
        return None
    parts = []
    for what, keys, fmt in (
        ("missing (in the model, not in the file)", missing, str),
        ("unexpected (in the file, not in the model)", extra, str),
        ("with a wrong shape", bad, lambda k: f"{k} file {list(found[k])} vs model {list(expected[k])}"),
    ):
        if keys:
            first = ", ".join(fmt(k) for k in keys[:show])
            more = f", ... (+{len(keys) - show} more)" if len(keys) > show else ""
            parts.append(f"{len(keys)} key(s) {what}: {first}{more}")
    return "; ".join(parts)
