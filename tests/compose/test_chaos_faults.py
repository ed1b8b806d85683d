"""The chaos tier's six faults on the compose stack itself, injected through Docker as an operator
meets them (docs/reliability.md, "Through the compose stack"): PostgreSQL's container stopped and
started, the S3 container restarted, the MLflow container SIGKILLed and brought back by its restart
policy, the trainers' spool disk full, every server session terminated inside the PostgreSQL
container under the UI's load, and `docker compose restart` of the whole stack, last.

The stack is the one with SeaweedFS as its S3 store (`seaweedfs_stack`): it checks signatures and
keeps objects across a restart, which the default file's in-memory stand-in does not. Trainers on
this host (tests/chaos/trainer.py, the cvops SDK) log to the stack's published port while a
checkpoint of theirs is being uploaded and another artifact is downloaded again and again; every
point a trainer handed to the SDK must be stored once, in order, every run FINISHED, the
checkpoint stored whole and no download answered with other content, and the operator's view
(/ready, /health, Prometheus, the server's log) must say what happened. The harness's tier
(tests/chaos/test_faults.py) injects the same faults into processes.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.chaos.fleet import (
    ArtifactsInFlight,
    OperatorView,
    UiLoad,
    assert_every_point_stored_once_in_order,
    report,
    seconds_until_writes_succeed,
    spool_disk_full_then_freed,
)
from tests.harness.fixtures import REPO_ROOT

pytestmark = [pytest.mark.compose, pytest.mark.chaos, pytest.mark.timeout(900)]

DATABASE_OUTAGE_S = 20
SESSION_KILLS, SESSION_KILL_EVERY_S = 5, 2.0
CHECKPOINT_MB = int(os.environ.get("CHAOS_ARTIFACT_MB", "256"))  # long enough through the server to be in flight
RESTART_TRAINING_S = 40

# Run inside the server container (the S3 port is not published): waits until the checkpoint's
# multipart upload is in flight in the bucket, then prints its key.
AWAIT_THE_CHECKPOINT_S_UPLOAD = """
import boto3, os, sys, time
client = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=open("/run/secrets/s3_access_key").read().strip(),
                      aws_secret_access_key=open("/run/secrets/s3_secret_key").read().strip())
bucket = os.environ["MLFLOW_ARTIFACTS_DESTINATION"][len("s3://"):].split("/")[0]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    keys = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    if any(key.endswith(sys.argv[1]) for key in keys):
        print(keys)
        break
    time.sleep(0.05)
"""


@pytest.fixture
def stack(seaweedfs_stack, monkeypatch):
    """The SeaweedFS stack, with its admin login for MLflow's client."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", seaweedfs_stack.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", seaweedfs_stack.admin_password)
    return seaweedfs_stack


def server_log(stack) -> str:
    return stack.compose("logs", "--no-color", "mlflow", check=False).stdout


def probe_run(stack) -> str:
    client = MlflowClient(stack.url)
    return client.create_run(client.create_experiment(f"chaos-probe-{time.time_ns()}")).info.run_id


def mlflow_container(stack) -> str:
    return stack.compose("ps", "-q", "mlflow").stdout.split()[0]


def restart_count(stack) -> int:
    return int(stack.run("docker", "inspect", "--format", "{{.RestartCount}}", mlflow_container(stack)).stdout)


def await_upload_seen_by_the_server(stack):
    def await_upload(key: str) -> None:
        uploading = stack.compose("exec", "-T", "mlflow", "python3", "-c", AWAIT_THE_CHECKPOINT_S_UPLOAD, key)
        assert uploading.stdout.strip(), "the checkpoint's upload was never seen in flight"
    return await_upload


@pytest.fixture
def in_flight(stack, tmp_path, monkeypatch):
    return ArtifactsInFlight(stack, tmp_path, monkeypatch, CHECKPOINT_MB, await_upload_seen_by_the_server(stack))


def test_postgres_container_stopped_then_started(stack, in_flight):
    probe = probe_run(stack)
    trainers = in_flight.start_trainers()
    with OperatorView(stack, lambda: server_log(stack)) as operator, in_flight.downloads:
        stack.compose("stop", "postgres")
        time.sleep(DATABASE_OUTAGE_S)
        stack.compose("start", "postgres")
        recovered_s = seconds_until_writes_succeed(stack, probe)
    assert operator.failing_checks() >= {"tracking_database", "auth_database"}
    assert set(operator.health) == {200}  # the container's liveness check: no restart wanted
    assert operator.answered(503) > 0 and operator.answered(500) == 0, operator.log[-6000:]
    operator.assert_log_has_no_traceback()
    stack.wait_healthy()
    points = assert_every_point_stored_once_in_order(stack, trainers)
    report(f"compose: PostgreSQL's container stopped {DATABASE_OUTAGE_S} s", points, trainers,
           writes_back_after_start_s=f"{recovered_s:.1f}", **in_flight.assert_whole(trainers), **operator.figures())


def test_s3_container_restarted_mid_upload(stack, in_flight):
    trainers = in_flight.start_trainers()
    with OperatorView(stack, lambda: server_log(stack)) as operator, in_flight.downloads:
        started = time.monotonic()
        stack.compose("restart", "minio")
        stack.wait_healthy()
        healthy_s = time.monotonic() - started
    assert "artifact_store" in operator.failing_checks()
    assert set(operator.health) == {200}
    assert operator.answered(500) == 0, operator.log[-6000:]  # the server's own account of a 500
    operator.assert_log_has_no_traceback()
    points = assert_every_point_stored_once_in_order(stack, trainers)
    report("compose: the S3 (SeaweedFS) container restarted mid-upload", points, trainers,
           healthy_again_after_restart_began_s=f"{healthy_s:.1f}", **in_flight.assert_whole(trainers),
           **operator.figures())


