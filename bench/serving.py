"""The inference server (services/serving) against MLflow's own scoring server, same model.

    python -m bench.serving [--quick|--full]

The model is the Keras box detector of the serving tests (tests/harness/serving.py: 32×32 RGB in,
two boxes per image out), registered on our tracking server (bench/stack.py) with @champion.
* ours: services/serving as its container runs it (gunicorn gthread, 1 worker × 4 threads),
  called with what a client has: PNG bytes (batch 1: the raw body; batch 8: multipart), checking
  every login with the tracking server (cached);
* mlflow: ``mlflow models serve -m models:/<name>@champion --env-manager local`` (uvicorn, its
  default of 1 worker), called with what it needs: a JSON tensor ``{"inputs": [...]}`` of float
  pixels, decoded and resized by the client.
Each cell is a closed loop of CLIENTS concurrent clients for a fixed time (10 s quick, 30 s full),
after a warm-up: requests/s, p50 and p95 latency. Then the switch: while the clients keep
sending, a second version is registered and @champion moved to it; ours follows by itself,
MLflow's scoring server serves one fixed model and needs a restart to change it. Counted:
requests that failed until the new version answered (a client pauses 0.1 s after a failure, as
one that retries would), and how long that took.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import requests
from mlflow import MlflowClient

from bench.report import parse_args, percentile, print_table, save
from bench.stack import Stack
from tests.harness.fixtures import _stop_process_group, _tail, _wait_until, free_port
from tests.harness.serving import IMAGE_SIZE, ServingServer, register_box_detector

CLIENTS = 4
RETRY_PAUSE_S = 0.1
BATCHES = (1, 8)


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class MlflowScoringServer:
    """``mlflow models serve`` on one model URI, in the local environment."""

    def __init__(self, root, model_uri: str, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_uri = model_uri
        self.log_file = root / f"mlflow-scoring-{self.port}.log"
        self.env = {**os.environ, **env, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
        self._proc = None

    def start(self) -> float:
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", self.model_uri, "--env-manager", "local",
                 "--host", "127.0.0.1", "-p", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(self._answers, 300, "mlflow models serve", lambda: _tail(self.log_file))
        return time.monotonic() - started

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/ping", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process_group(self._proc)
            self._proc = None


def _ours_request(server: ServingServer, name: str, auth, batch: int):
    images = [_png(seed) for seed in range(batch)]
    url = f"{server.url}/v1/models/{name}/predict"
    if batch == 1:
        return lambda session: session.post(url, data=images[0], headers={"Content-Type": "image/png"}, auth=auth, timeout=60)
    files = [("image", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    return lambda session: session.post(url, files=files, auth=auth, timeout=60)


def _mlflow_request(server: MlflowScoringServer, batch: int):
    from PIL import Image

    pixels = [np.asarray(Image.open(io.BytesIO(_png(seed))), dtype=np.float32).tolist() for seed in range(batch)]
    body = json.dumps({"inputs": pixels})
    return lambda session: session.post(f"{server.url}/invocations", data=body,
                                        headers={"Content-Type": "application/json"}, timeout=60)


class Load:
    """CLIENTS threads sending one request kind in a closed loop until stopped."""

    def __init__(self, send):
        self._send = send
        self._stop = threading.Event()
        self.answers: list[tuple[float, float, int, str | None]] = []  # (start, seconds, status, version)
        self._threads = [threading.Thread(target=self._loop) for _ in range(CLIENTS)]

    def _loop(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = self._send(session)
                    status, version = response.status_code, response.headers.get("X-Model-Version")
                except requests.RequestException:
                    status, version = 0, None
                self.answers.append((started, time.perf_counter() - started, status, version))
                if status != 200:
                    # As a client with a retry would: a refused connection returns at once, and
                    # counting those spins would measure the loop, not the outage.
                    time.sleep(RETRY_PAUSE_S)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def _measure(send, seconds: float) -> dict:
    with Load(send) as warm_up:
        time.sleep(2)
    assert all(status == 200 for _, _, status, _ in warm_up.answers), "warm-up requests failed"
    with Load(send) as load:
        time.sleep(seconds)
    latencies = [s * 1000 for _, s, status, _ in load.answers if status == 200]
    return {"requests": len(load.answers), "failed": sum(1 for a in load.answers if a[2] != 200),
            "rps": len(latencies) / seconds, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


def _switch(send, move_alias, switched) -> dict:
    """Send under load, move the alias (``move_alias``), wait until ``switched(answers)``."""
    with Load(send) as load:
        time.sleep(1)
        moved_at = time.perf_counter()
        move_alias()
        _wait_until(lambda: switched(load.answers), 300, "the switch")
        done_at = time.perf_counter()
        time.sleep(1)
    during = [a for a in load.answers if a[0] >= moved_at]
    return {"requests": len(during), "failed": sum(1 for a in during if a[2] != 200),
            "switch_s": done_at - moved_at}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seconds = 30.0 if args.full else 10.0
    name = f"bench-serving-{uuid.uuid4().hex[:6]}"
    with Stack(start_servers=False) as stack:
        stack.start_ours()
        endpoint = stack.ours
        auth = endpoint.auth
        client = MlflowClient(endpoint.url)
        with endpoint.as_client():
            # Outside the stack's folder: cvops closes its spool at exit, after the stack removed it.
            os.environ["CVOPS_SPOOL_DIR"] = tempfile.mkdtemp(prefix="cvops-bench-spool-")
            first = register_box_detector(name, class_id=1)
            client.set_registered_model_alias(name, "champion", first)
            ours = ServingServer(stack.root / "serving", endpoint.url, *auth, models=name,
                                 CVOPS_SERVE_POLL_INTERVAL_S="1")
            mlflow_server = MlflowScoringServer(stack.root, f"models:/{name}@champion", endpoint.client_env())
            try:
                ours.start()
                ours.wait_ready()
                mlflow_server.start()
                rows, data = [], {"clients": CLIENTS, "seconds": seconds, "cells": {}}
                for batch in BATCHES:
                    for engine, send in (("ours (PNG)", _ours_request(ours, name, auth, batch)),
                                         ("mlflow models serve (JSON tensor)", _mlflow_request(mlflow_server, batch))):
                        cell = _measure(send, seconds)
                        data["cells"][f"{engine} batch {batch}"] = cell
                        rows.append([engine, batch, f"{cell['rps']:.1f}", f"{cell['rps'] * batch:.1f}",
                                     f"{cell['p50_ms']:.1f}", f"{cell['p95_ms']:.1f}", cell["failed"]])
                speed = print_table(f"Keras detector on CPU, {CLIENTS} concurrent clients, {seconds:.0f} s per cell",
                                    ["engine", "batch", "requests/s", "images/s", "p50 ms", "p95 ms", "failed"], rows)

                second = register_box_detector(name, class_id=2)
                ours_switch = _switch(
                    _ours_request(ours, name, auth, 1),
                    lambda: client.set_registered_model_alias(name, "champion", second),
                    lambda answers: any(version == second for *_, version in answers))
                third = register_box_detector(name, class_id=3)

                def restart_on_the_new_version():
                    client.set_registered_model_alias(name, "champion", third)
                    mlflow_server.stop()
                    mlflow_server.start()

                mlflow_switch = _switch(_mlflow_request(mlflow_server, 1), restart_on_the_new_version,
                                        lambda answers: answers and answers[-1][2] == 200)
            finally:
                ours.stop()
                mlflow_server.stop()
        data["switch"] = {"ours": ours_switch, "mlflow": mlflow_switch}
        switch = print_table(
            "Moving @champion under load (batch 1)",
            ["engine", "how it changes version", "requests during the switch", "failed", "until the new version answered"],
            [["ours", "follows the alias (poll every 1 s), loads beside, swaps", ours_switch["requests"],
              ours_switch["failed"], f"{ours_switch['switch_s']:.1f} s"],
             ["mlflow models serve", "restart (serves one fixed model URI)", mlflow_switch["requests"],
              mlflow_switch["failed"], f"{mlflow_switch['switch_s']:.1f} s"]])
        save("serving", args.full, [speed, switch], data)


if __name__ == "__main__":
    main()
