"""Sharded checkpoint files: torch.distributed.checkpoint (DCP) storage that moves one tensor at a time.

`save_sharded` / `load_sharded` write and read a flat dict of tensors as each rank holds them (DTensor
shards under FSDP): every rank writes one safetensors file of its own pieces and reads back only the pieces
its tensors cover; DCP plans who writes what (a tensor replicated on every rank is written once) and maps
pieces between rank counts on load (resharding).

The files are DCP's own safetensors layout (`HuggingFaceStorageWriter(save_distributed=True)`):
`shard-<rank+1>-model-00001-of-00001.safetensors`, whose `__metadata__` holds `DCP_SHARDING_INFO`, the
offset of each piece in its whole tensor, as JSON. DCP's reader rebuilds the layout from those headers, so
nothing is pickled: DCP's default FileSystemWriter would write its `.metadata` as a pickle.

What differs from DCP's own safetensors classes is how the bytes move. Its writer builds each file in
memory with `safetensors.torch.save` (a copy of every tensor, then the joined file: about twice the rank's
shard at the peak), and its reader maps each file and copies each piece out. Here the writer is
`weights_file.write_file` streaming from the plan (the header from the planned shapes, each piece fetched
when its bytes are written) and the reader reads each piece with `readinto` straight into the destination
tensor when the piece covers it with the same dtype (a resume at the same rank count), else into one buffer
of that piece. A rank's extra host memory is then about one tensor, not a copy of its shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator

import torch
from torch.futures import Future

from worldbagel.errors import CheckpointError, DependencyNotInstalled
from worldbagel.model.weights_file import StreamedTensors, TensorSpec, WeightsHeader, read_header, write_file

SHARD_NAME = "shard-{rank:05d}-model-00001-of-00001.safetensors"
"""One file per rank (rank counted from 1), named as DCP's HuggingFaceStorageWriter names it."""


def _dcp():
    """torch.distributed.checkpoint, checked for the safetensors storage classes these files follow."""
    # lazy: torch.distributed.checkpoint takes seconds to import; only sharded checkpoints need it
    import torch.distributed.checkpoint as dcp

    if not hasattr(dcp, "HuggingFaceStorageWriter"):
        raise DependencyNotInstalled(
            f"sharded training checkpoints need torch.distributed.checkpoint.HuggingFaceStorageWriter, which "
            f"torch {torch.__version__} lacks: pip install torch==2.13.0 (the version the README installs)"
        )
    return dcp


def _writer(path: str):
    dcp = _dcp()
    # lazy: torch.distributed.checkpoint takes seconds to import; only sharded checkpoints need it
    from torch.distributed.checkpoint.planner import WriteItemType
    from torch.distributed.checkpoint.storage import WriteResult

    class StreamingWriter(dcp.HuggingFaceStorageWriter):
        """DCP's distributed safetensors writer, one tensor in memory at a time (see the module docstring)."""

        def write_data(self, plan, planner) -> Future:
            items = {item.index.fqn: item for item in plan.items}
            if any(item.type == WriteItemType.BYTE_IO for item in items.values()):
                raise CheckpointError("sharded checkpoints hold tensors only; got a non-tensor entry")
            fut: Future = Future()
            if not items:
                fut.set_result([])
                return fut
            specs = {
                k: TensorSpec(i.tensor_data.properties.dtype, tuple(i.tensor_data.chunk.sizes))
                for k, i in items.items()
            }
            where = {k: {"saved_offsets": list(i.tensor_data.chunk.offsets)} for k, i in items.items()}
            name = SHARD_NAME.format(rank=plan.storage_data["shard_index"])
            metadata = {"DCP_SHARDING_INFO": json.dumps(where), "DCP_VERSION": "1.0", "format": "pt"}

            def fetch(key: str) -> torch.Tensor:
                return planner.resolve_data(items[key]).detach()

            os.makedirs(self.path, exist_ok=True)
            write_file(os.path.join(self.path, name), StreamedTensors(specs, fetch), metadata=metadata)
            fut.set_result([WriteResult(i.index, specs[k].nbytes, name) for k, i in items.items()])
            return fut

    return StreamingWriter(path, save_distributed=True)


