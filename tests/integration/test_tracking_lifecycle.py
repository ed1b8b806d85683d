"""Run lifecycle and what a run records, against the real server (PostgreSQL + S3, via entrypoint.sh)."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import cvops
from cvops.tracking.system import start_system_metrics
from tests.integration.sdk_env import use_sdk_env

# Also against MLflow's own code paths (CVOPS_SERVER_PATCHES=off): the patches change only speed.
pytestmark = [pytest.mark.integration, pytest.mark.patches_on_and_off]

SCHEMA_TAGS = ("task", "framework", "backbone", "dataset", "env", "team", "git_commit", "image", "hardware")


@pytest.fixture
def sdk_env(tracking_server, tmp_path, monkeypatch):
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    return tracking_server


@pytest.fixture
def client(sdk_env) -> MlflowClient:
    return MlflowClient(sdk_env.url)


def _artifact_paths(client, run_id, path=None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_successful_run_records_the_whole_schema(sdk_env, client, tmp_path, monkeypatch):
    monkeypatch.setenv("CVOPS_TAG_TEAM", "vision")
    monkeypatch.setenv("CVOPS_TAG_ENV", "ci")
    monkeypatch.setenv("CVOPS_IMAGE", "cvops/detectron2:1.0")
    monkeypatch.setenv("CVOPS_IMAGE_DIGEST", "sha256:0123")
    monkeypatch.setenv("CVOPS_GIT_COMMIT", "deadbeef")
    config = tmp_path / "config.yaml"
    config.write_text("SOLVER:\n  BASE_LR: 0.01\n")
    data = tmp_path / "coco-mini"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"jpeg")

    with cvops.start_run(experiment="sdk-lifecycle", run_name="schema",
                         tags={"task": "detection", "framework": "detectron2", "backbone": "R50-FPN",
                               "dataset": "coco-mini"}, seed=1234) as run:
        # What adapters read to leave the user's tags alone: environment and tags= alike.
        assert {"team": "vision", "env": "ci", "backbone": "R50-FPN"}.items() <= run.tags.items()
        run.log_params({"SOLVER.BASE_LR": 0.01, "SOLVER.IMS_PER_BATCH": 16})
        for step in range(5):
            run.log_metrics({"total_loss": 1.0 / (step + 1), "DetectionBoxes_Precision/mAP@.50IOU": 0.1 * step},
                            step=step)
        run.log_config_file(config)
        run.log_dataset(data, name="coco-mini")
        run.log_dict({"classes": ["cat", "dog"]}, "meta/classes.json")

    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    for tag in SCHEMA_TAGS:
        assert stored.data.tags.get(tag), f"schema tag {tag!r} missing"
    assert stored.data.tags["image"] == "cvops/detectron2:1.0@sha256:0123"
    assert stored.data.tags["team"] == "vision"
    assert stored.data.params["seed"] == "1234"
    assert stored.data.params["SOLVER.BASE_LR"] == "0.01"
    assert "python_version" in stored.data.params
    assert [m.step for m in client.get_metric_history(run.run_id, "total_loss")] == [0, 1, 2, 3, 4]
    assert client.get_metric_history(run.run_id, "DetectionBoxes_Precision/mAP_at_.50IOU")

    artifacts = _artifact_paths(client, run.run_id)
    assert {"config/config.yaml", "environment/requirements.txt", "meta/classes.json",
            "cvops/name_mapping.json"} <= artifacts
    local = client.download_artifacts(run.run_id, "cvops/name_mapping.json", str(tmp_path))
    mapping = json.loads(Path(local).read_text())
    assert mapping["DetectionBoxes_Precision/mAP_at_.50IOU"] == "DetectionBoxes_Precision/mAP@.50IOU"

    (dataset_input,) = stored.inputs.dataset_inputs
    assert dataset_input.dataset.name == "coco-mini" and dataset_input.dataset.digest
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    experiment = client.get_experiment(stored.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert run.ui_url.endswith(f"/#/experiments/{stored.info.experiment_id}/runs/{run.run_id}?workflowType=machine_learning")


def test_exception_marks_the_run_failed_and_keeps_its_data(sdk_env, client):
    with pytest.raises(RuntimeError, match="diverged"):
        with cvops.start_run(experiment="sdk-lifecycle", run_name="boom") as run:
            run.log_metrics({"loss": 3.0}, step=1)
            raise RuntimeError("loss diverged")
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.metrics["loss"] == 3.0


def test_sigterm_marks_the_run_killed_and_the_process_still_dies(sdk_env, client, tmp_path):
    id_file = tmp_path / "run_id"
    script = textwrap.dedent(f"""
        import time, cvops
        run = cvops.start_run(experiment="sdk-lifecycle", run_name="terminated")
        run.log_metrics({{"loss": 1.0}}, step=0)
        run.flush()
        open({str(id_file)!r}, "w").write(run.run_id)
        step = 1
        while True:
            run.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
            step += 1
            time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not id_file.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the training script never started its run"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, output
    stored = client.get_run(id_file.read_text())
    assert stored.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(stored.info.run_id, "loss")]
    assert len(steps) > 10 and steps == sorted(steps)  # what was logged before SIGTERM arrived


