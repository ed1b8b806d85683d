"""The tag schema and environment params cvops fills in without importing any framework."""
from __future__ import annotations

import subprocess
import sys

from cvops.config import load_settings
from cvops.tracking import schema


def test_standard_tags_from_environment_and_machine(tmp_path):
    settings = load_settings({"CVOPS_TAG_TEAM": "vision", "CVOPS_TAG_TASK": "detection",
                              "CVOPS_IMAGE": "cvops/detectron2:1.0", "CVOPS_IMAGE_DIGEST": "sha256:feed",
                              "CVOPS_GIT_COMMIT": "0123abc"})
    tags = schema.standard_tags(settings)
    assert tags["team"] == "vision" and tags["task"] == "detection"
    assert tags["image"] == "cvops/detectron2:1.0@sha256:feed"
    assert tags["git_commit"] == "0123abc"
    assert tags["hardware"]  # "Nx <GPU>" with NVML, else "CPU: <model> (<n> cores)"


def test_git_commit_is_read_from_the_repository(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env=env)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / "sub").mkdir()
    assert schema.git_commit(tmp_path / "sub") == head


def test_environment_params_and_pip_freeze():
    params = schema.environment_params(seed=7)
    assert params["seed"] == "7" and params["python_version"] and params["cvops_version"]
    assert "version.mlflow-skinny" in params or "version.mlflow" in params
    assert "mlflow" in schema.pip_freeze().lower()


def test_import_cvops_loads_no_framework_or_mlflow():
    code = "import sys, cvops; print(sorted(m for m in ('torch','tensorflow','detectron2','mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
