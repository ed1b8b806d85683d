"""The chaos tier's faults on the compose stack itself: PostgreSQL's container stopped and started,
the MLflow container SIGKILLed and restarted by compose's restart policy, every server session
terminated inside the PostgreSQL container under the UI's load, and `docker compose restart` of the
whole stack, last (docs/reliability.md, "Faults").

The harness's tier (tests/chaos/test_faults.py) injects the same faults into processes; here they
go through Docker, as an operator meets them: a `docker compose stop`, an OOM kill, a failover.
Trainers on this host (tests/chaos/trainer.py, the cvops SDK) log to the stack's published port;
every point a trainer handed to the SDK must be stored once, in order, and every run FINISHED,
and the operator's view (/ready, /health, Prometheus, the server's log) must say what happened.
The spool's disk filling up is the trainer's own disk, the same with either stack; it runs in the
harness's tier only. The S3 stand-in keeps objects in memory, so the trainers log metrics only
(tests/compose/test_seaweedfs.py runs the stack on a store that keeps them).
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.chaos.fleet import (
    OperatorView,
    UiLoad,
    assert_every_point_stored_once_in_order,
    report,
    seconds_until_writes_succeed,
    start_trainers,
)
from tests.harness.fixtures import REPO_ROOT

pytestmark = [pytest.mark.compose, pytest.mark.chaos, pytest.mark.timeout(900)]

DATABASE_OUTAGE_S = 20
SESSION_KILLS, SESSION_KILL_EVERY_S = 5, 2.0


def server_log(stack) -> str:
    return stack.compose("logs", "--no-color", "mlflow", check=False).stdout


def probe_run(mlflow_client) -> str:
    return mlflow_client.create_run(mlflow_client.create_experiment(f"chaos-probe-{time.time_ns()}")).info.run_id


def mlflow_container(stack) -> str:
    return stack.compose("ps", "-q", "mlflow").stdout.split()[0]


def restart_count(stack) -> int:
    return int(stack.run("docker", "inspect", "--format", "{{.RestartCount}}", mlflow_container(stack)).stdout)


def test_postgres_container_stopped_then_started(compose_stack, mlflow_client, tmp_path):
    probe = probe_run(mlflow_client)
    trainers = start_trainers(compose_stack, tmp_path)
    time.sleep(3)
    with OperatorView(compose_stack, lambda: server_log(compose_stack)) as operator:
        compose_stack.compose("stop", "postgres")
        time.sleep(DATABASE_OUTAGE_S)
        compose_stack.compose("start", "postgres")
        recovered_s = seconds_until_writes_succeed(compose_stack, probe)
    assert operator.failing_checks() >= {"tracking_database", "auth_database"}
    assert set(operator.health) == {200}  # the container's liveness check: no restart wanted
    assert operator.answered(503) > 0 and operator.answered(500) == 0
    operator.assert_log_has_no_traceback()
    compose_stack.wait_healthy()
    points = assert_every_point_stored_once_in_order(compose_stack, trainers)
    report(f"compose: PostgreSQL's container stopped {DATABASE_OUTAGE_S} s", points, trainers,
           writes_back_after_start_s=f"{recovered_s:.1f}", **operator.figures())


@pytest.mark.skipif(os.geteuid() != 0, reason="SIGKILL from outside Docker needs root: the container's "
                                                "processes are root's, and `docker kill` is an operator's stop")
def test_mlflow_container_sigkilled_and_restarted_by_compose(compose_stack, mlflow_client, tmp_path):
    probe = probe_run(mlflow_client)
    restarts = restart_count(compose_stack)
    trainers = start_trainers(compose_stack, tmp_path)
    time.sleep(3)
    with OperatorView(compose_stack, lambda: server_log(compose_stack)) as operator:
        killed_at = time.monotonic()
        # As the kernel's OOM killer ends it, from outside Docker: `docker kill` counts as an
        # operator's stop, after which `unless-stopped` leaves the container down.
        os.kill(int(compose_stack.run("docker", "inspect", "--format", "{{.State.Pid}}",
                                      mlflow_container(compose_stack)).stdout), signal.SIGKILL)
        seconds_until_writes_succeed(compose_stack, probe)
        recovered_s = time.monotonic() - killed_at
    assert restart_count(compose_stack) == restarts + 1  # `restart: unless-stopped` brought it back
    assert 0 in operator.health and operator.health[-1] == 200
    operator.assert_log_has_no_traceback()
    compose_stack.wait_healthy()
    points = assert_every_point_stored_once_in_order(compose_stack, trainers)
    report("compose: the MLflow container SIGKILLed, restarted by its restart policy", points, trainers,
           writes_back_after_kill_s=f"{recovered_s:.1f}", **operator.figures())


def terminate_server_sessions(stack) -> int:
    """Every session of the server's databases ended from inside the PostgreSQL container."""
    databases = ", ".join(f"'{stack.settings[name]}'" for name in ("POSTGRES_DB", "POSTGRES_AUTH_DB"))
    answer = stack.compose("exec", "-T", "postgres", "psql", "-U", stack.settings["POSTGRES_USER"], "-tA",
                           "-c", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 f"WHERE datname IN ({databases}) AND pid <> pg_backend_pid()")
    return int(answer.stdout.strip())


def test_every_server_session_terminated_in_the_container_under_ui_load(compose_stack, mlflow_client, tmp_path):
    trainers = start_trainers(compose_stack, tmp_path, seconds=25)
    experiment_id = mlflow_client.get_experiment_by_name("chaos").experiment_id
    run_ids = [t.report.with_suffix(".started").read_text() for t in trainers]
    terminated = 0
    with UiLoad(compose_stack, experiment_id, run_ids) as ui:
        time.sleep(2)
        with OperatorView(compose_stack, lambda: server_log(compose_stack)) as operator:
            for _ in range(SESSION_KILLS):
                terminated += terminate_server_sessions(compose_stack)
                time.sleep(SESSION_KILL_EVERY_S)
    assert terminated > 0
    assert [(name, status, body[:300]) for name, status, body in ui.answers if status != 503] == []
    for name, call in ui.calls_in_turn(0):
        assert call().status_code == 200, name
    assert set(operator.health) == {200}
    assert operator.answered(500) == 0
    operator.assert_log_has_no_traceback()
    points = assert_every_point_stored_once_in_order(compose_stack, trainers)
    report(f"compose: every server session terminated {SESSION_KILLS} times, {SESSION_KILL_EVERY_S:.0f} s apart",
           points, trainers, sessions_terminated=terminated, ui_calls=ui.calls, ui_503=len(ui.answers),
           **operator.figures())


RESTART_TRAINING_S = 40


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


def test_whole_stack_restarted_during_training(compose_stack, mlflow_client, tmp_path):
    probe = probe_run(mlflow_client)
    trainers = start_trainers(compose_stack, tmp_path, seconds=RESTART_TRAINING_S)
    time.sleep(3)
    started = time.monotonic()
    compose_stack.compose("restart", timeout=300)
    restart_s = time.monotonic() - started
    compose_stack.wait_healthy()
    seconds_until_writes_succeed(compose_stack, probe)
    recovered_s = time.monotonic() - started
    synced = sync_what_the_trainers_kept(compose_stack, tmp_path, trainers)
    points = assert_every_point_stored_once_in_order(compose_stack, trainers)
    report("`docker compose restart` of the whole stack", points, trainers, restart_command_s=f"{restart_s:.1f}",
           writes_back_after_restart_began_s=f"{recovered_s:.1f}", trainers_that_needed_cvops_sync=synced)
