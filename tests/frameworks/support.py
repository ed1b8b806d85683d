"""What the framework tier's tests share: running a training command with its log kept, the
check that a logged model's own requirements rebuild an environment that serves it, and the
inference server's answers and alias switch over HTTP."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import requests

from tests.frameworks import environments
from tests.harness.serving import (ServingServer, assert_one_switch_without_failures, move_alias_under_load,
                                   prediction_request)

EXAMPLES = environments.REPO_ROOT / "trainer" / "examples"


def run_logged(command: list[str], *, log_path: Path, timeout_s: float, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a training command with its output in ``log_path``; a failure shows the log's tail."""
    with open(log_path, "wb") as log:
        result = subprocess.run([str(part) for part in command], stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env or dict(os.environ), timeout=timeout_s)
    result.output = log_path.read_text(errors="replace")
    return result


def small_pipeline(shapes: Path, path: Path) -> Path:
    """The OD API example's pipeline.config with the data where make_shapes wrote it and
    test-sized images and batches (64 px, 2 per batch); its num_steps stays 1500."""
    text = (EXAMPLES / "tfod" / "pipeline.config").read_text()
    text = text.replace("/data/shapes", str(shapes)).replace("height: 128 width: 128", "height: 64 width: 64")
    path.write_text(text.replace("batch_size: 16", "batch_size: 2"))
    return path


def tail(text: str, chars: int = 6000) -> str:
    return text[-chars:]


def model_environment_predicts(model_uri: str, inputs, tmp_path: Path):
    """Build a fresh virtualenv from nothing but the logged model's own requirements.txt (with the
    framework wheelhouse as find-links, as a site without GitHub would), then load the model there
    with MLflow and predict ``inputs`` (an array); returns the prediction as JSON data (a
    detector's frame as one {"boxes", "scores", "classes"} record per image)."""
    import mlflow
    import numpy as np

    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri, format="pip"))
    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    venv = tmp_path / "model-venv"
    subprocess.run([environments.PYTHON, "-m", "venv", str(venv)], check=True)
    wheels = environments.wheelhouse()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-input", "-r", str(requirements)]
    if wheels is not None:
        pip += ["--find-links", str(wheels)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=1500)
    assert installed.returncode == 0, f"pip install -r {requirements.read_text()}\n{tail(installed.stderr)}"
    np.save(tmp_path / "inputs.npy", np.asarray(inputs))
    script = (
        "import json, sys, numpy as np, pandas as pd, mlflow.pyfunc\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "out = model.predict(np.load(sys.argv[2]))\n"
        "if isinstance(out, pd.DataFrame): out = json.loads(out.to_json(orient='records'))\n"
        "elif isinstance(out, dict): out = {k: np.asarray(v).tolist() for k, v in out.items()}\n"
        "else: out = np.asarray(out).tolist()\n"
        "print('PREDICTIONS ' + json.dumps(out))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    predicted = subprocess.run([str(venv / "bin" / "python"), "-c", script, str(model_dir), str(tmp_path / "inputs.npy")],
                               capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert predicted.returncode == 0, tail(predicted.stderr)
    line = next(line for line in predicted.stdout.splitlines() if line.startswith("PREDICTIONS "))
    return json.loads(line[len("PREDICTIONS "):])


def predict_files(server: ServingServer, name: str, image_files: list[Path], auth) -> tuple[str, list[dict]]:
    """What the inference server answers for these image files, sent as a client sends a batch
    (multipart files): the version that answered, and one detection record per image."""
    files = [("image", (path.name, path.read_bytes(), "image/png")) for path in image_files]
    response = requests.post(f"{server.url}/v1/models/{name}/predict", files=files, auth=auth, timeout=600)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{server.log()}"
    return response.headers["X-Model-Version"], response.json()["predictions"]


def assert_detections_inside(found: dict, image_file: Path, class_names: set[str]) -> None:
    """One image's answer in the one schema: at least one detection, every list as long as the
    boxes, each box inside the image (1 px of rounding either side), every class among ``class_names``."""
    from PIL import Image

    width, height = Image.open(image_file).size
    boxes = np.asarray(found["boxes"]).reshape(-1, 4)
    assert len(boxes) == len(found["scores"]) == len(found["class_ids"]) == len(found["class_names"]) > 0
    assert (boxes >= -1).all() and (boxes[:, [0, 2]] <= width + 1).all() and (boxes[:, [1, 3]] <= height + 1).all()
    assert set(found["class_names"]) <= class_names


def register_again(client, name: str, version: str) -> str:
    """A new version of a registered model from the same files and class names, as a retrained
    model arrives; the server loads it as it loads any version. Returns the new version."""
    import mlflow

    from cvops.detection_schema import CLASS_NAMES_TAG

    registered = client.get_model_version(name, version)
    tags = {CLASS_NAMES_TAG: registered.tags[CLASS_NAMES_TAG]} if CLASS_NAMES_TAG in registered.tags else {}
    return str(mlflow.register_model(registered.source, name, tags=tags).version)


def assert_follows_champion_without_failed_requests(server: ServingServer, client, name: str, image_file: Path,
                                                    auth) -> None:
    """A client predicts continuously while @champion moves to a new version of the served model:
    no request fails, the answers switch version once, and the new version answers as the old."""
    old = client.get_model_version_by_alias(name, "champion").version
    _, before = predict_files(server, name, [image_file], auth)
    new = register_again(client, name, old)
    answers = move_alias_under_load(prediction_request(server.url, name, auth, [image_file.read_bytes()], timeout=600),
                                    lambda: client.set_registered_model_alias(name, "champion", new), new)
    assert_one_switch_without_failures(answers, str(old), new, server.log())
    answered, after = predict_files(server, name, [image_file], auth)
    assert answered == new and after == before
