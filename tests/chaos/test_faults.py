"""Faults of a real deployment while N trainers log through the cvops SDK (docs/reliability.md, "Faults").

The harness's own PostgreSQL, SeaweedFS (an S3 server that keeps data across a restart and checks
signatures) and the MLflow server as its container starts it. Each test starts N trainer processes
(tests/chaos/trainer.py), injects one fault while they log, and then compares every metric point a
trainer handed to the SDK with what the server stored: none lost, none duplicated, order kept, each
run FINISHED. While the fault lasts, an OperatorView polls /ready and /health and reads Prometheus'
request counts and the server log, and the test asserts what an operator would see there. Each
prints a ``[chaos]`` line with the figures docs/reliability.md records.

    pytest -m chaos -s tests/chaos          # CHAOS_* below size it; bench/chaos_soak.py runs N = 32
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest
import requests
from mlflow import MlflowClient

from tests.chaos.fleet import (
    TRAINING_S,
    ArtifactsInFlight,
    OperatorView,
    UiLoad,
    assert_every_point_stored_once_in_order,
    report,
    seconds_until_writes_succeed,
    spool_disk_full_then_freed,
    start_trainers,
    wait_for,
)
from tests.harness.fixtures import TrackingServer

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ARTIFACT_MB = int(os.environ.get("CHAOS_ARTIFACT_MB", "128"))
DATABASE_OUTAGE_S = float(os.environ.get("CHAOS_DATABASE_OUTAGE_S", "20"))


def probe_run(server: TrackingServer) -> str:
    return server.create_run(f"chaos-probe-{time.time_ns()}")[1]


@pytest.fixture
def server(tracking_server_factory, monkeypatch) -> TrackingServer:
    """A private server (the faults must not touch the session's), its admin login for MlflowClient."""
    server = tracking_server_factory()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    return server


def multipart_uploads(server: TrackingServer, s3) -> list[dict]:
    prefix = server.artifacts_destination.split("/", 3)[3]
    return s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix).get("Uploads", [])


@pytest.fixture
def in_flight(server, s3, tmp_path, monkeypatch) -> ArtifactsInFlight:
    def await_upload(key: str) -> None:
        wait_for(lambda: any(u["Key"].endswith(key) for u in multipart_uploads(server, s3)), 60,
                 "the checkpoint's multipart upload to S3")
    return ArtifactsInFlight(server, tmp_path, monkeypatch, ARTIFACT_MB, await_upload)


def test_postgres_stopped_then_started(server, postgres, in_flight):
    """With a checkpoint's upload and another artifact's downloads in flight, as in the soak's 60 s
    outage with a 1 GiB checkpoint."""
    probe = probe_run(server)
    trainers = in_flight.start_trainers()
    with OperatorView(server) as operator, in_flight.downloads:
        postgres.stop()
        time.sleep(DATABASE_OUTAGE_S)
        postgres.start()
        recovered_s = seconds_until_writes_succeed(server, probe)
    # /ready names both databases, /health stays up (no restart wanted), Prometheus counts the 503s.
    assert operator.failing_checks() == {"tracking_database", "auth_database"}
    assert set(operator.health) == {200}
    assert operator.answered(503) > 0 and operator.answered(500) == 0
    operator.assert_log_has_no_traceback()
    assert requests.get(f"{server.url}/ready", timeout=10).status_code == 200
    points = assert_every_point_stored_once_in_order(server, trainers)
    report(f"PostgreSQL stopped {DATABASE_OUTAGE_S:.0f} s", points, trainers,
           writes_back_after_start_s=f"{recovered_s:.1f}", **in_flight.assert_whole(trainers), **operator.figures())


