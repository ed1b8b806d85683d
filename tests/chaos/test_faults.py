"""Faults of a real deployment while N trainers log through the cvops SDK (docs/reliability.md, "Faults").

The harness's own PostgreSQL, SeaweedFS (an S3 server that keeps data across a restart and checks
signatures) and the MLflow server as its container starts it. Each test starts N trainer processes
(tests/chaos/trainer.py), injects one fault while they log, and then compares every metric point a
trainer handed to the SDK with what the server stored: none lost, none duplicated, order kept, each
run FINISHED. Each prints a ``[chaos]`` line with the figures docs/reliability.md records.

    pytest -m chaos -s tests/chaos          # CHAOS_* below size it; bench/chaos_soak.py runs N = 32
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from tests.harness.fixtures import REPO_ROOT, TrackingServer
from tests.harness.small_disk import fill, small_disk

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

TRAINERS = int(os.environ.get("CHAOS_TRAINERS", "4"))
ARTIFACT_MB = int(os.environ.get("CHAOS_ARTIFACT_MB", "128"))
# Long enough that every fault starts and ends while the trainers log.
TRAINING_S = float(os.environ.get("CHAOS_TRAINING_S", "45"))
DATABASE_OUTAGE_S = float(os.environ.get("CHAOS_DATABASE_OUTAGE_S", "20"))
TRAINER_TIMEOUT_S = TRAINING_S + 300
BACK_AFTER = re.compile(r"back after (\d+) s")


@dataclass
class Trainer:
    report: Path
    process: subprocess.Popen
    log: Path

    @property
    def started(self) -> bool:
        return self.report.with_suffix(".started").exists()

    def result(self) -> dict:
        assert self.process.wait(TRAINER_TIMEOUT_S) == 0, self.log.read_text()[-4000:]
        return json.loads(self.report.read_text())

    def outages_seen_s(self) -> list[int]:
        """The outage lengths the SDK reported ("the tracking server is back after N s")."""
        return [int(s) for s in BACK_AFTER.findall(self.log.read_text())]


def start_trainers(server: TrackingServer, tmp_path: Path, artifact: Path | None = None, *,
                   seconds: float = TRAINING_S, spool_root: Path | None = None,
                   trainer_args: tuple[str, ...] = ()) -> list[Trainer]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CVOPS_", "AWS_"))},
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "trainer" / "src")]),
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": server.admin_username,
        "MLFLOW_TRACKING_PASSWORD": server.admin_password,
        "CVOPS_CACHE_DIR": str(tmp_path / "cache"),
        "CVOPS_FLUSH_INTERVAL_S": "0.5",
        "CVOPS_REQUEST_TIMEOUT_S": "5",
        "CVOPS_EXIT_FLUSH_TIMEOUT_S": "120",  # a run ending during an outage waits for the server
        "CVOPS_SYSTEM_METRICS": "0",
    }
    trainers = []
    for index in range(TRAINERS):
        report = tmp_path / f"trainer-{index}.json"
        log = tmp_path / f"trainer-{index}.log"
        command = [sys.executable, "-m", "tests.chaos.trainer", str(report), "--seconds", str(seconds), *trainer_args]
        if artifact and index == 0:
            command += ["--artifact", str(artifact)]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       env={**env, "CVOPS_SPOOL_DIR": str((spool_root or tmp_path) / f"spool-{index}")})
        trainers.append(Trainer(report, process, log))
    wait_for(lambda: all(t.started for t in trainers), 60 + 5 * TRAINERS, "trainers' runs on the server")
    return trainers


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def seconds_until_writes_succeed(server: TrackingServer, run_id: str) -> float:
    """From now until the API stores a metric again (the client's view of recovery)."""
    def write_succeeds() -> bool:
        try:
            return requests.post(f"{server.url}/api/2.0/mlflow/runs/log-metric", auth=server.admin_auth,
                                 json={"run_id": run_id, "key": "probe", "value": 1, "step": 0,
                                       "timestamp": int(time.time() * 1000)}, timeout=5).status_code == 200
        except requests.RequestException:
            return False
    return wait_for(write_succeeds, 180, "the server storing metrics again")


def assert_every_point_stored_once_in_order(server: TrackingServer, trainers: list[Trainer]) -> int:
    client = MlflowClient(server.url)
    total = 0
    for trainer in trainers:
        result = trainer.result()
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED", (trainer.report, run.info.status)
        sent = [tuple(point) for point in result["sent"]]
        stored = [(m.step, m.value, m.timestamp) for m in client.get_metric_history(result["run_id"], "loss")]
        assert len(stored) == len(sent), f"{trainer.report.name}: {len(sent)} sent, {len(stored)} stored"
        assert stored == sent  # none lost, none duplicated, same order, values and times
        assert len(client.get_metric_history(result["run_id"], "lr")) == len(sent)
        total += len(sent)
    return total


def probe_run(server: TrackingServer) -> str:
    return server.create_run(f"chaos-probe-{time.time_ns()}")[1]


@pytest.fixture
def server(tracking_server_factory, monkeypatch) -> TrackingServer:
    """A private server (the faults must not touch the session's), its admin login for MlflowClient."""
    server = tracking_server_factory()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    return server


def report(fault: str, points: int, trainers: list[Trainer], **figures) -> None:
    seen = [s for t in trainers for s in t.outages_seen_s()]
    extra = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[chaos] {fault}: {len(trainers)} trainers, {points} points sent and stored once in order, "
          f"0 lost; runs FINISHED; SDK saw outages of {seen} s; {extra}")