def test_child_runs_nest_under_their_parent(sdk_env, client):
    with cvops.start_run(experiment="sdk-lifecycle", run_name="pipeline") as parent:
        with parent.child("evaluate") as stage:
            stage.log_metrics({"bbox/AP": 41.5})
    stored = client.get_run(stage.run_id)
    assert stored.data.tags["mlflow.parentRunId"] == parent.run_id
    assert stored.data.tags["mlflow.runName"] == "evaluate"
    assert stored.info.status == "FINISHED" and stored.data.metrics["bbox/AP"] == 41.5


def test_resume_with_a_changed_param_records_a_conflict_tag(sdk_env, client, monkeypatch, caplog):
    with cvops.start_run(experiment="sdk-lifecycle", run_name="resumable") as first:
        first.log_params({"lr": 0.1, "epochs": 10})
        first.log_metrics({"loss": 1.0}, step=0)
    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    with caplog.at_level(logging.WARNING, logger="cvops"):
        with cvops.start_run() as resumed:
            resumed.log_params({"lr": 0.2, "epochs": 10})
            resumed.log_metrics({"loss": 0.5}, step=1)
    assert resumed.run_id == first.run_id
    stored = client.get_run(first.run_id)
    assert stored.data.params["lr"] == "0.1"
    assert stored.data.tags["param_conflict.lr"] == "0.2"
    assert stored.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [0, 1]
    assert "param_conflict" in caplog.text


def test_long_params_are_truncated_with_the_whole_value_as_an_artifact(sdk_env, client, tmp_path):
    value = "layer," * 2000  # 12 000 characters, e.g. a flattened pipeline.config section
    with cvops.start_run(experiment="sdk-lifecycle", run_name="long-param") as run:
        run.log_params({"model.ssd.feature_extractor": value})
    stored = client.get_run(run.run_id)
    param = stored.data.params["model.ssd.feature_extractor"]
    assert len(param) <= 6000 and "truncated" in param and value.startswith(param.split("...")[0])
    local = client.download_artifacts(run.run_id, "cvops/params/model.ssd.feature_extractor.txt", str(tmp_path))
    assert Path(local).read_text() == value


def test_non_finite_metrics_are_logged_and_counted(sdk_env, client):
    with cvops.start_run(experiment="sdk-lifecycle", run_name="nan") as run:
        run.log_metrics({"loss": float("nan")}, step=0)
        run.log_metrics({"loss": float("inf")}, step=1)
        run.log_metrics({"loss": 0.5}, step=2)
        run.log_metrics({"loss": float("-inf")}, step=3)
    history = client.get_metric_history(run.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert math.isnan(history[0].value) and history[1].value > 1e300 and history[2].value == 0.5
    assert history[3].value < -1e300
    assert client.get_run(run.run_id).data.tags["cvops.nonfinite_metric_points"] == "3"


def test_system_metrics_arrive_as_mlflow_system_metrics(sdk_env, client):
    with cvops.start_run(experiment="sdk-lifecycle", run_name="system") as run:
        start_system_metrics(run, interval_s=0.3)
        time.sleep(1.5)
    metrics = client.get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_disabled_tracking_says_so_once_and_does_nothing(monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("cvops.tracking.run._warned_disabled", False)
    with caplog.at_level(logging.WARNING, logger="cvops"):
        first, second = cvops.start_run(), cvops.start_run()
    with first as run:
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_params({"lr": 0.1})
        assert run.child("eval").enabled is False
    assert not first.enabled and first.run_id is None and not second.enabled
    assert caplog.text.count("NOT tracked") == 1
