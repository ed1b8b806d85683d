"""N trainer processes logging through the cvops SDK, and the check that the server stored every point.

Shared by the chaos tier's faults on the harness's stack (test_faults.py) and on the compose stack
(tests/compose/test_chaos_restart.py). ``server`` is anything with ``url``, ``admin_username`` and
``admin_password``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient

from tests.harness.fixtures import REPO_ROOT

TRAINERS = int(os.environ.get("CHAOS_TRAINERS", "4"))
# Long enough that every fault starts and ends while the trainers log.
TRAINING_S = float(os.environ.get("CHAOS_TRAINING_S", "45"))
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


def start_trainers(server, tmp_path: Path, artifact: Path | None = None, *,
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


def seconds_until_writes_succeed(server, run_id: str) -> float:
    """From now until the API stores a metric again (the client's view of recovery)."""
    auth = (server.admin_username, server.admin_password)

    def write_succeeds() -> bool:
        try:
            return requests.post(f"{server.url}/api/2.0/mlflow/runs/log-metric", auth=auth,
                                 json={"run_id": run_id, "key": "probe", "value": 1, "step": 0,
                                       "timestamp": int(time.time() * 1000)}, timeout=5).status_code == 200
        except requests.RequestException:
            return False
    return wait_for(write_succeeds, 180, "the server storing metrics again")


def assert_every_point_stored_once_in_order(server, trainers: list[Trainer]) -> int:
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


def report(fault: str, points: int, trainers: list[Trainer], **figures) -> None:
    seen = [s for t in trainers for s in t.outages_seen_s()]
    extra = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[chaos] {fault}: {len(trainers)} trainers, {points} points sent and stored once in order, "
          f"0 lost; runs FINISHED; SDK saw outages of {seen} s; {extra}")
