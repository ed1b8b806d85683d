"""The job spec rendered as a Kubernetes batch/v1 Job, validated against the Kubernetes API schema.

The schema comes from `kubernetes-validate` (the API server's OpenAPI definitions converted to
JSON Schema, one set per Kubernetes release, checked offline with `jsonschema`); strict mode
also rejects fields the API does not know, which a typo would otherwise hide until `kubectl`.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cvops.jobs.kubernetes import RenderError, render_job
from cvops.jobs.plan import Provenance
from cvops.jobs.spec import parse_job_spec

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (requirements-dev.txt) holds the schemas")

KUBERNETES_VERSION = "1.30.0"  # a release every supported cluster still serves batch/v1 Job at

BASE = {
    "name": "shapes",
    "framework": "detectron2",
    "image": "registry.example.org/cvops/trainer-detectron2@sha256:" + "d" * 64,
    "command": ["python", "train.py", "--config-file", "configs/shapes.yaml"],
    "experiment": "Shapes / detection",
    "tags": {"team": "vision"},
    "gpus": 2,
    "shm_size": "8g",
    "resources": {"cpus": 8, "memory": "32g"},
    "env": {"OMP_NUM_THREADS": "4"},
    "datasets": [
        {"pvc": "coco-2017", "sub_path": "train", "target": "/data/coco"},
        {"source": "/mnt/datasets/shapes", "target": "/data/shapes"},
    ],
    "kubernetes": {"namespace": "vision", "tracking_uri": "http://mlflow.cvops.svc.cluster.local:5000"},
}


def render(**changes) -> dict:
    spec = parse_job_spec({**BASE, **changes})
    return render_job(spec, Provenance(git_commit="f" * 40, image_digest="sha256:" + "d" * 64))


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_rendered_job_is_valid_against_the_api_schema():
    manifest = render()
    validate(manifest)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"]["namespace"] == "vision"
    assert manifest["spec"]["backoffLimit"] == 0


def test_gpus_resources_and_shm():
    pod = render()["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "8", "memory": "32Gi"}
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["restartPolicy"] == "Never"


def test_credentials_come_from_a_secret_never_inline():
    env = render()["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {item["name"]: item for item in env}
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
        assert by_name[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": "cvops-mlflow-credentials", "key": key}},
        }
    assert by_name["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.cvops.svc.cluster.local:5000"
    assert by_name["CVOPS_GIT_COMMIT"]["value"] == "f" * 40
    assert by_name["CVOPS_IMAGE_DIGEST"]["value"] == "sha256:" + "d" * 64
    assert "MLFLOW_RUN_ID" not in by_name  # the SDK creates the run inside the pod


def test_datasets_are_read_only_volumes():
    pod = render()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dataset-0"]["persistentVolumeClaim"] == {"claimName": "coco-2017", "readOnly": True}
    assert volumes["dataset-1"]["hostPath"] == {"path": "/mnt/datasets/shapes", "type": "Directory"}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["dataset-0"] == {"name": "dataset-0", "mountPath": "/data/coco", "readOnly": True, "subPath": "train"}
    assert mounts["dataset-1"]["readOnly"] is True


def test_labels_are_valid_label_values():
    import re

    assert render()["metadata"]["labels"]["cvops.io/experiment"] == "Shapes-detection"
    # The schema does not check label syntax; the API server does (63 characters, [A-Za-z0-9_.-]).
    for value in render(experiment="é" * 10 + "x" * 100)["metadata"]["labels"].values():
        assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", value), value


def test_cpu_job_has_no_gpu_request_and_still_validates():
    manifest = render(gpus=0, shm_size=None, resources={})
    validate(manifest)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert "resources" not in container
    assert "tolerations" not in manifest["spec"]["template"]["spec"]


@pytest.mark.parametrize("gpus, message", [("all", "give a count"), ([0, 1], "the scheduler picks them")])
def test_host_only_gpu_requests_are_refused(gpus, message):
    with pytest.raises(RenderError, match=message):
        render(gpus=gpus)


def test_tracking_uri_is_required():
    with pytest.raises(RenderError, match="kubernetes.tracking_uri"):
        render(kubernetes={})


def test_schema_check_catches_a_broken_manifest():
    # The validator is only worth something if it rejects what kubectl would.
    manifest = render()
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"cores": 8}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest)
    manifest = render()
    manifest["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest)


def test_cli_renders_the_example_to_valid_yaml():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "trainer" / "examples" / "keras" / "job.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "cvops", "submit", "--render", "k8s", str(example)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    validate(yaml.safe_load(done.stdout))
