"""N trainer processes logging through the cvops SDK, and the check that the server stored every point.

Shared by the chaos tier's faults on the harness's stack (test_faults.py) and on the compose stack
(tests/compose/test_chaos_*.py), with what an operator watches meanwhile (OperatorView) and the
UI's load (UiLoad). ``server`` is anything with ``url``, ``admin_username``, ``admin_password``
and ``admin_auth``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.fixtures import REPO_ROOT
from tests.harness.small_disk import fill, small_disk

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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def random_file(path: Path, megabytes: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    return path


def assert_checkpoint_stored_whole(server, trainer: Trainer, artifact: Path, tmp_path: Path) -> None:
    """Listed at its full size and downloaded with the same SHA-256: never a part read as the whole."""
    run_id = trainer.result()["run_id"]
    client = MlflowClient(server.url)
    listed = {f.path: f.file_size for f in client.list_artifacts(run_id, "checkpoints")}
    assert listed == {f"checkpoints/{artifact.name}": artifact.stat().st_size}
    downloaded = Path(client.download_artifacts(run_id, f"checkpoints/{artifact.name}", str(tmp_path / "checkpoint")))
    assert sha256(downloaded) == sha256(artifact)


class DownloadsInFlight:
    """Downloads one artifact again and again with MLflow's client, recording how each ended."""

    def __init__(self, server, run_id: str, original: Path, workdir: Path):
        self.client, self.run_id, self.original, self.workdir = MlflowClient(server.url), run_id, original, workdir
        self.expected = sha256(original)
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            target = self.workdir / str(len(self.outcomes))
            try:
                got = Path(self.client.download_artifacts(self.run_id, self.original.name, str(target)))
            except Exception as exc:  # any failure the client reports is a clean one: nothing claimed complete
                self.outcomes.append(f"failed ({type(exc).__name__})")
            else:
                self.outcomes.append("complete" if sha256(got) == self.expected else "WRONG CONTENT reported complete")
            shutil.rmtree(target, ignore_errors=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(120)


class ArtifactsInFlight:
    """A checkpoint that trainer 0 uploads, seen in flight before the fault begins, and another
    artifact downloaded without pause (MLflow's client, its retries off so a failure shows) while
    the fault lasts. ``await_upload(key)`` returns once the checkpoint's upload under that key is
    in flight in the store (each stack reaches its store its own way)."""

    DOWNLOADED_MB = 32

    def __init__(self, server, tmp_path: Path, monkeypatch, checkpoint_mb: int, await_upload):
        self.server, self.tmp_path, self.await_upload = server, tmp_path, await_upload
        self.checkpoint = random_file(tmp_path / "model_final.pth", checkpoint_mb)
        dataset = random_file(tmp_path / "dataset.tar", self.DOWNLOADED_MB)
        client = MlflowClient(server.url)
        dataset_run = client.create_run(client.create_experiment(f"chaos-downloads-{time.time_ns()}")).info.run_id
        client.log_artifact(dataset_run, str(dataset))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        self.downloads = DownloadsInFlight(server, dataset_run, dataset, tmp_path / "dl")

    def start_trainers(self, **kwargs) -> list[Trainer]:
        trainers = start_trainers(self.server, self.tmp_path, artifact=self.checkpoint, **kwargs)
        self.await_upload(f"checkpoints/{self.checkpoint.name}")
        return trainers

    def assert_whole(self, trainers: list[Trainer]) -> dict:
        """No download answered with other content, the checkpoint stored whole; the figures."""
        assert self.downloads.outcomes and "WRONG CONTENT reported complete" not in self.downloads.outcomes
        assert_checkpoint_stored_whole(self.server, trainers[0], self.checkpoint, self.tmp_path)
        megabytes = self.checkpoint.stat().st_size >> 20
        return {"checkpoint": f"{megabytes} MiB complete, SHA-256 equal",
                "downloads": dict(Counter(self.downloads.outcomes))}


def report(fault: str, points: int, trainers: list[Trainer], **figures) -> None:
    seen = [s for t in trainers for s in t.outages_seen_s()]
    extra = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[chaos] {fault}: {len(trainers)} trainers, {points} points sent and stored once in order, "
          f"0 lost; runs FINISHED; SDK saw outages of {seen} s; {extra}")


SCRAPE_ATTEMPTS = 3


