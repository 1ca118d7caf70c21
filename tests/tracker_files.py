"""Reading back what the trackers wrote, with each tracker's own reader where it has one: TensorBoard's
EventAccumulator, MLflow's client on the file store, and the records of a W&B offline run file."""

from __future__ import annotations

import struct
from pathlib import Path


def tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point of `tag` TensorBoard's reader keeps (it drops points a restart orphaned)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def tensorboard_texts(folder: Path, tag: str) -> list[tuple[int, str]]:
    """(step, text) of every text summary of `tag`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    if tag not in reader.Tags()["tensors"]:
        return []
    return [(event.step, event.tensor_proto.string_val[0].decode()) for event in reader.Tensors(tag)]


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (`run-ID.wandb`): a 7-byte header, then LevelDB-style log blocks of
    32 KiB whose records are (crc32, length, type) + data, a record split over blocks as FIRST/MIDDLE/LAST."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        left_in_block = block - offset % block
        if left_in_block < 7:  # the block's tail is padding
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if length == 0 and kind == 0:
            offset += left_in_block
            continue
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
