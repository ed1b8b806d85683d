"""End to end: build the keras trainer image, `cvops submit` the keras example against the
compose stack, and check the run the way a user would in MLflow.

Stand-ins: the image is built with `docker compose build trainer-keras` on
offline/python:3.11-slim (CPU TensorFlow from PyPI) instead of the official TensorFlow GPU image;
the stack is the compose tier's (moto S3 for MinIO). The job trains for real, on generated data,
on the CPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.compose.trainer_jobs import EXAMPLES, build_trainer_image, job_file, run_id_from, shapes_dataset

pytestmark = [pytest.mark.compose, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keras_image(compose_stack):
    return build_trainer_image(compose_stack, "keras")


@pytest.fixture(scope="module")
def shapes():
    with shapes_dataset("--max-objects", "1", "--tfrecord", "off") as data:
        yield data


def test_submit_keras_example_tracks_a_finished_run(keras_image, shapes, submitter, mlflow_client, compose_stack,
                                                    tmp_path):
    suffix = uuid.uuid4().hex[:6]
    model_name = f"shapes-keras-{suffix}"
    spec = yaml.safe_load((EXAMPLES / "keras" / "job.yaml").read_text())
    command = [arg if arg != "shapes-keras" else model_name for arg in spec["command"]]
    # Exporting on registration in the container needs the image's cvops[onnx].
    path = job_file(tmp_path, "keras", keras_image, shapes, experiment=f"submit-e2e-{suffix}", command=command,
                    env={"CVOPS_EXPORT": "register"})

    done = submitter("submit", str(path), "--network", submitter.network)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    run_id = run_id_from(done.stderr)
    assert "Epoch 25/25" in done.stdout  # the container's log was streamed
    assert "validation: mAP" in done.stdout
    assert f"run {run_id} FINISHED · exit code 0" in done.stderr

    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    head = subprocess.run(["git", "-C", str(EXAMPLES / "keras"), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert tags["git_commit"] == head
    # A local build has no registry digest: its id is recorded as such, the name stays as built.
    assert tags["image"] == keras_image and "image_digest" not in tags
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", keras_image],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert tags["image_id"] == image_id
    assert tags["framework"] == "keras" and tags["team"] == "vision"

    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(25))
    assert history[-1].value < history[0].value
    batch_steps = [m.step for m in mlflow_client.get_metric_history(run_id, "batch/loss")]
    assert len(batch_steps) > 10 and batch_steps == sorted(batch_steps)
    assert run.data.metrics["eval/AP50"] > 50  # a trained detector, not chance

    # The run is the submitting login's, not the container's OS user ("trainer").
    assert run.info.user_id == run.data.tags["mlflow.user"] == compose_stack.admin_username

    artifacts = {a.path for a in mlflow_client.list_artifacts(run_id)}
    # The logged model is MLflow 3's LoggedModel (registered below), not a folder of run artifacts.
    assert {"model_summary.txt", "evaluation"} <= artifacts, artifacts
    assert "evaluation/per_class_ap.json" in {a.path for a in mlflow_client.list_artifacts(run_id, "evaluation")}

    versions = mlflow_client.search_model_versions(f"name = '{model_name}'")
    assert [v.run_id for v in versions] == [run_id]
    assert versions[0].tags["cvops.export.onnx"] == "passed", versions[0].tags

    listed = submitter("ps", "--all")
    assert run_id[:12] in listed.stdout and "exited (0)" in listed.stdout
    logs = submitter("logs", run_id[:12])
    assert logs.returncode == 0 and "Epoch 25/25" in logs.stdout
    # A clean log: neither GitPython's missing-git warning nor CUDA's cuInit errors on a CPU host.
    assert "Bad git executable" not in logs.stdout + logs.stderr
    assert "cuInit" not in logs.stdout + logs.stderr


def test_a_crashing_job_exits_with_its_code_and_its_run_fails(keras_image, shapes, submitter, mlflow_client, tmp_path):
    command = ["python3", "-c", "import sys; print('loading data'); sys.exit(3)"]
    path = job_file(tmp_path, "keras", keras_image, shapes, experiment=f"submit-e2e-{uuid.uuid4().hex[:6]}", command=command)
    done = submitter("submit", str(path), "--network", submitter.network, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "loading data" in done.stdout
    run = mlflow_client.get_run(run_id_from(done.stderr))
    assert run.info.status == "FAILED"
    assert run.data.tags["cvops.exit_code"] == "3"


def test_bad_job_file_fails_before_anything_runs(submitter, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("framework: keras\nimage: x\ncommand: [x]\nexperiment: e\ngpus: lots\n")
    done = submitter("submit", str(path), timeout=60)
    assert done.returncode == 2
    assert "gpus: 'lots' is not a GPU request" in done.stderr


def test_stop_ends_a_detached_job_as_killed(keras_image, shapes, submitter, mlflow_client, tmp_path):
    command = ["python3", "-c", "import time; print('training', flush=True); time.sleep(600)"]
    path = job_file(tmp_path, "keras", keras_image, shapes, experiment=f"submit-e2e-{uuid.uuid4().hex[:6]}", command=command)
    done = submitter("submit", "--detach", str(path), "--network", submitter.network, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = run_id_from(done.stderr)
    assert run_id[:12] in submitter("ps").stdout
    stopped = submitter("stop", run_id[:12], "--timeout", "20", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["cvops.exit_code"] == "143"  # SIGTERM reached the job through `cvops train`
    assert run_id[:12] not in submitter("ps").stdout


def test_train_profile_has_one_service_per_image():
    """`docker compose run --rm trainer-<framework> …` works without cvops submit: the services
    exist only under the `train` profile, build the Dockerfiles from a swappable BASE_IMAGE and
    reach the stack's server."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed")
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "S3_ACCESS_KEY": "x", "S3_SECRET_KEY": "x",
           "MLFLOW_ADMIN_PASSWORD": "x", "MLFLOW_FLASK_SERVER_SECRET_KEY": "x", "KERAS_BASE_IMAGE": "offline/python:3.11-slim"}
    done = subprocess.run([compose, "--profile", "train", "config"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    for framework in ("keras", "detectron2", "tfod"):
        service = services[f"trainer-{framework}"]
        assert service["profiles"] == ["train"]
        assert service["build"]["dockerfile"] == f"images/{framework}/Dockerfile"
        assert "BASE_IMAGE" in service["build"]["args"]
        assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["trainer-keras"]["build"]["args"]["BASE_IMAGE"] == "offline/python:3.11-slim"
