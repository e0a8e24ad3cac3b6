"""Reading a tracked run back from its files: TensorBoard event files and offline W&B run files."""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path


def tensorboard_events(folder: Path):
    """Everything written under `folder` (scalars, images, text), as TensorBoard itself reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def tb_scalars(events, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def tb_text(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


def tb_image(events, tag: str, index: int = -1):
    """(step, PIL image) of an image summary (a video is an animated GIF)."""
    from PIL import Image

    event = events.Images(tag)[index]
    return event.step, Image.open(io.BytesIO(event.encoded_image_string))


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline W&B run file (LevelDB-style log: 7-byte W&B header, 32 KiB blocks,
    each chunk with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, pending, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def finished_wandb_records(run_dir: Path, timeout_s: float = 30.0) -> list:
    """The records of a finished run: W&B's service process may still be writing them after `finish()`
    returns, until its `exit` record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wandb_history(records) -> dict[int, dict[str, object]]:
    """{step: {key: value}} of the logged history rows."""
    rows: dict[int, dict[str, object]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            rows.setdefault(int(row["_step"]), {}).update(row)
    return rows


def wandb_config(records) -> dict[str, object]:
    config: dict[str, object] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        config.update({i.key: json.loads(i.value_json) for i in items})
    return config
