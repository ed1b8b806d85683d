"""The job spec rendered as a Kubernetes batch/v1 Job, and a sweep as a ConfigMap and an Indexed
Job, validated against the Kubernetes API schema.

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


# --------------------------------------------------------------------------- sweeps (cvops sweep --render k8s)

STORAGE_PASSWORD = "s3cret-optuna-password"
SWEEP = {
    "job": BASE,
    "study": "Shapes_LR.v2",
    "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
    "objective": {"metric": "bbox/AP", "direction": "max"},
    "trials": 40,
    "parallelism": 4,
    "gpus_per_trial": 1,
    "storage": f"postgresql+psycopg2://optuna:{STORAGE_PASSWORD}@db/optuna",
    "register": {"name": "shapes", "alias": "challenger"},
}


def render_sweep_objects(**changes) -> tuple[dict, dict]:
    from cvops.sweeps.kubernetes import render_sweep
    from cvops.sweeps.spec import parse_sweep_spec

    config_map, job = render_sweep(parse_sweep_spec({**SWEEP, **changes}), Provenance(git_commit="f" * 40))
    return config_map, job


def test_a_sweep_renders_a_configmap_and_an_indexed_job_valid_against_the_api_schema():
    config_map, job = render_sweep_objects()
    validate(config_map)
    validate(job)
    assert (config_map["kind"], job["kind"]) == ("ConfigMap", "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (40, 4)
    assert config_map["metadata"]["namespace"] == job["metadata"]["namespace"] == "vision"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    [trainer] = pod["containers"]
    # gpus_per_trial, not the template job's 2
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "8", "memory": "32Gi"}


def test_a_cpu_sweep_asks_for_no_gpu_even_when_its_template_job_does():
    _, job = render_sweep_objects(gpus_per_trial=0)
    validate(job)
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod


def test_a_trial_failing_is_not_a_pod_failure_but_a_wrong_spec_stops_the_job():
    _, job = render_sweep_objects()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert 3 <= job["spec"]["backoffLimit"] < 40


def test_the_pods_set_up_the_study_first_then_run_one_trial_each_from_the_configmap_spec():
    from cvops.sweeps.spec import parse_sweep_spec, template_job

    config_map, job = render_sweep_objects()
    pod = job["spec"]["template"]["spec"]
    [setup], [trainer] = pod["initContainers"], pod["containers"]
    assert setup["args"][:3] == ["cvops", "sweep", "--setup"] and trainer["args"][:3] == ["cvops", "sweep", "--worker"]
    assert setup["args"][3] == trainer["args"][3]
    assert setup["image"] == trainer["image"] == BASE["image"]
    spec_dir, spec_file = trainer["args"][3].rsplit("/", 1)
    volume = next(volume for volume in pod["volumes"] if volume.get("configMap"))
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    for container in (setup, trainer):
        assert {"name": volume["name"], "mountPath": spec_dir, "readOnly": True} in container["volumeMounts"]
    # What the pods read is the same sweep: the template job inline, the budget, the search space.
    in_pod = parse_sweep_spec(yaml.safe_load(config_map["data"][spec_file]))
    assert (in_pod.study, in_pod.trials, in_pod.objective.direction) == ("Shapes_LR.v2", 40, "maximize")
    assert in_pod.search_space["lr"].log and in_pod.registration.alias == "challenger"
    assert template_job(in_pod).command == BASE["command"]
    assert template_job(in_pod).experiment == BASE["experiment"]


def test_the_storage_url_and_credentials_come_from_secrets_never_inline():
    config_map, job = render_sweep_objects()
    assert STORAGE_PASSWORD not in yaml.safe_dump_all([config_map, job])
    pod = job["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        env = {item["name"]: item for item in container["env"]}
        assert env["CVOPS_SWEEP_STORAGE"]["valueFrom"] == {
            "secretKeyRef": {"name": "cvops-sweep-storage", "key": "url"}
        }
        assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]
    _, job = render_sweep_objects(kubernetes={"storage_secret": "team-optuna"})
    env = {item["name"]: item for item in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CVOPS_SWEEP_STORAGE"]["valueFrom"]["secretKeyRef"]["name"] == "team-optuna"


def test_object_names_are_dns_labels_and_keep_similar_studies_apart():
    import re

    from cvops.sweeps.kubernetes import object_name

    names = {object_name(study) for study in ("shapes-lr", "Shapes-LR", "shapes_lr", "x" * 100)}
    assert len(names) == 4
    for name in names:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name), name
    assert object_name("shapes-lr") == "cvops-sweep-shapes-lr"


def test_cli_renders_a_sweep_to_a_file_and_names_the_missing_tracking_url(tmp_path):
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump({**SWEEP, "job": {**BASE, "kubernetes": {}}}))
    command = [sys.executable, "-m", "cvops", "sweep", "--render", "k8s", str(spec_file)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "kubernetes.tracking_uri" in refused.stderr
    output = tmp_path / "sweep-k8s.yaml"
    done = subprocess.run(command + ["--tracking-uri", "http://mlflow.cvops:5000", "--trials", "12", "-o", str(output)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(output.read_text()))
    assert [item["kind"] for item in objects] == ["ConfigMap", "Job"]
    assert objects[1]["spec"]["completions"] == 12 and "trials: 12" in objects[0]["data"]["sweep.yaml"]
    for item in objects:
        validate(item)
