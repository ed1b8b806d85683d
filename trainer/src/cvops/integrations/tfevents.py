"""Follow TensorFlow event files while another process writes them.

TFRecord framing is read here (not by TensorFlow) so a half-written record at the end of a file
is left for the next poll instead of being reported as corruption or dropped, and so the reader
needs only the ``tensorboard`` package (its protos), not TensorFlow. Record layout:
``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cvops.integrations._common import require

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
EVENT_FILE_MARKER = "tfevents"


@dataclass(frozen=True)
class Scalar:
    source: str  # directory of the event file relative to the followed root, e.g. "train", "eval"
    tag: str
    step: int
    value: float
    wall_time: float


@dataclass(frozen=True)
class Image:
    source: str
    tag: str
    step: int
    encoded: bytes  # PNG/JPEG bytes exactly as the writer stored them
    index: int  # position within the summary's batch (max_outputs > 1 gives several)
    wall_time: float


class CorruptEventFile(Exception):
    """A record whose checksum is wrong: the rest of that file cannot be trusted."""


def _masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return masked_crc32c(data)


class RecordTailer:
    """Yields complete records of one TFRecord file, remembering the offset between calls."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self.corrupt = False

    def read_new(self) -> Iterator[bytes]:
        if self.corrupt:
            return
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return
        with handle:
            handle.seek(self.offset)
            while True:
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return  # partial header: the writer is mid-record; retry from self.offset
                length, length_crc = _HEADER.unpack(header)
                if _masked_crc32c(header[:8]) != length_crc:
                    self._mark_corrupt("length checksum")
                    return
                body = handle.read(length + _FOOTER.size)
                if len(body) < length + _FOOTER.size:
                    return  # partial record at EOF
                data = body[:length]
                (data_crc,) = _FOOTER.unpack(body[length:])
                if _masked_crc32c(data) != data_crc:
                    self._mark_corrupt("data checksum")
                    return
                self.offset += _HEADER.size + len(body)
                yield data

    def _mark_corrupt(self, what: str) -> None:
        self.corrupt = True
        log.warning("cvops: %s: bad %s at byte %d; ignoring the rest of this file", self.path, what, self.offset)


def decode_event(record: bytes, source: str = "") -> tuple[list[Scalar], list[Image]]:
    """Scalars and images of one serialized ``Event``. TF2's ``tf.summary.scalar`` stores a
    tensor with plugin "scalars"; TF1 and tensorboardX use ``simple_value``: both are read.
    Images: TF2's plugin "images" tensor ``[width, height, img0, img1, ...]`` and TF1's
    ``image.encoded_image_string``."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    event = event_pb2.Event.FromString(record)
    scalars: list[Scalar] = []
    images: list[Image] = []
    if not event.HasField("summary"):
        return scalars, images
    step, wall_time = int(event.step), float(event.wall_time)
    for value in event.summary.value:
        kind = value.WhichOneof("value")
        plugin = value.metadata.plugin_data.plugin_name
        if kind == "simple_value":
            scalars.append(Scalar(source, value.tag, step, float(value.simple_value), wall_time))
        elif kind == "image":
            images.append(Image(source, value.tag, step, value.image.encoded_image_string, 0, wall_time))
        elif kind == "tensor" and plugin == "scalars":
            array = tensor_util.make_ndarray(value.tensor)
            scalars.append(Scalar(source, value.tag, step, float(array.reshape(-1)[0]), wall_time))
        elif kind == "tensor" and plugin == "images":
            for index, encoded in enumerate(value.tensor.string_val[2:]):
                images.append(Image(source, value.tag, step, encoded, index, wall_time))
    return scalars, images


class EventDirectoryTailer:
    """Follows every event file under a directory (recursively): files that appear later are
    picked up, and each file is read from where the previous poll stopped."""

    def __init__(self, directory: str | os.PathLike) -> None:
        require("tensorboard", extra="tfod")
        self.directory = Path(directory)
        self._files: dict[Path, tuple[str, RecordTailer]] = {}

    def poll(self) -> tuple[list[Scalar], list[Image]]:
        scalars: list[Scalar] = []
        images: list[Image] = []
        if self.directory.is_dir():
            for path in sorted(self.directory.rglob(f"*{EVENT_FILE_MARKER}*")):
                if path.is_file() and path not in self._files:
                    source = path.parent.relative_to(self.directory).as_posix()
                    self._files[path] = (source, RecordTailer(path))
        for source, tailer in self._files.values():
            for record in tailer.read_new():
                try:
                    new_scalars, new_images = decode_event(record, source)
                except Exception as error:  # a record the protos cannot parse is skipped, not fatal
                    log.warning("cvops: %s: undecodable event skipped (%s)", tailer.path, error)
                    continue
                scalars.extend(new_scalars)
                images.extend(new_images)
        return scalars, images
