"""Nothing is lost when the server is slow, gone for a while, or never there (then `cvops sync`)."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import cvops
from tests.harness.fixtures import free_port
from tests.integration.sdk_env import use_sdk_env

pytestmark = pytest.mark.integration


def _metric_points(client, run_id, key):
    return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_a_30s_outage_mid_run_loses_and_duplicates_nothing(tracking_server_factory, tmp_path, monkeypatch, caplog):
    server = tracking_server_factory()
    use_sdk_env(monkeypatch, server, tmp_path)
    steps, outage_at = 10_000, 2_000
    outage = {"down": None, "up": None}

    def outage_of_30s():
        server.stop()
        outage["down"] = time.monotonic()
        time.sleep(30)
        outage["up"] = time.monotonic()
        server.start()

    logged: dict[int, tuple[float, int]] = {}
    steps_while_down = 0
    killer = threading.Thread(target=outage_of_30s)
    with caplog.at_level(logging.WARNING, logger="cvops"):
        run = cvops.start_run(experiment="sdk-outage", run_name="10k-steps")
        for step in range(steps):
            if step == outage_at:
                killer.start()
            timestamp_ms = int(time.time() * 1000)
            value = 1.0 / (step + 1)
            run.log_metrics({"loss": value, "lr": 0.01}, step=step, timestamp_ms=timestamp_ms)
            logged[step] = (value, timestamp_ms)
            if outage["down"] is not None and outage["up"] is None:
                steps_while_down += 1
            time.sleep(0.004)  # a (very) fast training step
        killer.join()
        run.end()  # flushes: the server is back by now

    assert steps_while_down > 100, "training should have kept going while the server was down"
    assert "unreachable" in caplog.text and "back after" in caplog.text
    client = MlflowClient(server.url)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    points = _metric_points(client, run.run_id, "loss")
    assert len(points) == steps, f"{len(points)} points arrived for {steps} logged"
    assert [step for step, _, _ in points] == list(range(steps))  # in order, exactly once
    assert all((value, ts) == logged[step] for step, value, ts in points)  # original values and times
    assert len(client.get_metric_history(run.run_id, "lr")) == steps


class DelayingProxy:
    """A TCP proxy that holds every server→client chunk for ``delay_s``: a slow, overloaded server."""

    def __init__(self, upstream_port: int, delay_s: float, port: int = 0):
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay_s), daemon=True).start()

    @staticmethod
    def _pump(source, target, delay_s):
        try:
            while data := source.recv(65536):
                time.sleep(delay_s)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_training_runs_ahead_of_a_slow_server(tracking_server, tmp_path, monkeypatch):
    proxy = DelayingProxy(tracking_server.port, delay_s=0.5)
    try:
        use_sdk_env(monkeypatch, tracking_server, tmp_path, uri=f"http://127.0.0.1:{proxy.port}")
        run = cvops.start_run(experiment="sdk-slow-server", run_name="slow")
        slowest_call = 0.0
        for step in range(300):
            started = time.perf_counter()
            run.log_metrics({f"loss_{i}": step + i for i in range(20)}, step=step)
            slowest_call = max(slowest_call, time.perf_counter() - started)
            time.sleep(0.002)
        client = MlflowClient(tracking_server.url)
        # The loop is done while most of its data is still on the way: the slow server never set
        # the pace. (Each request takes >= 0.5 s; 300 synchronous steps would take minutes.)
        arrived_when_loop_ended = len(client.get_metric_history(run.run_id, "loss_0"))
        run.end()
        assert arrived_when_loop_ended < 300
        assert [m.step for m in client.get_metric_history(run.run_id, "loss_19")] == list(range(300))
        print(f"slowest log_metrics call with a 0.5 s server: {slowest_call * 1000:.2f} ms")
    finally:
        proxy.close()


def test_cvops_sync_uploads_a_spool_written_without_any_server(tracking_server, tmp_path, monkeypatch):
    use_sdk_env(monkeypatch, tracking_server, tmp_path, uri=f"http://127.0.0.1:{free_port()}")  # nothing listens
    checkpoint = tmp_path / "model_final.pth"
    checkpoint.write_bytes(os.urandom(4096))
    training_script = textwrap.dedent(f"""
        import cvops
        with cvops.start_run(experiment="sdk-air-gapped", run_name="offline", tags={{"framework": "detectron2"}}) as run:
            assert run.run_id is None  # not created yet: there is no server
            run.log_params({{"SOLVER.BASE_LR": 0.02}})
            for step in range(500):
                run.log_metrics({{"total_loss": 2.0 / (step + 1)}}, step=step, timestamp_ms=1_700_000_000_000 + step)
            run.log_artifact({str(checkpoint)!r}, artifact_path="checkpoints")
            with run.child("evaluate") as stage:
                stage.log_metrics({{"bbox/AP": 37.0}})
    """)
    offline = subprocess.run([sys.executable, "-c", training_script], env={**os.environ, "CVOPS_EXIT_FLUSH_TIMEOUT_S": "2"},
                             capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr
    assert "cvops sync" in offline.stderr  # the exit message says how to upload the spool
    checkpoint.unlink()  # the spool holds its own copy

    spools = list((tmp_path / "spool").iterdir())
    assert len(spools) == 1
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server.url}
    cli = [sys.executable, "-m", "cvops", "sync", str(spools[0])]
    first = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "records sent" in first.stderr and "spool removed" in first.stderr
    again = subprocess.run([sys.executable, "-m", "cvops", "sync", str(tmp_path / "spool")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to sync" in again.stderr

    client = MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name("sdk-air-gapped")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'offline'")
    assert parent.info.status == "FINISHED" and parent.data.tags["framework"] == "detectron2"
    assert parent.data.params["SOLVER.BASE_LR"] == "0.02"
    points = _metric_points(client, parent.info.run_id, "total_loss")
    assert [(s, t) for s, _, t in points] == [(s, 1_700_000_000_000 + s) for s in range(500)]
    local = client.download_artifacts(parent.info.run_id, "checkpoints/model_final.pth", str(tmp_path))
    assert Path(local).stat().st_size == 4096
    (child,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'evaluate'")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics["bbox/AP"] == 37.0


def test_replaying_records_the_server_already_has_stores_them_once(tracking_server, tmp_path, monkeypatch):
    """A crash between the server's answer and the cursor write re-sends a batch: no duplicates."""
    from cvops.tracking.replay import Replayer
    from cvops.tracking.spool import Spool
    from cvops.tracking.transport import Transport

    use_sdk_env(monkeypatch, tracking_server, tmp_path)  # credentials
    transport = Transport(tracking_server.url)
    client = MlflowClient(tracking_server.url)
    experiment_id = transport.experiment_id("sdk-replay")
    run_id = transport.create_run(experiment_id, 1_700_000_000_000, "replayed", {})["run_id"]
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024**2)
    spool.append([{"op": "params", "run": run_id, "params": {"lr": "0.1"}}]
                 + [{"op": "metrics", "run": run_id, "metrics": [["loss", 1.0 / (s + 1), 1_700_000_000_000 + s, s]]}
                    for s in range(3000)])
    Replayer(spool, transport).step(limit=10_000)
    (tmp_path / "spool" / "cursor.json").unlink()  # as if the process died before recording the ack
    spool.close(remove_if_drained=False)
    again = Spool(tmp_path / "spool", max_bytes=64 * 1024**2)
    assert again.count_pending() == 3001
    Replayer(again, transport).step(limit=10_000)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(3000))
    assert client.get_run(run_id).data.params == {"lr": "0.1"}