def _read_into(f, start: int, out: torch.Tensor, what: str) -> None:
    """Fill contiguous CPU tensor `out` with the bytes of file `f` from `start` (readinto, no copy)."""
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    f.seek(start)
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            raise CheckpointError(f"{what} ends before its data: the file is truncated")
        got += k


def _read_piece(f, header: WeightsHeader, req, target: torch.Tensor) -> None:
    """Copy checkpoint piece `req` (its stored tensor, narrowed to the request) into `target`."""
    entry = header.entries[req.storage_index.fqn]
    what = f"shard file {header.path}, tensor {req.storage_index.fqn!r}"
    whole = all(o == 0 for o in req.storage_offsets) and tuple(req.lengths) == entry.shape
    if not entry.nbytes:
        return
    direct = target.device.type == "cpu" and target.dtype == entry.torch_dtype and target.is_contiguous()
    if whole and direct and tuple(target.shape) == entry.shape:
        _read_into(f, entry.start, target, what)
        return
    buf = torch.empty(entry.shape, dtype=entry.torch_dtype)
    _read_into(f, entry.start, buf, what)
    for dim, (offset, length) in enumerate(zip(req.storage_offsets, req.lengths)):
        buf = buf.narrow(dim, offset, length)
    target.copy_(buf)


def _reader(path: str):
    dcp = _dcp()

    class StreamingReader(dcp.HuggingFaceStorageReader):
        """DCP's safetensors reader, reading each piece into its destination (see the module docstring)."""

        def read_data(self, plan, planner) -> Future:
            per_file: dict[str, list] = {}
            for req in plan.items:
                per_file.setdefault(self.storage_data[req.storage_index].relative_path, []).append(req)
            for file, reqs in per_file.items():
                header = read_header(file)
                reqs.sort(key=lambda r: header.entries[r.storage_index.fqn].start)
                with open(file, "rb", buffering=0) as f:
                    for req in reqs:
                        target = planner.resolve_tensor(req).detach()
                        _read_piece(f, header, req, target)
                        planner.commit_tensor(req, target)
            fut: Future = Future()
            fut.set_result(None)
            return fut

    return StreamingReader(path)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group (a single process reading shards)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(tensors: dict[str, torch.Tensor], folder: str | os.PathLike) -> None:
    """Write each rank's pieces of `tensors` into `folder` (collective: all ranks pass the same keys)."""
    dcp = _dcp()
    with _single_process_quiet():
        dcp.save(tensors, storage_writer=_writer(str(folder)))


def load_sharded(tensors: dict[str, torch.Tensor], folder: str | os.PathLike) -> None:
    """Fill `tensors` in place from the shards in `folder` (collective), reading only the pieces this rank's
    tensors cover; the rank count may differ from the run that wrote them (a single process included).

    Raises CheckpointError, on every rank, naming the folder when a shard is missing, unreadable or does not
    hold the tensors' keys and shapes.
    """
    dcp = _dcp()
    # lazy: torch.distributed.checkpoint takes seconds to import; only sharded checkpoints need it
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _single_process_quiet():
            dcp.load(tensors, storage_reader=_reader(str(folder)))
    except (
        CheckpointException,
        CheckpointError,
        RuntimeError,
        OSError,
        ValueError,
        KeyError,
        AssertionError,
    ) as exc:
        raise CheckpointError(
            f"cannot read the sharded training state in {folder}: {_first_failure(exc)}"
        ) from None


def _first_failure(exc: BaseException) -> str:
    """The first underlying failure of a DCP error (DCP wraps every rank's exception with its traceback)."""
    failures = getattr(exc, "failures", None)
    if failures:
        rank, inner = next(iter(failures.items()))
        inner = inner[0] if isinstance(inner, tuple) else inner  # (exception, traceback)
        return f"rank {rank}: {type(inner).__name__}: {inner}"
    return f"{type(exc).__name__}: {exc}"
