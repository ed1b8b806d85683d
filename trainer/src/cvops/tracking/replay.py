"""Send a spool's records to the server in order, acknowledging each batch once it is stored.

Shared by the background worker (live training) and ``cvops sync`` (a spool carried over from
an air-gapped machine). Consecutive metrics/params/tags records of one run are coalesced into
``log_batch`` requests within MLflow's limits; everything else (run creation, artifacts,
dataset inputs, run end) is a barrier sent on its own, so the server sees the original order.

Exactly once: the cursor advances only after the server answered. A crash between the answer
and the cursor write re-sends that one batch; MLflow's SQL store ignores a metric whose (key,
timestamp, step, value) already exists, and params/tags/artifacts are idempotent writes, so
the replay stores nothing twice. (A run created while offline is the one exception: if the
process dies between ``runs/create`` and recording its id, the next replay creates it again,
leaving an empty duplicate run.)
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlflow.utils.validation import (
    MAX_BATCH_LOG_REQUEST_SIZE,
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from cvops.tracking.spool import Spool
from cvops.tracking.transport import Rejected, Transient, Transport

log = logging.getLogger("cvops")

PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
PARAM_CONFLICT_TAG_PREFIX = "param_conflict."
# Room for the JSON envelope around the entities we count.
_REQUEST_BYTES_BUDGET = int(MAX_BATCH_LOG_REQUEST_SIZE * 0.9)
_BATCHABLE = ("metrics", "params", "tags")


@dataclass
class _Batch:
    run: str | None = None
    metrics: list = field(default_factory=list)
    params: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    nbytes: int = 0
    last_position: tuple[int, int] | None = None
    records: list = field(default_factory=list)

    def fits(self, record: dict, nbytes: int) -> bool:
        if self.run is None:
            return True
        metrics = len(self.metrics) + len(record.get("metrics", ()))
        params = len(self.params) + len(record.get("params", ()))
        tags = len(self.tags) + len(record.get("tags", ()))
        return (
            record["run"] == self.run
            and metrics <= MAX_METRICS_PER_BATCH
            and params <= MAX_PARAMS_TAGS_PER_BATCH
            and tags <= MAX_PARAMS_TAGS_PER_BATCH
            and metrics + params + tags <= MAX_ENTITIES_PER_BATCH
            and self.nbytes + nbytes <= _REQUEST_BYTES_BUDGET
        )

    def add(self, position, record: dict, nbytes: int) -> None:
        self.run = record["run"]
        self.metrics.extend(record.get("metrics", ()))
        self.params.extend(record.get("params", {}).items())
        self.tags.extend(record.get("tags", {}).items())
        self.nbytes += nbytes
        self.last_position = position
        self.records.append(record)


class Replayer:
    """Replays one spool through one transport. Not thread-safe: one caller at a time."""

    def __init__(self, spool: Spool, transport: Transport):
        self.spool = spool
        self.transport = transport
        self.sent_records = 0
        self.rejected_records = 0
        self._artifact_uris: dict[str, str] = {}

    # ----------------------------------------------------------------- run ids
    def run_id(self, key: str) -> str | None:
        """The server's id for a run key (``local:…`` keys exist only until the run is created)."""
        return self.spool.run_ids.get(key) if key.startswith("local:") else key

    def _artifact_uri(self, run_id: str) -> str:
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self.transport.get_run(run_id)["info"]["artifact_uri"]
        return self._artifact_uris[run_id]

    # ----------------------------------------------------------------- main step
    def step(self, limit: int = 5000) -> int:
        """Send up to ``limit`` pending records; return how many were acknowledged.

        Raises :class:`~cvops.tracking.transport.Transient` when the server is away; whatever was
        acknowledged before that stays acknowledged.
        """
        done = 0
        batch = _Batch()
        for position, record in self.spool.pending(limit):
            op = record.get("op")
            if op in _BATCHABLE:
                nbytes = len(json.dumps(record, allow_nan=True))
                if not batch.fits(record, nbytes):
                    done += self._send_batch(batch)
                    batch = _Batch()
                batch.add(position, record, nbytes)
                continue
            done += self._send_batch(batch)
            batch = _Batch()
            self._send_single(record)
            self.spool.ack(position)
            done += 1
        done += self._send_batch(batch)
        self.sent_records += done
        return done

    def _send_batch(self, batch: _Batch) -> int:
        if batch.run is None:
            return 0
        run_id = self.run_id(batch.run)
        try:
            self.transport.log_batch(run_id, batch.metrics, batch.params, batch.tags)
        except Rejected:
            # One bad record must not block the rest: resend them one by one.
            for record in batch.records:
                self._send_single(record)
        self.spool.ack(batch.last_position)
        return len(batch.records)

    # ----------------------------------------------------------------- one record
    def _send_single(self, record: dict) -> None:
        op = record.get("op")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self._reject(record, f"unknown record type {op!r}")
            return
        try:
            handler(record)
        except Rejected as exc:
            self._reject(record, str(exc))

    def _reject(self, record: dict, why: str) -> None:
        self.rejected_records += 1
        log.warning("cvops: the tracking server refused a %s record for run %s (dropped): %s",
                    record.get("op"), record.get("run"), why)

    def _op_metrics(self, record: dict) -> None:
        self.transport.log_batch(self.run_id(record["run"]), metrics=record["metrics"])

    def _op_tags(self, record: dict) -> None:
        self.transport.log_batch(self.run_id(record["run"]), tags=list(record["tags"].items()))

    def _op_params(self, record: dict) -> None:
        run_id = self.run_id(record["run"])
        try:
            self.transport.log_batch(run_id, params=list(record["params"].items()))
            return
        except Rejected:
            pass
        for name, value in record["params"].items():
            try:
                self.transport.log_batch(run_id, params=[(name, value)])
            except Rejected as exc:
                # Typically a resumed run whose param already holds another value: keep the new
                # value visible as a tag instead of losing it or failing the run.
                log.warning("cvops: param %r was not stored (%s); recorded as tag %s%s",
                            name, exc, PARAM_CONFLICT_TAG_PREFIX, name)
                self.transport.log_batch(run_id, tags=[(PARAM_CONFLICT_TAG_PREFIX + name, value)])

    def _op_corrupt(self, record: dict) -> None:
        self._reject(record, "unreadable line in the spool")

    def _op_create_run(self, record: dict) -> None:
        key = record["run"]
        if key in self.spool.run_ids:
            return
        experiment = record.get("experiment")
        experiment_id = record.get("experiment_id") or (
            self.transport.experiment_id(experiment) if experiment else "0")
        tags = dict(record.get("tags", {}))
        if record.get("parent"):
            tags[PARENT_RUN_TAG] = self.run_id(record["parent"])
        info = self.transport.create_run(experiment_id, record["start_ms"], record.get("run_name"), tags)
        self._artifact_uris[info["run_id"]] = info["artifact_uri"]
        self.spool.remember_run_id(key, info["run_id"])
        log.info("cvops: created run %s for the offline run %s", info["run_id"], key)

    def _op_status(self, record: dict) -> None:
        self.transport.update_run(self.run_id(record["run"]), record["status"], record.get("end_ms"))

    def _op_inputs(self, record: dict) -> None:
        self.transport.log_inputs(self.run_id(record["run"]), record["datasets"])

    def _op_artifact(self, record: dict) -> None:
        run_id = self.run_id(record["run"])
        local = self.spool.artifact_location(record["path"])
        if not local.exists():
            raise Rejected(f"{local} no longer exists")
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for file in files:
            relative_dir = file.parent.relative_to(local).as_posix() if local.is_dir() else "."
            parts = [record.get("artifact_path"), None if relative_dir == "." else relative_dir]
            artifact_path = "/".join(p for p in parts if p) or None
            self.transport.upload_artifact(self._artifact_uri(run_id), str(file), artifact_path)
        if record.get("owned"):
            self.spool.release_artifact(local)


