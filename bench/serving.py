"""The inference server (services/serving) against MLflow's own scoring server, same model.

    python -m bench.serving [--quick|--full]

The model is the Keras box detector of the serving tests (tests/harness/serving.py: 32×32 RGB in,
two boxes per image out), registered on our tracking server (bench/stack.py) with @champion.
* ours: services/serving as its container runs it (gunicorn gthread, 1 worker × 4 threads),
  called with what a client has: PNG bytes (batch 1: the raw body; batch 8: multipart), checking
  every login with the tracking server (cached);
* mlflow: ``mlflow models serve -m models:/<name>@champion --env-manager local`` (uvicorn, its
  default of 1 worker), called with what it needs: a JSON tensor ``{"inputs": [...]}`` of float
  pixels, decoded and resized by the client;
* MLServer: ``mlserver start`` with its MLflow runtime (mlserver-mlflow) on the same
  ``models:/<name>@champion``, its defaults otherwise (1 inference worker process), in its own
  virtualenv (.venv-mlserver/, built from bench/requirements-mlserver.txt on first use: its pins
  conflict with requirements-dev.txt), called with its own V2 inference protocol: a JSON tensor
  ``{"inputs": [{"name", "shape", "datatype": "FP32", "data"}]}`` of float pixels.
Each cell is a closed loop of CLIENTS concurrent clients for a fixed time (10 s quick, 30 s full),
after a warm-up: requests/s, p50 and p95 latency. Then the switch: while the clients keep
sending, a second version is registered and @champion moved to it; ours follows by itself,
MLflow's scoring server serves one fixed model and needs a restart to change it; MLServer is told
to reload the model through its repository API (it loads the new one beside the old). Counted:
requests that failed until the new version answered (a client pauses 0.1 s after a failure, as
one that retries would), and how long that took.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import requests
from mlflow import MlflowClient

from bench.report import parse_args, percentile, print_table, save
from bench.stack import Stack
from tests.harness.fixtures import _stop_process_group, _tail, _wait_until, free_port
from tests.harness.serving import (IMAGE_SIZE, PredictionLoad, ServingServer, answered_version, prediction_request,
                                   register_box_detector)

CLIENTS = 4
BATCHES = (1, 8)


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class ScoringProcess:
    """A serving process started in its own session, ready once ``ready_path`` answers 200."""

    title = ""
    ready_path = "/ping"

    def __init__(self, root, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = root / f"{self.title.replace(' ', '-')}-{self.port}.log"
        self.env = env
        self._proc = None

    def command(self) -> tuple[list[str], str | None]:
        """The command line and its working directory."""
        raise NotImplementedError

    def start(self) -> float:
        started = time.monotonic()
        command, cwd = self.command()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(command, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        _wait_until(self._answers, 300, self.title, lambda: _tail(self.log_file))
        return time.monotonic() - started

    def _answers(self) -> bool:
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self.title} exited with {self._proc.returncode}:\n{_tail(self.log_file)}")
        try:
            return requests.get(self.url + self.ready_path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process_group(self._proc)
            self._proc = None


class MlflowScoringServer(ScoringProcess):
    """``mlflow models serve`` on one model URI, in the local environment."""

    title = "mlflow models serve"

    def __init__(self, root, model_uri: str, env: dict[str, str]):
        super().__init__(root,
                         {**os.environ, **env, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
        self.model_uri = model_uri

    def command(self) -> tuple[list[str], str | None]:
        return ([sys.executable, "-m", "mlflow", "models", "serve", "-m", self.model_uri, "--env-manager", "local",
                 "--host", "127.0.0.1", "-p", str(self.port)], None)


MLSERVER_REQUIREMENTS = Path(__file__).with_name("requirements-mlserver.txt")
MLSERVER_VENV = Path(__file__).resolve().parent.parent / ".venv-mlserver"


def mlserver_venv() -> Path:
    """MLServer's own virtualenv, (re)built when bench/requirements-mlserver.txt changed."""
    recorded = MLSERVER_VENV / "requirements-mlserver.txt"
    wanted = MLSERVER_REQUIREMENTS.read_text()
    if not recorded.exists() or recorded.read_text() != wanted:
        shutil.rmtree(MLSERVER_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-input",
                        "-r", str(MLSERVER_REQUIREMENTS)], check=True)
        recorded.write_text(wanted)
    return MLSERVER_VENV