@pytest.mark.skipif(os.geteuid() != 0, reason="SIGKILL from outside Docker needs root: the container's "
                                                "processes are root's, and `docker kill` is an operator's stop")
def test_mlflow_container_sigkilled_and_restarted_by_compose(stack, in_flight):
    probe = probe_run(stack)
    restarts = restart_count(stack)
    trainers = in_flight.start_trainers()
    with OperatorView(stack, lambda: server_log(stack)) as operator, in_flight.downloads:
        killed_at = time.monotonic()
        # As the kernel's OOM killer ends it, from outside Docker: `docker kill` counts as an
        # operator's stop, after which `unless-stopped` leaves the container down.
        os.kill(int(stack.run("docker", "inspect", "--format", "{{.State.Pid}}", mlflow_container(stack)).stdout),
                signal.SIGKILL)
        seconds_until_writes_succeed(stack, probe)
        recovered_s = time.monotonic() - killed_at
    assert restart_count(stack) == restarts + 1  # `restart: unless-stopped` brought it back
    assert 0 in operator.health and operator.health[-1] == 200
    operator.assert_log_has_no_traceback()
    stack.wait_healthy()
    points = assert_every_point_stored_once_in_order(stack, trainers)
    report("compose: the MLflow container SIGKILLed, restarted by its restart policy", points, trainers,
           writes_back_after_kill_s=f"{recovered_s:.1f}", **in_flight.assert_whole(trainers), **operator.figures())


def test_spool_disk_full_then_freed(stack, tmp_path):
    spool_disk_full_then_freed(stack, tmp_path, label="compose: ", read_log=lambda: server_log(stack))


def terminate_server_sessions(stack) -> int:
    """Every session of the server's databases ended from inside the PostgreSQL container."""
    databases = ", ".join(f"'{stack.settings[name]}'" for name in ("POSTGRES_DB", "POSTGRES_AUTH_DB"))
    answer = stack.compose("exec", "-T", "postgres", "psql", "-U", stack.settings["POSTGRES_USER"], "-tA",
                           "-c", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 f"WHERE datname IN ({databases}) AND pid <> pg_backend_pid()")
    return int(answer.stdout.strip())


def test_every_server_session_terminated_in_the_container_under_ui_load(stack, in_flight):
    trainers = in_flight.start_trainers(seconds=25)
    experiment_id = MlflowClient(stack.url).get_experiment_by_name("chaos").experiment_id
    run_ids = [t.report.with_suffix(".started").read_text() for t in trainers]
    terminated = 0
    with UiLoad(stack, experiment_id, run_ids) as ui:
        time.sleep(2)
        with OperatorView(stack, lambda: server_log(stack)) as operator, in_flight.downloads:
            for _ in range(SESSION_KILLS):
                terminated += terminate_server_sessions(stack)
                time.sleep(SESSION_KILL_EVERY_S)
    assert terminated > 0
    assert [(name, status, body[:300]) for name, status, body in ui.answers if status != 503] == []
    for name, call in ui.calls_in_turn(0):
        assert call().status_code == 200, name
    assert set(operator.health) == {200}
    assert operator.answered(500) == 0, operator.log[-6000:]  # the server's own account of a 500
    operator.assert_log_has_no_traceback()
    points = assert_every_point_stored_once_in_order(stack, trainers)
    report(f"compose: every server session terminated {SESSION_KILLS} times, {SESSION_KILL_EVERY_S:.0f} s apart",
           points, trainers, sessions_terminated=terminated, ui_calls=ui.calls, ui_503=len(ui.answers),
           **in_flight.assert_whole(trainers), **operator.figures())


def sync_what_the_trainers_kept(stack, tmp_path, trainers) -> int:
    """A trainer that ended while the stack was still down keeps its records on disk and names
    `cvops sync` (docs/sdk.md): what its user then runs. Returns how many had to."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "trainer" / "src"), "MLFLOW_TRACKING_URI": stack.url,
           "MLFLOW_TRACKING_USERNAME": stack.admin_username, "MLFLOW_TRACKING_PASSWORD": stack.admin_password}
    synced = 0
    for index, trainer in enumerate(trainers):
        trainer.result()
        if "cvops sync" in trainer.log.read_text():
            subprocess.run([sys.executable, "-m", "cvops", "sync", str(tmp_path / f"spool-{index}")],
                           env=env, check=True, timeout=300)
            synced += 1
    return synced


def test_whole_stack_restarted_during_training(stack, in_flight, tmp_path):
    probe = probe_run(stack)
    trainers = in_flight.start_trainers(seconds=RESTART_TRAINING_S)
    with in_flight.downloads:
        started = time.monotonic()
        stack.compose("restart", timeout=300)
        restart_s = time.monotonic() - started
        stack.wait_healthy()
        seconds_until_writes_succeed(stack, probe)
        recovered_s = time.monotonic() - started
    synced = sync_what_the_trainers_kept(stack, tmp_path, trainers)
    points = assert_every_point_stored_once_in_order(stack, trainers)
    report("compose: `docker compose restart` of the whole stack", points, trainers,
           restart_command_s=f"{restart_s:.1f}", writes_back_after_restart_began_s=f"{recovered_s:.1f}",
           trainers_that_needed_cvops_sync=synced, **in_flight.assert_whole(trainers))
