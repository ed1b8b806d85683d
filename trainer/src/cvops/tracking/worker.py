"""The background worker: the training thread only enqueues; this thread spools and sends.

Every ``flush_interval_s`` (or when asked to flush) the worker moves what the training thread
enqueued into the on-disk spool (one fsync), then replays the spool to the server. When the
server is away it backs off (0.5 s doubling to 5 s) and keeps spooling; nothing is held in
memory beyond one interval's worth of records.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cvops.config import Settings
from cvops.tracking.replay import Replayer, drain_spool
from cvops.tracking.spool import Spool, SpoolLocked, read_meta
from cvops.tracking.transport import Transient, Transport

log = logging.getLogger("cvops")

# Records waiting in memory for the worker. A record is one log_* call (up to 1000 metrics),
# so this bounds memory at a few hundred MB in the worst case while the disk is stuck.
MAX_QUEUED_RECORDS = 100_000
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 5.0


@dataclass
class _FlushRequest:
    done: threading.Event = field(default_factory=threading.Event)
    sent: bool = False
    # Patient: keep retrying (with the outage backoff) until sent or the caller gives up.
    # Impatient: one immediate attempt, then answer.
    patient: bool = True


class Worker:
    """One per process and tracking server; shared by a run and its children."""

    def __init__(self, settings: Settings, transport: Transport | None = None):
        self.settings = settings
        directory = Path(settings.spool_dir) / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.spool = Spool(directory, settings.spool_max_bytes)
        self.transport = transport or Transport(settings.tracking_uri, settings.request_timeout_s)
        self.spool.write_meta({"tracking_uri": settings.tracking_uri})
        self.replayer = Replayer(self.spool, self.transport)
        self._leftovers_checked = False
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._offline_since: float | None = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_START_S
        self._dropped_in_memory = 0
        # Records the disk refused (full), oldest first, written before any newer ones once it has room.
        self._held: list[dict] = []
        self._disk_full_since: float | None = None
        self._artifacts_not_logged = 0
        self._waiting_flushes: list[_FlushRequest] = []
        self._warned_spool_full = False
        self._warned_artifact_not_snapshotted = False
        self._thread = threading.Thread(target=self._loop, name="cvops-tracking-worker", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- training-thread side
    def submit(self, record: dict) -> None:
        """Enqueue one record; never blocks, never raises."""
        # SimpleQueue.put is reentrant, so this is safe from a signal handler too.
        if self._inbox.qsize() >= MAX_QUEUED_RECORDS:
            self._dropped_in_memory += 1
            if self._dropped_in_memory == 1:
                log.warning("cvops: %d records are waiting for the disk spool; dropping new ones",
                            MAX_QUEUED_RECORDS)
            return
        self._inbox.put(record)

    def flush(self, timeout_s: float, patient: bool = True) -> bool:
        """Wait until everything enqueued so far is on the server; False if that took over ``timeout_s``.

        Whatever the answer, the worker writes the records to the disk spool within one flush
        interval. ``patient=False`` makes one attempt instead of retrying through an outage.
        """
        if not self._thread.is_alive():
            return False
        request = _FlushRequest(patient=patient)
        self._inbox.put(request)
        self._wake.set()
        request.done.wait(timeout_s)
        request.done.set()  # tells the worker nobody waits any more
        return request.sent

    @property
    def online(self) -> bool:
        return self._offline_since is None

    def close(self, timeout_s: float) -> bool:
        """Flush (bounded), stop the thread, and remove the spool if everything was sent."""
        # In an outage one quick attempt is enough at exit: a dead server must not cost the full wait.
        sent = self.flush(timeout_s, patient=self.online)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(1.0, min(timeout_s, 5.0)))
        if self._thread.is_alive():
            # Stuck in a request to a hung server: make the last records durable from here; the
            # spool stays for the next replay.
            records, _ = self._drain_inbox()
            self._spool_records(records)
            log.warning("cvops: the tracking server did not answer in time; unsent data is kept in %s. "
                        "Upload it later with: cvops sync %s", self.spool.directory, self.spool.directory)
            return False
        removed = self.spool.close(remove_if_drained=True)
        if self._held:
            log.warning("cvops: %d tracking records were LOST: the spool's disk was still full at exit",
                        len(self._held))
        if self.spool.dropped + self._dropped_in_memory:
            log.warning("cvops: %d tracking records were dropped because the spool was full "
                        "(CVOPS_SPOOL_MAX_BYTES=%d) or too many waited in memory for a full disk",
                        self.spool.dropped + self._dropped_in_memory, self.spool.max_bytes)
        if self._artifacts_not_logged:
            log.warning("cvops: %d artifacts were not logged because the spool's disk was full",
                        self._artifacts_not_logged)
        if not removed:
            log.warning("cvops: some tracking data could not be sent; it is kept in %s. "
                        "Upload it later with: cvops sync %s", self.spool.directory, self.spool.directory)
        return sent and removed

    # ----------------------------------------------------------------- worker thread
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            try:
                self._cycle()
            except Exception:  # tracking must never take the process down
                log.exception("cvops: unexpected error in the tracking worker; will retry")
                time.sleep(self.settings.flush_interval_s)
            if self._stop.is_set():
                self._cycle_final()
                return

    def _cycle_final(self) -> None:
        records, flushes = self._drain_inbox()
        self._spool_records(records)
        for request in flushes + self._waiting_flushes:
            request.done.set()

    def _drain_inbox(self) -> tuple[list[dict], list[_FlushRequest]]:
        records, flushes = [], []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return records, flushes
            if isinstance(item, _FlushRequest):
                flushes.append(item)
            else:
                records.append(item)

    def _spool_records(self, records: list[dict]) -> None:
        for record in records:
            if record.get("op") == "artifact" and "source" in record:
                self._snapshot(record)
        records = self._held + records
        try:
            dropped = self.spool.append(records)
        except OSError as exc:
            self._hold(records, exc)
            return
        if self._disk_full_since is not None:
            log.warning("cvops: the spool's disk has room again after %.0f s; the %d records held in "
                        "memory meanwhile are spooled", time.monotonic() - self._disk_full_since, len(self._held))
            self._disk_full_since = None
        self._held = []
        if dropped and not self._warned_spool_full:
            self._warned_spool_full = True
            log.warning("cvops: the spool %s is full (CVOPS_SPOOL_MAX_BYTES=%d); new tracking data is "
                        "dropped and counted until the server takes some", self.spool.directory,
                        self.spool.max_bytes)

    def _hold(self, records: list[dict], exc: OSError) -> None:
        """Keep what the disk refused in memory (bounded), so that nothing is lost while it is full."""
        room = max(0, MAX_QUEUED_RECORDS - len(self._held))
        kept = records[len(self._held):][:room]
        self._dropped_in_memory += len(records) - len(self._held) - len(kept)
        self._held += kept
        if self._disk_full_since is None:
            self._disk_full_since = time.monotonic()
            log.warning("cvops: cannot write to the spool %s (%s); training continues, tracking records are "
                        "held in memory (up to %d) until the disk has room, then sent", self.spool.directory,
                        exc, MAX_QUEUED_RECORDS)

    def artifact_not_logged(self, artifact_file: str, exc: OSError) -> None:
        """A file the training thread could not even write to the spool (its disk is full)."""
        self._artifacts_not_logged += 1
        log.warning("cvops: artifact %s was NOT logged: it could not be written to the spool (%s)", artifact_file, exc)

    def _snapshot(self, record: dict) -> None:
        source = Path(record.pop("source"))
        move = record.pop("move", False)
        try:
            adopted = self.spool.adopt_artifact(source, move)
        except OSError as exc:
            log.warning("cvops: could not snapshot artifact %s (%s); uploading it from its place", source, exc)
            adopted = None
        if adopted is None and not self._warned_artifact_not_snapshotted:
            self._warned_artifact_not_snapshotted = True
            log.warning("cvops: artifact %s does not fit in the spool; it will be uploaded from its "
                        "original place, so do not delete it before the run ends", source)
        record["path"] = str(adopted.relative_to(self.spool.directory)) if adopted else str(source)
        record["owned"] = adopted is not None

    def _cycle(self) -> None:
        records, flushes = self._drain_inbox()
        self._spool_records(records)
        self._waiting_flushes = [r for r in self._waiting_flushes if not r.done.is_set()]
        retry_due = self._offline_since is None or time.monotonic() >= self._retry_at
        if not (retry_due or flushes):
            return
        sent_all = self._replay() and not self._held
        for request in flushes + self._waiting_flushes:
            if sent_all or not request.patient:
                request.sent = sent_all
                request.done.set()
            elif request not in self._waiting_flushes:
                self._waiting_flushes.append(request)
        if sent_all:
            self._waiting_flushes = []

    def _replay(self) -> bool:
        try:
            while self.replayer.step():
                if self._stop.is_set() and not self._inbox.empty():
                    break
        except Transient as exc:
            self._went_offline(exc)
            return False
        if self._offline_since is not None:
            log.warning("cvops: the tracking server is back after %.0f s; the spooled records were sent",
                        time.monotonic() - self._offline_since)
            self._offline_since = None
            self._backoff_s = _BACKOFF_START_S
        if not self._leftovers_checked:
            self._leftovers_checked = True
            threading.Thread(target=self._send_leftover_spools, name="cvops-leftover-spools", daemon=True).start()
        return True

    def _send_leftover_spools(self) -> None:
        """Replay spools that earlier processes (crashed, killed, or offline at exit) left behind
        for this server, e.g. in a container restarted on the same volume. A spool whose process
        still runs is locked and skipped."""
        for directory in sorted(Path(self.settings.spool_dir).iterdir()):
            if directory == self.spool.directory or not (directory / "segments").is_dir():
                continue
            if read_meta(directory).get("tracking_uri") != self.settings.tracking_uri:
                continue
            try:
                result = drain_spool(directory, Transport(self.settings.tracking_uri, self.settings.request_timeout_s),
                                     retries=0)
            except SpoolLocked:
                continue
            except Exception:  # one damaged leftover must not stop the others or the process
                log.exception("cvops: could not replay the leftover spool %s", directory)
                continue
            if result.sent:
                log.warning("cvops: sent %d tracking records left in %s by an earlier process",
                            result.sent, directory)

    def _went_offline(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._offline_since is None:
            self._offline_since = now
            log.warning("cvops: the tracking server is unreachable (%s); training continues and "
                        "tracking data is kept in %s until it returns", exc, self.spool.directory)
        else:
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
        self._retry_at = now + self._backoff_s
