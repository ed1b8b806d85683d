"""What the framework tier's tests share: running a training command with its log kept, and the
check that a logged model's own requirements rebuild an environment that serves it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.frameworks import environments

EXAMPLES = environments.REPO_ROOT / "trainer" / "examples"


def run_logged(command: list[str], *, log_path: Path, timeout_s: float, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a training command with its output in ``log_path``; a failure shows the log's tail."""
    with open(log_path, "wb") as log:
        result = subprocess.run([str(part) for part in command], stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env or dict(os.environ), timeout=timeout_s)
    result.output = log_path.read_text(errors="replace")
    return result


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


SERVING_DIR = environments.REPO_ROOT / "services" / "serving"
_SERVE_SCRIPT = (
    "import json, sys\n"
    "from mlflow import MlflowClient\n"
    "from cvops_serving.detections import decode_image\n"
    "from cvops_serving.models import load_version\n"
    "name, version, *files = sys.argv[1:]\n"
    "served = load_version(MlflowClient(), name, version)\n"
    "images = [decode_image(open(path, 'rb').read(), path) for path in files]\n"
    "print('SERVED ' + json.dumps(served.predict(images)))\n"
)


def served_detections(python: Path, name: str, version: str, image_files: list[Path]) -> list[dict]:
    """What the inference server (services/serving) answers for these image files, computed by its
    own code in the framework's environment: the registered version loaded as the server loads
    it, the files decoded as request bodies are, the pyfunc's output turned into the one detection
    schema. The HTTP layer around it is tests/integration/test_serving.py's."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SERVING_DIR), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([str(python), "-c", _SERVE_SCRIPT, name, str(version), *map(str, image_files)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, tail(result.stderr)
    line = [line for line in result.stdout.splitlines() if line.startswith("SERVED ")][-1]
    return json.loads(line[len("SERVED "):])
