"""The inference server (services/serving) started as its container starts it (gunicorn with the
image's config), and a small Keras detector registered for it to serve; shared by
tests/integration/test_serving.py and bench/serving.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import requests

from tests.harness.fixtures import REPO_ROOT, SERVER_START_TIMEOUT_S, _stop_process_group, _tail, _wait_until, free_port

SERVING_DIR = REPO_ROOT / "services" / "serving"
IMAGE_SIZE = 32
DETECTIONS_PER_IMAGE = 2


class ServingServer:
    def __init__(self, root: Path, tracking_url: str, username: str, password: str, models: str, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.temp_dir = root / f"serving-{self.port}-tmp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = root / f"serving-{self.port}.log"
        password_file = root / f"serving-{self.port}.password"
        password_file.write_text(password + "\n")  # as the compose secrets volume hands it over
        password_file.chmod(0o600)
        self.env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
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
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cvops_serving.app:application_from_environ()"]

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
