"""Virtual environments with the real frameworks, for the framework tier and its CI.

Detectron2 and the TF Object Detection API are not on PyPI. On machines that cannot reach
GitHub they come from a wheelhouse (``../shared/wheels`` beside the checkout, or
``CVOPS_FRAMEWORK_WHEELS``), installed the way that folder's README proves. Each environment is
cached under ``.venv-frameworks/<name>-<hash>``; the hash covers the recipe, the wheels'
checksums, the inference server's requirements and the interpreter, so a changed recipe builds a
new one and an unchanged one costs nothing. cvops itself is installed editable, so SDK changes
need no rebuild.

    python -m tests.frameworks.environments            # build every environment (tests/run.sh)
    python -m tests.frameworks.environments detectron2 # one
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("CVOPS_FRAMEWORK_VENVS", REPO_ROOT / ".venv-frameworks"))
# detectron2's wheel is compiled for CPython 3.11 and torch 2.14.1's C++ ABI.
PYTHON = os.environ.get("CVOPS_FRAMEWORK_PYTHON", "python3.11")
SERVING_REQUIREMENTS = REPO_ROOT / "services" / "serving" / "requirements.txt"

# The OD API needs TensorFlow 2.15 (Keras 2); these pins are the ones its README proves.
TFOD_CONSTRAINTS = ["tensorflow-cpu==2.15.1", "keras==2.15.0", "protobuf==4.25.9", "numpy==1.26.4",
                    "tensorboard==2.15.2",
                    # cvops[onnx]: onnx >= 1.18 needs protobuf >= 6 or an ml_dtypes newer than TF 2.15's
                    # (onnx 1.19 imports ml_dtypes.float4_e2m1fn, absent from ml_dtypes 0.3).
                    "onnx==1.17.0", "tf2onnx==1.17.0", "onnxruntime==1.32.0"]


def wheelhouse() -> Path | None:
    configured = os.environ.get("CVOPS_FRAMEWORK_WHEELS")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "wheels"
    return candidate if (candidate / "SHA256SUMS").is_file() else None


@dataclass(frozen=True)
class Recipe:
    """pip steps, in order; ``{wheels}``, ``{trainer}`` and ``{serving_requirements}`` are filled in
    at build time. Each environment also holds the inference server's own requirements, as its
    image does (services/serving/Dockerfile), so the framework tier serves the real models with it."""

    name: str
    steps: tuple[tuple[str, ...], ...]
    check: str
    constraints: tuple[str, ...] = field(default=())


RECIPES = {
    "detectron2": Recipe(
        name="detectron2",
        steps=(
            ("torch==2.14.1", "torchvision==0.29.1", "{wheels}/detectron2-0.6-cp311-cp311-linux_x86_64.whl",
             "opencv-python-headless", "onnxruntime==1.32.0", "-e", "{trainer}[detectron2,onnx,sweep]",
             "-r", "{serving_requirements}"),
        ),
        check="import detectron2._C, cv2, cvops.integrations.detectron2",
    ),
    "tfod": Recipe(
        name="tfod",
        constraints=tuple(TFOD_CONSTRAINTS),
        steps=(
            ("tensorflow-cpu==2.15.1", "tensorflow-io==0.36.0", "pycocotools", "lxml", "contextlib2", "pillow",
             "matplotlib", "pyyaml", "scipy", "pandas", "gin-config", "absl-py", "opencv-python-headless<4.11",
             "-e", "{trainer}[tfod,onnx,sweep]", "-r", "{serving_requirements}"),
            # The OD API declares far more than training, evaluation and export import
            # (apache-beam, pyparsing==2.4.7, ...): --no-deps, as the wheelhouse README shows.
            ("--no-deps", "{wheels}/object_detection-0.1-py3-none-any.whl", "{wheels}/tf_slim-1.2.0-py3-none-any.whl",
             "tf-models-official==2.15.0", "lvis==0.5.3"),
        ),
        check="from object_detection import model_lib_v2, exporter_lib_v2; import cvops.integrations.tfod",
    ),
}


class Unavailable(RuntimeError):
    """The environment cannot be built here; the message says why (tests skip with it)."""


def _python_version(python: str) -> str:
    found = shutil.which(python)
    if not found:
        raise Unavailable(f"{python} is not on PATH (the detectron2 wheel is built for CPython 3.11)")
    return subprocess.run([found, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                          check=True).stdout.strip()


def environment_dir(recipe: Recipe, wheels: Path) -> Path:
    key = json.dumps({"recipe": asdict(recipe), "wheels": (wheels / "SHA256SUMS").read_text(),
                      "serving_requirements": SERVING_REQUIREMENTS.read_text(),
                      "python": _python_version(PYTHON)}, sort_keys=True)
    return CACHE_DIR / f"{recipe.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure(name: str, log=sys.stderr) -> Path:
    """The environment's interpreter, built first if needed; raises Unavailable."""
    recipe = RECIPES[name]
    wheels = wheelhouse()
    if wheels is None:
        raise Unavailable("no framework wheelhouse: ../shared/wheels beside the checkout, or set "
                          "CVOPS_FRAMEWORK_WHEELS to a folder with the detectron2/object_detection wheels")
    target = environment_dir(recipe, wheels)
    python = target / "bin" / "python"
    if (target / ".complete").is_file():
        return python
    shutil.rmtree(target, ignore_errors=True)  # an interrupted build: start over
    started = time.monotonic()
    print(f"cvops: building the {name} environment in {target} (cached afterwards)", file=log, flush=True)
    subprocess.run([shutil.which(PYTHON), "-m", "venv", str(target)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-input"]
    if recipe.constraints:
        constraints = target / "constraints.txt"
        constraints.write_text("\n".join(recipe.constraints) + "\n")
        pip += ["-c", str(constraints)]
    fill = {"wheels": str(wheels), "trainer": str(REPO_ROOT / "trainer"), "serving_requirements": str(SERVING_REQUIREMENTS)}
    for step in recipe.steps:
        subprocess.run([*pip, *(arg.format(**fill) for arg in step)], check=True, stdout=log, stderr=log)
    subprocess.run([str(python), "-c", recipe.check], check=True)
    (target / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
    print(f"cvops: {name} environment ready in {time.monotonic() - started:.0f} s", file=log, flush=True)
    return python


def main(argv: list[str]) -> int:
    names = argv or list(RECIPES)
    for name in names:
        try:
            ensure(name)
        except Unavailable as reason:
            print(f"cvops: {name} environment not built: {reason}; the framework tier will skip", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
