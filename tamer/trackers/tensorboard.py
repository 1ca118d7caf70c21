"""TensorBoard: event files under `tracking.tensorboard_dir` (default RUN_DIR/tensorboard), written with
tensorboard's own EventFileWriter and protos (no TensorFlow, no torch).

Scalars per optimizer step (train/*, memory/*, eval/*), and text: `events` (every event, at the step it
followed), `escalations` (plan changes and failures), `parameters` (the config, then each attempt's plan).
A resumed session first writes a SessionLog START at the step after the last one it knows was written:
TensorBoard then drops any point an earlier session wrote past it, so a step is never drawn twice.
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto import types_pb2
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tamer.trackers.base import RunContext


def log_dir(context: RunContext) -> Path:
    configured = context.config.tracking.tensorboard_dir
    return Path(configured).expanduser() if configured else context.run_dir / "tensorboard"


class TensorBoard:
    name = "tensorboard"

    def __init__(self, context: RunContext) -> None:
        self.folder = log_dir(context)
        self.writer: EventFileWriter | None = None
        self.step = 0

    def start(self, external_id: str | None, parameters: dict[str, str], resumed_after: int) -> str | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(self.folder))
        if resumed_after:
            self.writer.add_event(
                Event(wall_time=time.time(), step=resumed_after + 1, session_log=SessionLog(status=SessionLog.START))
            )
        else:
            self._text("parameters", 0, "\n".join(f"{key}: {value}" for key, value in parameters.items()), time.time())
        return None

    def parameters(self, values: dict[str, str]) -> None:
        self._text("parameters", self.step, "\n".join(f"{key}: {value}" for key, value in values.items()), time.time())

    def metrics(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self.step = max(self.step, step)
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self.writer.add_event(Event(wall_time=wall_time, step=step, summary=summary))

    def event(self, step: int, kind: str, text: str, alert: bool, wall_time: float) -> None:
        self._text("events", step, text, wall_time)
        if alert:
            self._text("escalations", step, text, wall_time)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, status: str | None) -> None:
        if self.writer is not None:
            self.writer.close()

    def _text(self, tag: str, step: int, text: str, wall_time: float) -> None:
        tensor = TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode()],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        value = Summary.Value(tag=tag, metadata=text_metadata.create_summary_metadata(None, None), tensor=tensor)
        self.writer.add_event(Event(wall_time=wall_time, step=step, summary=Summary(value=[value])))


TRACKER = TensorBoard
