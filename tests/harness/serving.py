"""The inference server (services/serving) started as its container starts it (gunicorn with the
image's config), clients that keep predicting while an alias moves, and a small Keras detector
registered for it to serve; shared by tests/integration/test_serving.py, the framework tier and
bench/serving.py."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import requests

from tests.harness.fixtures import REPO_ROOT, SERVER_START_TIMEOUT_S, _stop_process_group, _tail, _wait_until, free_port

SERVING_DIR = REPO_ROOT / "services" / "serving"
IMAGE_SIZE = 32
DETECTIONS_PER_IMAGE = 2


class ServingServer:
    """``python``: the interpreter of the environment it runs in (a framework's, for its models)."""

    def __init__(self, root: Path, tracking_url: str, username: str, password: str, models: str, *,
                 python: Path | str = sys.executable, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.temp_dir = root / f"serving-{self.port}-tmp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = root / f"serving-{self.port}.log"
        password_file = root / f"serving-{self.port}.password"
        password_file.write_text(password + "\n")  # as the compose secrets volume hands it over
        password_file.chmod(0o600)
        self.env = {
            "PATH": f"{Path(python).parent}:/usr/bin:/bin",
            "HOME": str(root),
            "TMPDIR": str(self.temp_dir),
            # The image installs cvops from trainer/ (services/serving/Dockerfile): this checkout's.
            "PYTHONPATH": str(REPO_ROOT / "trainer" / "src"),
            "MLFLOW_TRACKING_URI": tracking_url,
            "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD_FILE": str(password_file),
            "CVOPS_SERVE_MODELS": models,
            "CVOPS_SERVE_HOST": "127.0.0.1",
            "CVOPS_SERVE_PORT": str(self.port),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **env,
        }
        self._proc: subprocess.Popen | None = None
        # The image's CMD (services/serving/Dockerfile).
        self.command = [str(python), "-m", "gunicorn", "-c", "gunicorn.conf.py",
                        "cvops_serving.app:application_from_environ()"]

    def start(self) -> None:
        """Start gunicorn and wait for /health (not /ready: models load in the background)."""
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                self.command, cwd=SERVING_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_until(lambda: self._answers("/health"), SERVER_START_TIMEOUT_S, "serving /health", self.log)

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        _wait_until(lambda: self._answers("/ready"), timeout_s, "serving /ready", self.log)

    def _answers(self, path: str) -> bool:
        if self._proc.poll() is not None:
            raise RuntimeError(f"serving exited with {self._proc.returncode}:\n{self.log()}")
        try:
            return requests.get(self.url + path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return _tail(self.log_file)

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process_group(self._proc)
            self._proc = None


def prediction_request(url: str, name: str, auth, images: list[bytes], *, timeout: float = 60):
    """What a client of ours sends to the server at ``url`` for these PNG images: one as the raw
    body, a batch as multipart files; a function of a session, as PredictionLoad sends it."""
    predict = f"{url}/v1/models/{name}/predict"
    if len(images) == 1:
        return lambda session: session.post(predict, data=images[0], headers={"Content-Type": "image/png"},
                                            auth=auth, timeout=timeout)
    files = [("image", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    return lambda session: session.post(predict, files=files, auth=auth, timeout=timeout)


def answered_version(response: requests.Response) -> str | None:
    return response.headers.get("X-Model-Version")


class PredictionLoad:
    """``clients`` threads sending one request (``send(session)``) in a closed loop until the block
    ends. Every answer is kept in ``answers`` as (start, seconds, status, version), the version
    being what ``version_of`` reads off the response (status 0: no response at all)."""

    # As a client with a retry would: a refused connection returns at once, and counting those
    # spins would measure the loop, not the outage.
    RETRY_PAUSE_S = 0.1

    def __init__(self, send: Callable[[requests.Session], requests.Response], *, clients: int = 1,
                 version_of: Callable[[requests.Response], str | None] = answered_version):
        self._send = send
        self._version_of = version_of
        self._stop = threading.Event()
        self.answers: list[tuple[float, float, int, str | None]] = []
        self._threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = self._send(session)
                    status, version = response.status_code, self._version_of(response)
                except requests.RequestException:
                    status, version = 0, None
                self.answers.append((started, time.perf_counter() - started, status, version))
                if status != 200:
                    time.sleep(self.RETRY_PAUSE_S)

    def __enter__(self) -> PredictionLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def move_alias_under_load(send: Callable[[requests.Session], requests.Response], move_alias: Callable[[], object],
                          new_version: str, *, timeout_s: float = 300.0) -> list[tuple[float, float, int, str | None]]:
    """One client predicting continuously while ``move_alias()`` runs, until ``new_version`` has
    answered and then for one second more; returns every answer, in order."""
    with PredictionLoad(send) as load:
        _wait_until(lambda: load.answers, 120, "a first answer")
        move_alias()
        _wait_until(lambda: any(answer[3] == new_version for answer in load.answers), timeout_s,
                    f"version {new_version} answering")
        time.sleep(1)
    return load.answers


def assert_one_switch_without_failures(answers, old_version: str, new_version: str, log: str = "") -> None:
    """No request failed, and the answers went from the old version to the new one once."""
    failed = [answer for answer in answers if answer[2] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}\n{log}"
    versions = [answer[3] for answer in answers]
    assert versions[0] == old_version and versions[-1] == new_version, versions
    switch = versions.index(new_version)
    assert set(versions[:switch]) == {old_version} and set(versions[switch:]) == {new_version}, versions


def box_detector(class_id: int):
    """A Keras model in cvops' Keras detection convention: a dict of batch-first ``boxes`` (N, K, 4,
    pixels), ``scores`` (N, K) and ``classes`` (N, K). Every detection has class ``class_id``, so
    two versions answer visibly differently."""
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    features = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs)))
    boxes = keras.layers.Dense(DETECTIONS_PER_IMAGE * 4, activation="sigmoid")(features)
    constant = keras.initializers.Constant(float(class_id))
    outputs = {
        "boxes": keras.layers.Rescaling(float(IMAGE_SIZE))(keras.layers.Reshape((DETECTIONS_PER_IMAGE, 4))(boxes)),
        "scores": keras.layers.Dense(DETECTIONS_PER_IMAGE, activation="sigmoid")(features),
        "classes": keras.layers.Dense(DETECTIONS_PER_IMAGE, kernel_initializer="zeros", bias_initializer=constant)(features),
    }
    return keras.Model(inputs, outputs)


def register_box_detector(model_name: str, class_id: int, metrics: dict[str, float] | None = None) -> str:
    """Log and register :func:`box_detector` from a cvops run (MLFLOW_TRACKING_* point at the
    server); returns the new version."""
    return register_keras_detector(model_name, box_detector(class_id), metrics, seed=class_id)


def register_keras_detector(model_name: str, model, metrics: dict[str, float] | None = None, *,
                            class_names=(), seed: int = 0) -> str:
    """Log and register a Keras detector taking IMAGE_SIZE images, with ``metrics`` logged on its
    training run and ``class_names`` as its version's cvops.class_names; returns the new version."""
    import cvops
    from cvops.integrations import _pyfunc

    example = np.random.default_rng(seed).integers(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    with cvops.start_run(experiment="serving", tags={"task": "detection", "framework": "keras"}) as run:
        run.log_metrics(metrics or {})
        version = _pyfunc.log_keras_model(run, model, input_example=example, registered_model_name=model_name,
                                          class_names=class_names)
    return version.version
