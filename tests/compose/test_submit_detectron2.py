"""End to end: build the Detectron2 trainer image with `docker compose build trainer-detectron2`,
`cvops submit` the detectron2 example against the compose stack, and check what arrives in MLflow.

Stand-ins: the image is built on offline/python:3.11-slim with torch 2.14.1 from PyPI and the
CPU-only detectron2 wheel of ../shared/wheels (compiled for exactly that torch) instead of the
PyTorch CUDA image and a build from the upstream source. Not in CI: torch's wheel pulls in the
CUDA libraries from PyPI, several GB, which alone takes longer than CI can spare (docs/jobs.md,
"Images"); CVOPS_TEST_HEAVY_IMAGES=1 runs it.
"""
from __future__ import annotations

import uuid

import pytest

from tests.compose.serving import assert_the_trained_model_is_served_and_follows_champion
from tests.compose.trainer_jobs import (build_trainer_image, job_file, require_heavy_images, shapes_dataset,
                                        submit_example_and_check_run)
from tests.frameworks.environments import wheelhouse

# The cold image build is part of the first test (pytest.ini's 900 s is per test).
pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(3600)]

MAX_ITER = 40
SERVING_IMAGE = "cvops-compose-test/serving-detectron2:local"


@pytest.fixture(scope="module")
def detectron2_image(compose_stack):
    require_heavy_images("detectron2", "torch with its CUDA libraries is several GB from PyPI")
    return build_trainer_image(compose_stack, "detectron2")


@pytest.fixture(scope="module")
def shapes():
    with shapes_dataset("--size", "128", "--max-objects", "3", "--train", "64", "--val", "16",
                        "--tfrecord", "off") as data:
        yield data


def test_submit_detectron2_example_tracks_a_finished_run(detectron2_image, shapes, registered, submitter,
                                                         mlflow_client, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    model_name = f"shapes-detectron2-{suffix}"
    path = job_file(
        tmp_path, "detectron2", detectron2_image, shapes, experiment=f"submit-e2e-{suffix}",
        command=["python", "train.py", "--data", "/data/shapes", "--max-iter", str(MAX_ITER),
                 "--model-name", model_name],
        resources={"cpus": 2, "memory": "8g"},
    )
    run, _ = submit_example_and_check_run(submitter, mlflow_client, path, image=detectron2_image,
                                          framework="detectron2", model_name=model_name, timeout_s=1800)
    registered["name"] = model_name

    steps = [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "total_loss")]
    assert steps and max(steps) == MAX_ITER - 1, steps
    assert any(name.startswith("bbox/") or name.startswith("eval/") for name in run.data.metrics), \
        sorted(run.data.metrics)


def test_the_trained_model_is_served_through_the_serve_profile(registered, shapes, compose_stack, mlflow_client,
                                                               monkeypatch, tmp_path):
    require_heavy_images("serving (detectron2)", "torch with its CUDA libraries is several GB from PyPI")
    # The model recorded detectron2==0.6, which no index has: the build takes it from the wheelhouse.
    assert_the_trained_model_is_served_and_follows_champion(compose_stack, mlflow_client, registered, shapes,
                                                            SERVING_IMAGE, monkeypatch, tmp_path, wheels=wheelhouse())
