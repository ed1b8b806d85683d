"""A bounded, append-only, on-disk write-ahead log of tracking records.

Layout of a spool directory (one per training process)::

    segments/00000001.jsonl   records, one JSON object per line, appended and fsync'd per batch
    artifacts/<n>/<file>      snapshots of files handed to log_artifact, uploaded later
    cursor.json               {"segment": n, "offset": bytes}: everything before it is acknowledged
    run_ids.json              {"local:<uuid>": "<server run id>"} for runs created while offline
    meta.json                 {"tracking_uri": …}: the server it was written for
    lock                      flock'd by the process that owns the spool (worker or `cvops sync`)

Every record is written here *before* it is sent, so a crash, an outage or an air-gapped box
all leave the same thing behind: a spool that ``cvops sync`` (or the next worker) replays in
order. The size is bounded by ``max_bytes``; when full, new records are dropped and counted.
When the disk itself is full, ``append`` raises and leaves no torn line behind, so the caller
can hold the records and append them whole once the disk has room.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Iterator

SEGMENT_BYTES = 16 * 1024 * 1024
_SEGMENT_GLOB = "*.jsonl"

log = logging.getLogger("cvops")


def read_meta(directory: Path) -> dict:
    return _read_json(Path(directory) / "meta.json", {})


class SpoolLocked(RuntimeError):
    """Another live process owns this spool."""


def _atomic_write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as stream:
        json.dump(data, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return default


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class Spool:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory).resolve()
        self.max_bytes = max_bytes
        self.segments_dir = self.directory / "segments"
        self.artifacts_dir = self.directory / "artifacts"
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        self._lock = open(self.directory / "lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLocked(f"{self.directory} is in use by another running process") from None
        self._cursor_path = self.directory / "cursor.json"
        self._run_ids_path = self.directory / "run_ids.json"
        cursor = _read_json(self._cursor_path, {"segment": 0, "offset": 0})
        self._cursor = (int(cursor["segment"]), int(cursor["offset"]))
        self.run_ids: dict[str, str] = _read_json(self._run_ids_path, {})
        existing = self._segment_numbers()
        # A new writer never appends to an old segment: its last line may be torn by a crash.
        self._write_segment = (existing[-1] if existing else 0) + 1
        self._writer = None
        self._append_lock = threading.Lock()  # the exit path may append while the worker is stuck
        self._artifact_counter = len(list(self.artifacts_dir.iterdir()))
        self.staging_dir = self.directory / "staging"
        self.staging_dir.mkdir(exist_ok=True)
        self.bytes_used = _tree_bytes(self.segments_dir) + _tree_bytes(self.artifacts_dir)
        self.dropped = 0
        self._unsaved: set[Path] = set()

    # ----------------------------------------------------------------- writing
    def _segment_numbers(self) -> list[int]:
        return sorted(int(p.stem) for p in self.segments_dir.glob(_SEGMENT_GLOB) if p.stem.isdigit())

    def _segment_path(self, number: int) -> Path:
        return self.segments_dir / f"{number:08d}.jsonl"

    def has_room(self, nbytes: int) -> bool:
        return self.bytes_used + nbytes <= self.max_bytes

    def append(self, records: list[dict]) -> int:
        """Write ``records`` durably (one fsync); return how many were dropped for lack of room.

        Raises OSError when the disk refuses the write (full): then none of ``records`` is written.
        """
        with self._append_lock:
            return self._append(records)

    def _append(self, records: list[dict]) -> int:
        lines = []
        for record in records:
            line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
            if not self.has_room(len(line) + sum(map(len, lines))):
                self.dropped += 1
                continue
            lines.append(line)
        if lines:
            data = b"".join(lines)
            self._write_whole(data)
            self.bytes_used += len(data)
        return len(records) - len(lines)

    def _write_whole(self, data: bytes) -> None:
        if self._writer is None or self._writer.tell() >= SEGMENT_BYTES:
            if self._writer is not None:
                self._writer.close()
                self._write_segment += 1
            # Unbuffered: after a failed write no buffer may hold a fragment that a later flush
            # would append behind the next records.
            self._writer = open(self._segment_path(self._write_segment), "ab", buffering=0)
        start = os.fstat(self._writer.fileno()).st_size
        try:
            written = memoryview(data)
            while written:
                written = written[self._writer.write(written):]
            os.fsync(self._writer.fileno())
        except OSError:
            # A full disk may take part of the data: cut it off, or the reader would join the
            # fragment to the next record and lose both as one corrupt line.
            os.ftruncate(self._writer.fileno(), start)
            raise

    def staging_path(self, file_name: str) -> Path:
        """A fresh path where the training thread may write a file it then hands over by ``adopt``."""
        directory = self.staging_dir / uuid.uuid4().hex
        directory.mkdir()
        return directory / file_name

    def adopt_artifact(self, source: Path, move: bool) -> Path | None:
        """Move (staged files) or hard-link/copy (user files) ``source`` into the spool.

        Returns the path inside the spool, or None when it does not fit in ``max_bytes``.
        """
        size = _tree_bytes(source) if source.is_dir() else source.stat().st_size
        if not self.has_room(size):
            return None
        self._artifact_counter += 1
        target_dir = self.artifacts_dir / str(self._artifact_counter)
        target_dir.mkdir()
        target = target_dir / source.name
        if move:
            os.replace(source, target)
            shutil.rmtree(source.parent, ignore_errors=True)
        elif source.is_dir():
            shutil.copytree(source, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, target)
        self.bytes_used += size
        return target

    def artifact_location(self, recorded: str) -> Path:
        """Where a recorded artifact path is now: snapshots are recorded relative to the spool,
        so a spool copied to another machine for ``cvops sync`` still finds them."""
        return self.directory / recorded if not os.path.isabs(recorded) else Path(recorded)

    def release_artifact(self, path: Path) -> None:
        """Delete an uploaded snapshot (only ones inside this spool)."""
        path = Path(path)
        if self.artifacts_dir not in path.parents:
            return
        size = _tree_bytes(path) if path.is_dir() else (path.stat().st_size if path.exists() else 0)
        shutil.rmtree(path.parent, ignore_errors=True)
        self.bytes_used = max(0, self.bytes_used - size)

    def write_meta(self, meta: dict) -> None:
        _atomic_write_json(self.directory / "meta.json", meta)

    def remember_run_id(self, local_key: str, run_id: str) -> None:
        self.run_ids[local_key] = run_id
        self._save(self._run_ids_path, self.run_ids)

    def _save(self, path: Path, data) -> None:
        """Persist bookkeeping; on a full disk it stays in memory and is saved by the next call
        that finds room. Only a crash in between costs anything: the next replay re-sends what
        the stale file does not record, which the server stores once (see replay.py)."""
        try:
            _atomic_write_json(path, data)
        except OSError as exc:
            path.with_suffix(".tmp").unlink(missing_ok=True)
            if path not in self._unsaved:
                log.warning("cvops: could not save %s (%s); kept in memory until the disk has room", path, exc)
            self._unsaved.add(path)
        else:
            self._unsaved.discard(path)

    # ----------------------------------------------------------------- reading
    def pending(self, limit: int) -> list[tuple[tuple[int, int], dict]]:
        """Up to ``limit`` unacknowledged records, each with the cursor just after it.

        A line that does not parse (only possible if the disk itself corrupted it) comes back
        as ``{"op": "corrupt"}`` so the reader can count it and move past it.
        """
        out: list[tuple[tuple[int, int], dict]] = []
        for number, offset, line in self._lines_after(self._cursor):
            try:
                record = json.loads(line)
            except ValueError:
                record = {"op": "corrupt"}
            out.append(((number, offset), record))
            if len(out) >= limit:
                break
        return out

    def _lines_after(self, cursor: tuple[int, int]) -> Iterator[tuple[int, int, bytes]]:
        segment, offset = cursor
        for number in self._segment_numbers():
            if number < segment:
                continue
            start = offset if number == segment else 0
            with open(self._segment_path(number), "rb") as stream:
                stream.seek(start)
                position = start
                for line in stream:
                    if not line.endswith(b"\n"):
                        break  # still being written (or torn): not a record yet
                    position += len(line)
                    yield number, position, line

    def ack(self, position: tuple[int, int]) -> None:
        """Everything up to ``position`` is on the server: persist the cursor, drop old segments."""
        self._cursor = position
        self._save(self._cursor_path, {"segment": position[0], "offset": position[1]})
        for number in self._segment_numbers():
            if number >= position[0]:
                break
            path = self._segment_path(number)
            with contextlib.suppress(FileNotFoundError):
                self.bytes_used = max(0, self.bytes_used - path.stat().st_size)
                path.unlink()

    def count_pending(self) -> int:
        return sum(1 for _ in self._lines_after(self._cursor))

    def is_drained(self) -> bool:
        return not any(True for _ in self._lines_after(self._cursor))

    def close(self, remove_if_drained: bool = True) -> bool:
        """Close; delete the directory when nothing is left to send. Returns whether it was removed."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        drained = self.is_drained() and not any(self.artifacts_dir.iterdir())
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self._lock.close()
        if drained and remove_if_drained:
            shutil.rmtree(self.directory, ignore_errors=True)
        return drained and remove_if_drained


def _link_or_copy(source, target) -> None:
    # A hard link is instant and immune to the trainer overwriting its checkpoint by replace;
    # across filesystems (or where links are refused) a copy it is.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
