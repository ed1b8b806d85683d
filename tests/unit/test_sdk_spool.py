"""The disk spool: durable, ordered, bounded, resumable after a crash, movable between machines."""
from __future__ import annotations

import json

import pytest

from cvops.tracking.spool import Spool, SpoolLocked
from tests.harness.small_disk import fill, small_disk


def _records(n, start=0):
    return [{"op": "metrics", "run": "r", "metrics": [["loss", float(i), 1000 + i, i]]} for i in range(start, start + n)]


def test_records_come_back_in_order_and_ack_persists(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=10 * 1024**2)
    spool.append(_records(10))
    pending = spool.pending(4)
    assert [r["metrics"][0][3] for _, r in pending] == [0, 1, 2, 3]
    spool.ack(pending[-1][0])
    spool.close(remove_if_drained=False)

    reopened = Spool(tmp_path / "s", max_bytes=10 * 1024**2)  # e.g. `cvops sync` after a crash
    assert [r["metrics"][0][3] for _, r in reopened.pending(100)] == list(range(4, 10))
    assert reopened.count_pending() == 6


def test_full_spool_drops_new_records_and_counts_them(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=1024**2)
    big = [{"op": "tags", "run": "r", "tags": {"t": "x" * 1000}}] * 2000
    dropped = spool.append(big)
    assert dropped > 0 and spool.dropped == dropped
    assert spool.bytes_used <= 1024**2
    assert spool.count_pending() == 2000 - dropped


def test_torn_last_line_is_not_a_record(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=10 * 1024**2)
    spool.append(_records(3))
    spool.close(remove_if_drained=False)
    segment = next((tmp_path / "s" / "segments").glob("*.jsonl"))
    with open(segment, "ab") as stream:  # a crash in the middle of a write
        stream.write(b'{"op": "metrics", "ru')
    reopened = Spool(tmp_path / "s", max_bytes=10 * 1024**2)
    reopened.append(_records(1, start=3))
    assert [r["metrics"][0][3] for _, r in reopened.pending(100)] == [0, 1, 2, 3]


def test_one_owner_at_a_time(tmp_path):
    owner = Spool(tmp_path / "s", max_bytes=10 * 1024**2)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "s", max_bytes=10 * 1024**2)
    owner.close(remove_if_drained=False)
    Spool(tmp_path / "s", max_bytes=10 * 1024**2)  # free again once the owner is gone


def test_drained_spool_removes_itself_and_artifacts_survive_a_move(tmp_path):
    spool = Spool(tmp_path / "a", max_bytes=10 * 1024**2)
    source = tmp_path / "ckpt.bin"
    source.write_bytes(b"w" * 100)
    adopted = spool.adopt_artifact(source, move=False)
    relative = str(adopted.relative_to(spool.directory))
    spool.append([{"op": "artifact", "run": "r", "path": relative, "owned": True}])
    spool.close(remove_if_drained=False)
    (tmp_path / "a").rename(tmp_path / "b")  # carried to another machine

    moved = Spool(tmp_path / "b", max_bytes=10 * 1024**2)
    (position, record), = moved.pending(10)
    location = moved.artifact_location(record["path"])
    assert location.read_bytes() == b"w" * 100
    moved.release_artifact(location)
    moved.ack(position)
    assert moved.close(remove_if_drained=True)
    assert not (tmp_path / "b").exists()


def test_non_finite_values_survive_the_round_trip(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=10 * 1024**2)
    spool.append([{"op": "metrics", "run": "r", "metrics": [["a", float("nan"), 1, 0], ["b", float("inf"), 1, 0]]}])
    (_, record), = spool.pending(1)
    assert json.dumps(record["metrics"]) == '[["a", NaN, 1, 0], ["b", Infinity, 1, 0]]'


def test_a_full_disk_refuses_a_whole_append_and_the_records_fit_later(tmp_path):
    """ENOSPC mid-append leaves no fragment that would spoil the next records (tmpfs; needs root)."""
    with small_disk(tmp_path / "disk", size_mb=1) as disk:
        spool = Spool(disk / "s", max_bytes=10 * 1024**2)
        spool.append(_records(3))
        filler = fill(disk)
        with pytest.raises(OSError):
            spool.append(_records(2000, start=3))  # about 130 KB: more than any room left
        filler.unlink()
        assert spool.append(_records(2000, start=3)) == 0
        pending = spool.pending(10_000)
        assert [r["metrics"][0][3] for _, r in pending] == list(range(2003))
        spool.ack(pending[-1][0])
        spool.close()