def test_a_new_run_sends_what_an_earlier_offline_process_left_behind(tracking_server, tmp_path, monkeypatch):
    port = free_port()  # the server's address, unreachable until the proxy opens it
    use_sdk_env(monkeypatch, tracking_server, tmp_path, uri=f"http://127.0.0.1:{port}")
    earlier = textwrap.dedent("""
        import cvops
        with cvops.start_run(experiment="sdk-leftovers", run_name="earlier") as run:
            for step in range(50):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    """)
    offline = subprocess.run([sys.executable, "-c", earlier], env={**os.environ, "CVOPS_EXIT_FLUSH_TIMEOUT_S": "1"},
                             capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0 and "cvops sync" in offline.stderr, offline.stderr
    (leftover,) = (tmp_path / "spool").iterdir()

    proxy = DelayingProxy(tracking_server.port, delay_s=0.0, port=port)  # the server is reachable again
    try:
        with cvops.start_run(experiment="sdk-leftovers", run_name="later") as run:
            run.log_metrics({"loss": 0.1}, step=0)
        client = MlflowClient(tracking_server.url)
        deadline = time.monotonic() + 120
        while leftover.exists():
            assert time.monotonic() < deadline, "the leftover spool was not sent"
            time.sleep(0.5)
        experiment = client.get_experiment_by_name("sdk-leftovers")
        (found,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'earlier'")
        assert [m.step for m in client.get_metric_history(found.info.run_id, "loss")] == list(range(50))
        assert found.info.status == "FINISHED"
    finally:
        proxy.close()