class MLServer(ScoringProcess):
    """``mlserver start`` on a model repository holding one model, served by the MLflow runtime
    from ``model_uri`` (MLServer hands a ``models:/`` URI to ``mlflow.pyfunc.load_model``)."""

    title = "mlserver start"

    def __init__(self, root, name: str, model_uri: str, env: dict[str, str]):
        venv = mlserver_venv()
        # Nothing of the main environment: MLServer runs on its own pins.
        inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        super().__init__(root, {**inherited, **env, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
                                "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.name = name
        self.ready_path = f"/v2/models/{name}/ready"
        self.repository = root / f"mlserver-repository-{self.port}"
        (self.repository / name).mkdir(parents=True)
        (self.repository / "settings.json").write_text(json.dumps(
            {"host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port()}))
        (self.repository / name / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": "mlserver_mlflow.MLflowRuntime", "parameters": {"uri": model_uri}}))
        self._mlserver = str(venv / "bin" / "mlserver")

    def command(self) -> tuple[list[str], str | None]:
        return [self._mlserver, "start", "."], str(self.repository)

    def reload(self) -> None:
        """What follows a promotion here: its repository API loads the model again (resolving the
        alias anew) beside the serving one, then unloads the old."""
        requests.post(f"{self.url}/v2/repository/models/{self.name}/load", timeout=300).raise_for_status()


def _float_pixels(batch: int) -> np.ndarray:
    """The batch's PNGs as a client of a tensor API must send them: decoded to float pixels."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(_png(seed))), dtype=np.float32) for seed in range(batch)])


def _mlflow_request(server: MlflowScoringServer, batch: int):
    body = json.dumps({"inputs": _float_pixels(batch).tolist()})
    return lambda session: session.post(f"{server.url}/invocations", data=body,
                                        headers={"Content-Type": "application/json"}, timeout=60)


def _mlserver_request(server: MLServer, batch: int):
    pixels = _float_pixels(batch)
    # The input's name and type as MLServer's MLflow runtime describes the model (GET /v2/models/<name>).
    body = json.dumps({"inputs": [{"name": "input-0", "shape": list(pixels.shape), "datatype": "FP32",
                                   "data": pixels.ravel().tolist()}]})
    return lambda session: session.post(f"{server.url}/v2/models/{server.name}/infer", data=body,
                                        headers={"Content-Type": "application/json"}, timeout=60)


def _answered_class_id(response: requests.Response) -> str | None:
    """Which box detector answered a V2 response (its detections' class id): MLServer's answer
    does not name the registered version."""
    if response.status_code != 200:
        return None
    classes = next(output for output in response.json()["outputs"] if output["name"] == "classes")
    return str(round(classes["data"][0]))


def measure(send, seconds: float) -> dict:
    with PredictionLoad(send, clients=CLIENTS) as warm_up:
        time.sleep(2)
    assert all(status == 200 for _, _, status, _ in warm_up.answers), "warm-up requests failed"
    with PredictionLoad(send, clients=CLIENTS) as load:
        time.sleep(seconds)
    latencies = [s * 1000 for _, s, status, _ in load.answers if status == 200]
    return {"requests": len(load.answers), "failed": sum(1 for a in load.answers if a[2] != 200),
            "rps": len(latencies) / seconds, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


def switch_under_load(send, move_alias, switched, version_of=answered_version) -> dict:
    """Send under load, move the alias (``move_alias``), wait until ``switched(answers)``."""
    with PredictionLoad(send, clients=CLIENTS, version_of=version_of) as load:
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
            mlserver = MLServer(stack.root, name, f"models:/{name}@champion", endpoint.client_env())
            try:
                ours.start()
                ours.wait_ready()
                mlflow_server.start()
                mlserver.start()
                rows, data = [], {"clients": CLIENTS, "seconds": seconds, "cells": {}}
                for batch in BATCHES:
                    for engine, send in (("ours (PNG)", prediction_request(ours.url, name, auth, [_png(seed) for seed in range(batch)])),
                                         ("mlflow models serve (JSON tensor)", _mlflow_request(mlflow_server, batch)),
                                         ("MLServer (V2 JSON tensor)", _mlserver_request(mlserver, batch))):
                        cell = measure(send, seconds)
                        data["cells"][f"{engine} batch {batch}"] = cell
                        rows.append([engine, batch, f"{cell['rps']:.1f}", f"{cell['rps'] * batch:.1f}",
                                     f"{cell['p50_ms']:.1f}", f"{cell['p95_ms']:.1f}", cell["failed"]])
                speed = print_table(f"Keras detector on CPU, {CLIENTS} concurrent clients, {seconds:.0f} s per cell",
                                    ["engine", "batch", "requests/s", "images/s", "p50 ms", "p95 ms", "failed"], rows)

                second = register_box_detector(name, class_id=2)
                ours_switch = switch_under_load(
                    prediction_request(ours.url, name, auth, [_png(0)]),
                    lambda: client.set_registered_model_alias(name, "champion", second),
                    lambda answers: any(version == second for *_, version in answers))
                third = register_box_detector(name, class_id=3)

                def restart_on_the_new_version():
                    client.set_registered_model_alias(name, "champion", third)
                    mlflow_server.stop()
                    mlflow_server.start()

                mlflow_switch = switch_under_load(_mlflow_request(mlflow_server, 1), restart_on_the_new_version,
                                        lambda answers: answers and answers[-1][2] == 200)
                fourth_class_id = 4
                fourth = register_box_detector(name, class_id=fourth_class_id)

                def reload_through_the_repository_api():
                    client.set_registered_model_alias(name, "champion", fourth)
                    mlserver.reload()

                mlserver_switch = switch_under_load(_mlserver_request(mlserver, 1), reload_through_the_repository_api,
                                          lambda answers: any(version == str(fourth_class_id) for *_, version in answers),
                                          version_of=_answered_class_id)
            finally:
                ours.stop()
                mlflow_server.stop()
                mlserver.stop()
        data["switch"] = {"ours": ours_switch, "mlflow": mlflow_switch, "mlserver": mlserver_switch}
        switch = print_table(
            "Moving @champion under load (batch 1)",
            ["engine", "how it changes version", "requests during the switch", "failed", "until the new version answered"],
            [["ours", "follows the alias (poll every 1 s), loads beside, swaps", ours_switch["requests"],
              ours_switch["failed"], f"{ours_switch['switch_s']:.1f} s"],
             ["mlflow models serve", "restart (serves one fixed model URI)", mlflow_switch["requests"],
              mlflow_switch["failed"], f"{mlflow_switch['switch_s']:.1f} s"],
             ["MLServer", "repository API load (resolves the alias again, loads beside, swaps)",
              mlserver_switch["requests"], mlserver_switch["failed"], f"{mlserver_switch['switch_s']:.1f} s"]])
        save("serving", args.full, [speed, switch], data)


if __name__ == "__main__":
    main()