def test_mlflow_server_sigkilled_and_restarted(server, tmp_path):
    probe = probe_run(server)
    trainers = start_trainers(server, tmp_path)
    time.sleep(3)
    with OperatorView(server) as operator:
        killed_at = time.monotonic()
        server.kill()
        startup_s = server.start()  # what compose's restart policy does, at once
        seconds_until_writes_succeed(server, probe)
        recovered_s = time.monotonic() - killed_at
    # /health fails while no process answers (what makes compose or Kubernetes restart it), then both probes pass.
    assert 0 in operator.health and operator.health[-1] == 200
    assert requests.get(f"{server.url}/ready", timeout=10).status_code == 200
    operator.assert_log_has_no_traceback()
    points = assert_every_point_stored_once_in_order(server, trainers)
    report("MLflow server SIGKILLed and restarted", points, trainers,
           server_startup_s=f"{startup_s:.1f}", writes_back_after_kill_s=f"{recovered_s:.1f}", **operator.figures())


def test_s3_restarted_mid_upload(server, s3, in_flight):
    trainers = in_flight.start_trainers()
    with OperatorView(server) as operator, in_flight.downloads:
        restart_s = s3.restart()
    assert operator.failing_checks() == {"artifact_store"}
    assert set(operator.health) == {200}
    assert operator.answered(500) == 0, (Counter(in_flight.downloads.outcomes), operator.log[-6000:])
    operator.assert_log_has_no_traceback()
    points = assert_every_point_stored_once_in_order(server, trainers)
    artifacts = in_flight.assert_whole(trainers)
    leftover = multipart_uploads(server, s3)
    report(f"S3 restarted mid-upload of {ARTIFACT_MB} MiB", points, trainers, s3_restart_s=f"{restart_s:.1f}",
           abandoned_multipart_uploads=len(leftover), **artifacts, **operator.figures())


def test_spool_disk_full_then_freed(server, tmp_path):
    spool_disk_full_then_freed(server, tmp_path)


SESSION_KILL_EVERY_S = 2.0
SESSION_KILLS = 5


def terminate_server_sessions(postgres, server: TrackingServer) -> int:
    """What a failover or an impatient DBA does: end every session the server holds, in both its databases."""
    with postgres.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname IN (%s, %s) AND pid <> pg_backend_pid()", (server.backend_db, server.auth_db))
        return cursor.fetchone()[0]


def test_every_server_session_terminated_under_ui_load(server, postgres, tmp_path):
    trainers = start_trainers(server, tmp_path, seconds=TRAINING_S / 2)
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name("chaos").experiment_id
    run_ids = [t.report.with_suffix(".started").read_text() for t in trainers]
    killed = 0
    with UiLoad(server, experiment_id, run_ids) as ui:
        time.sleep(2)
        with OperatorView(server) as operator:
            for _ in range(SESSION_KILLS):
                killed += terminate_server_sessions(postgres, server)
                time.sleep(SESSION_KILL_EVERY_S)
    # Only a clean 503 (retry later), never a 500: the UI shows "temporarily unavailable", not a stack trace.
    assert [(name, status, body[:300]) for name, status, body in ui.answers if status != 503] == []
    assert {json.loads(body)["error_code"] for _, _, body in ui.answers} <= {"TEMPORARILY_UNAVAILABLE"}
    for name, call in ui.calls_in_turn(0):
        assert call().status_code == 200, name  # recovered at once: the pool replaced its dead connections
    # The server process is fine (/health), Prometheus counts each 503 (the UI's and the trainers'),
    # and the log names each failure in a line, without a traceback.
    assert set(operator.health) == {200}
    assert operator.answered(503) >= len(ui.answers) and operator.answered(500) == 0
    operator.assert_log_has_no_traceback()
    assert operator.log.count("database error, the request is answered 503") >= len(ui.answers), operator.log
    points = assert_every_point_stored_once_in_order(server, trainers)
    report(f"every server session terminated {SESSION_KILLS} times, {SESSION_KILL_EVERY_S:.0f} s apart", points,
           trainers, sessions_terminated=killed, ui_calls=ui.calls, ui_503=len(ui.answers), **operator.figures())
