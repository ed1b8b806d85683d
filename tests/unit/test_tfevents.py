"""cvops.integrations.tfevents: following event files while a writer appends to them.

The records are written by tensorboard's own EventFileWriter (the TFRecord framing TensorFlow
uses), carrying the two scalar encodings seen in the wild: TF2's tensor with plugin "scalars"
and TF1/tensorboardX's simple_value. The tests with TensorFlow's own tf.summary are in
tests/integration/test_integration_tfod.py."""
import logging

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from cvops.integrations.tfevents import EventDirectoryTailer, RecordTailer  # noqa: E402


def tf2_scalar_event(tag, value, step):
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    tensor = tensor_util.make_tensor_proto(np.float32(value))
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])
    return event_pb2.Event(step=step, wall_time=1000.0 + step, summary=summary)


def tf1_scalar_event(tag, value, step):
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    return event_pb2.Event(step=step, wall_time=1000.0 + step, summary=summary)


def write_events(directory, events):
    writer = EventFileWriter(str(directory))
    for event in events:
        writer.add_event(event)
    writer.close()
    (path,) = directory.glob("*tfevents*")
    return path


def test_reads_tf2_tensor_scalars_and_tf1_simple_values(tmp_path):
    (tmp_path / "train").mkdir()
    write_events(tmp_path / "train", [tf2_scalar_event("Loss/total_loss", 1.5, 100), tf1_scalar_event("learning_rate", 0.01, 100)])
    scalars, images = EventDirectoryTailer(tmp_path).poll()
    assert [(s.source, s.tag, s.step, s.value) for s in scalars] == [
        ("train", "Loss/total_loss", 100, 1.5),
        ("train", "learning_rate", 100, pytest.approx(0.01)),
    ]
    assert scalars[0].wall_time == 1100.0 and images == []


def test_partial_records_at_eof_are_retried_until_complete(tmp_path):
    source = tmp_path / "written"
    source.mkdir()
    events = [tf2_scalar_event("Loss/total_loss", float(step), step) for step in range(1, 6)]
    data = write_events(source, events).read_bytes()
    followed = tmp_path / "model_dir" / "train"
    followed.mkdir(parents=True)
    tailer = EventDirectoryTailer(tmp_path / "model_dir")
    target = followed / "events.out.tfevents.1.host"
    seen = []
    # The writer flushes at arbitrary byte boundaries: every 7 bytes a poll happens.
    with open(target, "wb") as handle:
        for start in range(0, len(data), 7):
            handle.write(data[start:start + 7])
            handle.flush()
            seen.extend(s.step for s in tailer.poll()[0])
    assert seen == [1, 2, 3, 4, 5]
    assert tailer.poll() == ([], [])


def test_files_that_appear_later_are_followed(tmp_path):
    (tmp_path / "train").mkdir()
    write_events(tmp_path / "train", [tf2_scalar_event("Loss/total_loss", 1.0, 1)])
    tailer = EventDirectoryTailer(tmp_path)
    assert [s.source for s in tailer.poll()[0]] == ["train"]
    (tmp_path / "eval").mkdir()
    write_events(tmp_path / "eval", [tf2_scalar_event("DetectionBoxes_Precision/mAP", 0.25, 1)])
    scalars, _ = tailer.poll()
    assert [(s.source, s.tag, s.value) for s in scalars] == [("eval", "DetectionBoxes_Precision/mAP", 0.25)]


def test_a_corrupt_record_stops_that_file_with_a_warning(tmp_path, caplog):
    path = write_events(tmp_path, [tf1_scalar_event("a", 1.0, 1), tf1_scalar_event("a", 2.0, 2)])
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # a byte inside the last record's payload
    path.write_bytes(bytes(data))
    tailer = RecordTailer(path)
    with caplog.at_level(logging.WARNING):
        records = list(tailer.read_new())
    # The file-version header and the first event survive; the damaged one is reported.
    assert len(records) == 2 and tailer.corrupt
    assert "data checksum" in caplog.text