class OperatorView:
    """What an operator watches while a fault lasts: the probes every 0.5 s, Prometheus, the server log.

    ``with OperatorView(server) as operator:`` around the fault (``read_log``: the server's whole
    log so far, when it is not ``server.log_file``); afterwards ``operator.ready`` holds
    each /ready answer (status, failed checks), ``operator.health`` each /health status (0: no
    answer), ``operator.log`` what the server logged meanwhile, and ``operator.answered(status)``
    how many requests Prometheus counted with that status meanwhile.
    """

    def __init__(self, server, read_log=None):
        self.server = server
        self._read_log = read_log or (lambda: server.log_file.read_text())
        self.ready: list[tuple[int, frozenset]] = []
        self.health: list[int] = []
        self.scrapes_failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _get(self, path: str):
        try:
            return requests.get(f"{self.server.url}{path}", timeout=5)
        except requests.RequestException:
            return None

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            ready, health = self._get("/ready"), self._get("/health")
            failed = frozenset(name for name, verdict in ready.json()["checks"].items() if verdict != "ok") \
                if ready is not None else frozenset()
            self.ready.append((ready.status_code if ready is not None else 0, failed))
            self.health.append(health.status_code if health is not None else 0)

    def requests_answered(self) -> dict[str, float]:
        """Prometheus' count of answered requests by status (prometheus-flask-exporter's counter).

        A scrape whose connection fails is tried again a second later, as Prometheus scrapes again at
        its next interval; each such failure is kept in ``scrapes_failed`` and shown in the figures.
        (CI once met a connection closed without an answer here; its cause is not found yet.)"""
        for attempt in range(SCRAPE_ATTEMPTS):
            try:
                text = requests.get(f"{self.server.url}/metrics", auth=self.server.admin_auth, timeout=10).text
                break
            except requests.ConnectionError as error:
                self.scrapes_failed.append(repr(error))
                if attempt == SCRAPE_ATTEMPTS - 1:
                    raise
                time.sleep(1)
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "mlflow_http_request_total":
                    counts[sample.labels["status"]] = counts.get(sample.labels["status"], 0) + sample.value
        return counts

    def answered(self, status: int) -> float:
        before, after = self._answered_before.get(str(status), 0), self._answered_after.get(str(status), 0)
        # Below the count before: the server process was replaced and its counter began again.
        return after - before if after >= before else after

    def failing_checks(self) -> set[str]:
        return {name for status, failed in self.ready if status == 503 for name in failed}

    def __enter__(self):
        self._answered_before = self.requests_answered()
        self._log_start = len(self._read_log())
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(10)
        self.log = self._read_log()[self._log_start:]
        self._answered_after = self.requests_answered() if getattr(self.server, "running", True) else {}

    def figures(self) -> dict:
        return {"ready_answers": sorted({(status, ",".join(sorted(failed))) for status, failed in self.ready}),
                "health_answers": sorted(set(self.health)), "prometheus_503": self.answered(503),
                "prometheus_500": self.answered(500), "prometheus_scrapes_failed": self.scrapes_failed,
                "server_log_lines": len(self.log.splitlines())}

    def assert_log_has_no_traceback(self) -> None:
        assert "Traceback" not in self.log, self.log[-6000:]


SPOOL_DISK_MB = 16
DISK_FULL_S = float(os.environ.get("CHAOS_DISK_FULL_S", "8"))


def spool_disk_full_then_freed(server, tmp_path: Path, label: str = "", read_log=None) -> None:
    """The chaos tier's fourth fault: every trainer's spool on one small tmpfs, filled while they
    log and write text artifacts, then freed. Skips where no tmpfs can be mounted."""
    with small_disk(tmp_path / "spool-disk", SPOOL_DISK_MB) as spool_disk:
        trainers = start_trainers(server, tmp_path, seconds=TRAINING_S / 2, spool_root=spool_disk,
                                  trainer_args=("--notes-every", "20"))
        time.sleep(3)
        with OperatorView(server, read_log) as operator:
            filler = fill(spool_disk)
            time.sleep(DISK_FULL_S)
            filler.unlink()
        # The server is not what failed: nothing there may look wrong (the trainers' logs say it, below).
        assert set(operator.ready) == {(200, frozenset())} and set(operator.health) == {200}
        assert operator.answered(503) == operator.answered(500) == 0
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
    report(f"{label}spool's disk ({SPOOL_DISK_MB} MiB tmpfs) full for {DISK_FULL_S:.0f} s", points, trainers,
           text_artifacts_not_logged_and_reported=notes_lost, **operator.figures())


UI_THREADS = 4


class UiLoad:
    """Threads calling what the UI's runs table and charts call, recording every answer."""

    def __init__(self, server, experiment_id: str, run_ids: list[str]):
        self.server, self.experiment_id, self.run_ids = server, experiment_id, run_ids
        self.answers: list[tuple[str, int, str]] = []  # (call, status, body) of each answer but a 200
        self.calls = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(UI_THREADS)]

    def calls_in_turn(self, index: int):
        api = f"{self.server.url}/ajax-api/2.0/mlflow"
        run_id = self.run_ids[index % len(self.run_ids)]
        yield "runs/search", lambda: requests.post(
            f"{api}/runs/search", auth=self.server.admin_auth, timeout=30,
            json={"experiment_ids": [self.experiment_id], "max_results": 100,
                  "order_by": ["attributes.start_time DESC"]})
        yield "metrics/get-history", lambda: requests.get(
            f"{api}/metrics/get-history", auth=self.server.admin_auth, timeout=30,
            params={"run_id": run_id, "metric_key": "loss", "max_results": 25000})
        yield "experiments/search", lambda: requests.post(
            f"{api}/experiments/search", auth=self.server.admin_auth, timeout=30, json={"max_results": 100})

    def _loop(self, index: int) -> None:
        while not self._stop.is_set():
            for name, call in self.calls_in_turn(index):
                self.calls += 1
                try:
                    answer = call()
                except requests.RequestException as exc:  # no answer at all: recorded as status 0
                    self.answers.append((name, 0, str(exc)))
                    continue
                if answer.status_code != 200:
                    self.answers.append((name, answer.status_code, answer.text))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
