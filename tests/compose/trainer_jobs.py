"""Building the trainer images through docker-compose.yml and submitting the examples to the stack.

Shared by the test_submit_<framework>.py modules. Images are built the way docs/jobs.md tells a
user to: `docker compose build trainer-<framework>` with build settings from the environment
(.env). Here the base is the stand-in BASE_IMAGE (CPU only) and detectron2, the OD API and tf-slim
come from the framework wheelhouse (../shared/wheels), copied into trainer/images/wheelhouse/
for the build and removed afterwards.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.frameworks.environments import RECIPES, TFOD_CONSTRAINTS, wheelhouse

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "trainer" / "examples"
IMAGE_WHEELHOUSE = REPO_ROOT / "trainer" / "images" / "wheelhouse"
BUILD_TIMEOUT_S = 3600
# Opt-in for the images CI cannot afford (docs/jobs.md, "Images": sizes and build times).
HEAVY_IMAGES_VARIABLE = "CVOPS_TEST_HEAVY_IMAGES"


def trainer_image(framework: str) -> str:
    return f"cvops-compose-test/trainer-{framework}:local"


def _wheel_requirement(wheels: Path, distribution: str) -> str:
    """`name==version` of the wheel of `distribution` in the wheelhouse."""
    for wheel in wheels.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if name == distribution.replace("-", "_"):
            return f"{distribution}=={version}"
    raise FileNotFoundError(f"no {distribution} wheel in {wheels}")


def _pinned(requirements, *names: str) -> str:
    return " ".join(r for r in requirements if re.match(rf"^({'|'.join(names)})==", r))


def offline_build_settings(framework: str, base_image: str, wheels: Path | None) -> dict[str, str]:
    """The .env settings a site without GitHub and without the GPU bases builds `framework` with:
    the CPU base, and the wheels of the framework tier's own recipes (same versions)."""
    settings = {f"{framework.upper()}_BASE_IMAGE": base_image, f"{framework.upper()}_TRAINER_IMAGE": trainer_image(framework)}
    if framework == "detectron2":
        settings.update(DETECTRON2_TORCH_REQUIREMENT=_pinned(RECIPES["detectron2"].steps[0], "torch", "torchvision"),
                        DETECTRON2_REQUIREMENT=_wheel_requirement(wheels, "detectron2"))
    elif framework == "keras":
        settings.update(KERAS_TENSORFLOW_REQUIREMENT="tensorflow-cpu")
    elif framework == "tfod":
        settings.update(TFOD_TENSORFLOW_REQUIREMENT=_pinned(TFOD_CONSTRAINTS, "tensorflow-cpu"),
                        TFOD_OBJECT_DETECTION_REQUIREMENT=_wheel_requirement(wheels, "object-detection"),
                        TFOD_TF_SLIM_REQUIREMENT=_wheel_requirement(wheels, "tf-slim"))
    return settings


@contextmanager
def wheels_in_build_context(wheels: Path):
    """The wheelhouse's wheels in trainer/images/wheelhouse/ for one build (they are never committed)."""
    copied = []
    try:
        for wheel in sorted(wheels.glob("*.whl")):
            target = IMAGE_WHEELHOUSE / wheel.name
            if not target.exists():
                shutil.copyfile(wheel, target)
                copied.append(target)
        yield
    finally:
        for target in copied:
            target.unlink(missing_ok=True)


def build_trainer_image(stack, framework: str) -> str:
    """`docker compose build trainer-<framework>` on the stand-in base; returns the image name."""
    wheels = wheelhouse()
    if framework != "keras" and wheels is None:
        import pytest

        pytest.skip(f"the {framework} image needs detectron2/OD API wheels where GitHub is unreachable: "
                    "../shared/wheels beside the checkout, or set CVOPS_FRAMEWORK_WHEELS")
    settings = offline_build_settings(framework, stack.settings["BASE_IMAGE"], wheels)
    started = time.monotonic()
    if wheels is None:
        stack.compose("build", f"trainer-{framework}", timeout=BUILD_TIMEOUT_S, **settings)
    else:
        with wheels_in_build_context(wheels):
            stack.compose("build", f"trainer-{framework}", timeout=BUILD_TIMEOUT_S, **settings)
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", trainer_image(framework)],
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"\n[compose] trainer-{framework} built in {time.monotonic() - started:.0f} s, "
          f"{int(size) / 1e9:.2f} GB")
    return trainer_image(framework)


@contextmanager
def shapes_dataset(*args: str, python: str | None = None, image: str | None = None):
    """make_shapes.py output, readable by the job's uid 10001 (pytest's tmp_path is 0700). With
    `image`, it is generated in that image (the TFRecords need its TensorFlow)."""
    root = Path(tempfile.mkdtemp(prefix="cvops-shapes-"))
    root.chmod(0o777)
    try:
        if image:
            command = ["docker", "run", "--rm", "--entrypoint", "python3", "-v", f"{EXAMPLES}:/examples:ro",
                       "-v", f"{root}:/out", image, "/examples/make_shapes.py", "/out/shapes", *args]
        else:
            command = [python or sys.executable, str(EXAMPLES / "make_shapes.py"), str(root / "shapes"), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"make_shapes failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        yield root / "shapes"
    finally:
        # Files written by the container belong to uid 10001: let a container remove them too.
        if image:
            subprocess.run(["docker", "run", "--rm", "--entrypoint", "rm", "-v", f"{root}:/out", "--user", "0",
                            image, "-rf", "/out/shapes"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def job_file(tmp_path: Path, framework: str, image: str, data: Path, **changes) -> Path:
    """The shipped example of `framework` with this test's image, data and changes."""
    spec = yaml.safe_load((EXAMPLES / framework / "job.yaml").read_text())
    spec.update(image=image, code=str(EXAMPLES / framework))
    spec["datasets"][0]["source"] = str(data)
    spec.update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_id_from(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith("[cvops] run ") and "/#/experiments/" in line:
            return line.split()[2]
    raise AssertionError(f"no run link printed:\n{stderr}")


def require_heavy_images(framework: str, why: str) -> None:
    """Skip unless the heavy-image tests were asked for (CI cannot afford them: `why`)."""
    import os

    import pytest

    if os.environ.get(HEAVY_IMAGES_VARIABLE) != "1":
        pytest.skip(f"the {framework} image is not built in CI ({why}); run it with {HEAVY_IMAGES_VARIABLE}=1")


def submit_example_and_check_run(submitter, mlflow_client, path: Path, *, image: str, framework: str,
                                 model_name: str, timeout_s: float):
    """`cvops submit` the job file; the run must finish with the image's provenance and the model
    registered from it with the @candidate alias. Returns (run, the submit's output)."""
    done = submitter("submit", str(path), "--network", submitter.network, timeout=timeout_s)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-4000:]}"
    run_id = run_id_from(done.stderr)
    assert f"run {run_id} FINISHED · exit code 0" in done.stderr
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["image"].startswith(image) and run.data.tags["framework"] == framework
    versions = mlflow_client.search_model_versions(f"name = '{model_name}'")
    assert [v.run_id for v in versions] == [run_id], versions
    assert mlflow_client.get_model_version_by_alias(model_name, "candidate").version == versions[0].version
    return run, done
