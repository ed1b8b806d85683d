"""The chaos tier's sixth fault: `docker compose restart` of the whole stack while trainers log.

N trainer processes on this host (tests/chaos/trainer.py, the cvops SDK) log to the stack's
published server port; the whole project (database, object store, server) is restarted under them.
Every point a trainer handed to the SDK must be stored once, in order, and every run FINISHED
(docs/reliability.md, "Faults"). The S3 stand-in keeps objects in memory, so the trainers log
metrics only.
"""
import os
import subprocess
import sys
import time

import pytest

from tests.chaos.fleet import (
    assert_every_point_stored_once_in_order,
    report,
    seconds_until_writes_succeed,
    start_trainers,
)
from tests.harness.fixtures import REPO_ROOT

pytestmark = [pytest.mark.compose, pytest.mark.chaos, pytest.mark.timeout(900)]

TRAINING_S = 40


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
    probe = mlflow_client.create_run(mlflow_client.create_experiment(f"chaos-probe-{time.time_ns()}")).info.run_id
    trainers = start_trainers(compose_stack, tmp_path, seconds=TRAINING_S)
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
