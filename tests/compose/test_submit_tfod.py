"""End to end: build the TF OD API trainer image with `docker compose build trainer-tfod`, `cvops
submit` the tfod example against the compose stack, and check what arrives in MLflow.

Stand-ins: the image is built on offline/python:3.11-slim with tensorflow-cpu 2.15.1 and the OD
API / tf-slim wheels of ../shared/wheels (GitHub is unreachable here) instead of the TensorFlow
GPU image and the upstream sources. The unmodified OD API trains for real, on the CPU, on
generated TFRecords; the example's pipeline.config is used with fewer steps.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.compose.serving import assert_the_trained_model_is_served_and_follows_champion
from tests.compose.trainer_jobs import (EXAMPLES, build_trainer_image, job_file, require_heavy_images, shapes_dataset,
                                        submit_example_and_check_run)

# The cold image build is part of the first test (pytest.ini's 900 s is per test).
pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(2400)]

SERVING_IMAGE = "cvops-compose-test/serving-tfod:local"
# Enough for the OD API to checkpoint, evaluate and export on 2 CPU cores in a few minutes.
NUM_STEPS = 100


@pytest.fixture(scope="module")
def tfod_image(compose_stack):
    return build_trainer_image(compose_stack, "tfod")


@pytest.fixture(scope="module")
def shapes(tfod_image):
    with shapes_dataset("--size", "128", "--max-objects", "3", "--train", "64", "--val", "16",
                        "--tfrecord", "required", image=tfod_image) as data:
        yield data


@pytest.fixture
def short_pipeline():
    """The example's pipeline.config with NUM_STEPS, in a folder the job mounts read-only."""
    folder = Path(tempfile.mkdtemp(prefix="cvops-pipeline-"))
    folder.chmod(0o755)
    config = (EXAMPLES / "tfod" / "pipeline.config").read_text()
    config, replaced = re.subn(r"num_steps: \d+", f"num_steps: {NUM_STEPS}", config)
    assert replaced == 1
    (folder / "pipeline.config").write_text(config)
    (folder / "pipeline.config").chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_submit_tfod_example_tracks_a_finished_run(tfod_image, shapes, registered, short_pipeline, submitter,
                                                   mlflow_client, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    model_name = f"shapes-tfod-{suffix}"
    path = job_file(
        tmp_path, "tfod", tfod_image, shapes, experiment=f"submit-e2e-{suffix}",
        command=["python3", "train.py", "--pipeline", "/config/pipeline.config", "--model-name", model_name],
        datasets=[{"source": str(shapes), "target": "/data/shapes"},
                  {"source": str(short_pipeline), "target": "/config"}],
        resources={"cpus": 2, "memory": "8g"},
        env={"CVOPS_EXPORT": "register"},  # needs the image's cvops[onnx]
    )
    run, _ = submit_example_and_check_run(submitter, mlflow_client, path, image=tfod_image, framework="tfod",
                                          model_name=model_name, timeout_s=1800)
    registered["name"] = model_name

    steps = [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "Loss/total_loss")]
    assert steps and max(steps) == NUM_STEPS, steps
    assert any(name.startswith("eval/") for name in run.data.metrics), sorted(run.data.metrics)
    version = mlflow_client.get_model_version_by_alias(model_name, "candidate")
    assert version.tags["cvops.export.onnx"] == "passed", version.tags


def test_the_trained_model_is_served_through_the_serve_profile(registered, shapes, compose_stack, mlflow_client,
                                                               monkeypatch, tmp_path):
    require_heavy_images("serving (tfod)", "a second image with TensorFlow 2.15, about 3 minutes more")
    assert_the_trained_model_is_served_and_follows_champion(compose_stack, mlflow_client, registered, shapes,
                                                            SERVING_IMAGE, monkeypatch, tmp_path)