def test_postgres_stopped_then_started(server, postgres, tmp_path):
    probe = probe_run(server)
    trainers = start_trainers(server, tmp_path)
    time.sleep(3)
    postgres.stop()
    time.sleep(DATABASE_OUTAGE_S)
    postgres.start()
    recovered_s = seconds_until_writes_succeed(server, probe)
    points = assert_every_point_stored_once_in_order(server, trainers)
    report(f"PostgreSQL stopped {DATABASE_OUTAGE_S:.0f} s", points, trainers, writes_back_after_start_s=f"{recovered_s:.1f}")


def test_mlflow_server_sigkilled_and_restarted(server, tmp_path):
    probe = probe_run(server)
    trainers = start_trainers(server, tmp_path)
    time.sleep(3)
    killed_at = time.monotonic()
    server.kill()
    startup_s = server.start()  # what compose's restart policy does, at once
    seconds_until_writes_succeed(server, probe)
    recovered_s = time.monotonic() - killed_at
    points = assert_every_point_stored_once_in_order(server, trainers)
    report("MLflow server SIGKILLed and restarted", points, trainers,
           server_startup_s=f"{startup_s:.1f}", writes_back_after_kill_s=f"{recovered_s:.1f}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_s3_restarted_mid_upload(server, s3, tmp_path):
    artifact = tmp_path / "model_final.pth"
    with open(artifact, "wb") as f:
        for _ in range(ARTIFACT_MB):
            f.write(os.urandom(1 << 20))
    prefix = server.artifacts_destination.split("/", 3)[3]
    trainers = start_trainers(server, tmp_path, artifact=artifact)

    def upload_in_flight() -> bool:
        uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix).get("Uploads", [])
        return any(u["Key"].endswith(f"checkpoints/{artifact.name}") for u in uploads)

    wait_for(upload_in_flight, 60, "the artifact's multipart upload to S3")
    restart_s = s3.restart()
    points = assert_every_point_stored_once_in_order(server, trainers)

    run_id = trainers[0].result()["run_id"]
    client = MlflowClient(server.url)
    listed = {f.path: f.file_size for f in client.list_artifacts(run_id, "checkpoints")}
    assert listed == {f"checkpoints/{artifact.name}": artifact.stat().st_size}
    downloaded = Path(client.download_artifacts(run_id, f"checkpoints/{artifact.name}", str(tmp_path / "dl")))
    assert sha256(downloaded) == sha256(artifact)
    leftover = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix).get("Uploads", [])
    report(f"S3 restarted mid-upload of {ARTIFACT_MB} MiB", points, trainers,
           s3_restart_s=f"{restart_s:.1f}", artifact="complete, SHA-256 equal",
           abandoned_multipart_uploads=len(leftover))


SPOOL_DISK_MB = 16
DISK_FULL_S = float(os.environ.get("CHAOS_DISK_FULL_S", "8"))


@pytest.fixture
def spool_disk(tmp_path):
    with small_disk(tmp_path / "spool-disk", SPOOL_DISK_MB) as disk:
        yield disk


def test_spool_disk_full_then_freed(server, spool_disk, tmp_path):
    trainers = start_trainers(server, tmp_path, seconds=TRAINING_S / 2, spool_root=spool_disk,
                              trainer_args=("--notes-every", "20"))
    time.sleep(3)
    filler = fill(spool_disk)
    time.sleep(DISK_FULL_S)
    filler.unlink()
    points = assert_every_point_stored_once_in_order(server, trainers)

    client = MlflowClient(server.url)
    notes_lost = 0
    for trainer in trainers:
        result, log = trainer.result(), trainer.log.read_text()
        assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]
        assert "cannot write to the spool" in log and "has room again" in log, log[-4000:]
        # log_text while the disk was full: training went on; each such file is named as not logged
        # and counted at the end, and every other one arrived.
        stored = {f.path for f in client.list_artifacts(result["run_id"], "notes")}
        not_logged = set(re.findall(r"artifact (notes/\S+) was NOT logged", log))
        assert stored | not_logged == set(result["notes"]) and not stored & not_logged
        if not_logged:
            assert f"{len(not_logged)} artifacts were not logged because the spool's disk was full" in log
        notes_lost += len(not_logged)
    report(f"spool's disk ({SPOOL_DISK_MB} MiB tmpfs) full for {DISK_FULL_S:.0f} s", points, trainers,
           text_artifacts_not_logged_and_reported=notes_lost)