@dataclass
class DrainResult:
    sent: int
    remaining: int
    rejected: int
    removed: bool  # the spool was emptied and deleted
    error: str | None = None  # why it stopped early (server unreachable)


def drain_spool(directory: Path, transport: Transport, retries: int = 5,
                progress: Callable[[int, int], None] | None = None) -> DrainResult:
    """Replay a whole spool (a crashed run's, or one carried from an air-gapped machine).

    Retries an unreachable server ``retries`` times with backoff, then stops leaving the rest in
    place. Raises :class:`~cvops.tracking.spool.SpoolLocked` if a live process owns the spool.
    """
    spool = Spool(directory, max_bytes=sys.maxsize)
    total = spool.count_pending()
    replayer = Replayer(spool, transport)
    sent, attempt = 0, 0
    while True:
        try:
            step = replayer.step(limit=2000)
        except Transient as exc:
            attempt += 1
            if attempt > retries:
                spool.close(remove_if_drained=False)
                return DrainResult(sent, total - sent, replayer.rejected_records, False, str(exc))
            time.sleep(min(2**attempt, 30))
            continue
        attempt = 0
        if not step:
            break
        sent += step
        if progress:
            progress(sent, total)
    removed = spool.close(remove_if_drained=True)
    return DrainResult(sent, 0, replayer.rejected_records, removed)
