"""The job spec as a Kubernetes ``batch/v1`` Job, for teams that outgrow one GPU box.

Same container, same environment contract as ``cvops submit`` on Docker, with the cluster's
idioms: GPUs as ``nvidia.com/gpu`` limits, credentials from a Secret (never inline), datasets
as read-only PVC or hostPath volumes, ``/dev/shm`` as a memory-backed emptyDir. The SDK creates
the run inside the pod (there is no submitter process to pre-create it).
"""
from __future__ import annotations

import re

from cvops.jobs.plan import CODE_MOUNT, Provenance, Tracking, job_env
from cvops.jobs.spec import JobSpec

_SECRET_KEYS = {"MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password"}
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


class RenderError(ValueError):
    """The spec uses something Kubernetes cannot express; the message names the field."""


def _label_value(value: str) -> str:
    # Label values: at most 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric.
    return _LABEL_VALUE.sub("-", value)[:63].strip("-_.") or "none"


def _quantity(size: int) -> str:
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _gpu_count(spec: JobSpec) -> int:
    if spec.gpus == "all":
        raise RenderError("gpus: all has no meaning on a cluster (a pod gets what it requests); give a count")
    if isinstance(spec.gpus, list):
        raise RenderError(
            f"gpus: device ids {spec.gpus} pick GPUs on one host; the scheduler picks them on a cluster, give a count"
        )
    return spec.gpus


def render_job(spec: JobSpec, provenance: Provenance, tracking_uri: str | None = None) -> dict:
    """The Job manifest (a plain dict, ready for ``yaml.safe_dump``)."""
    uri = tracking_uri or spec.kubernetes.tracking_uri
    if not uri:
        raise RenderError(
            "kubernetes.tracking_uri: the tracking server's URL as pods see it is needed "
            "(set it in the job file or pass --tracking-uri)"
        )
    gpus = _gpu_count(spec)
    plain_env = job_env(spec, provenance, Tracking(uri=uri))
    env = [{"name": name, "value": value} for name, value in plain_env.items()]
    env += [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": spec.kubernetes.credentials_secret, "key": key}},
        }
        for name, key in _SECRET_KEYS.items()
    ]

    volumes: list[dict] = []
    mounts: list[dict] = []
    for index, dataset in enumerate(spec.datasets):
        name = f"dataset-{index}"
        if dataset.pvc:
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": dataset.pvc, "readOnly": True}})
        else:
            volumes.append({"name": name, "hostPath": {"path": str(dataset.source), "type": "Directory"}})
        mount = {"name": name, "mountPath": dataset.target, "readOnly": True}
        if dataset.sub_path:
            mount["subPath"] = dataset.sub_path
        mounts.append(mount)
    if spec.code is not None:
        volumes.append({"name": "code", "hostPath": {"path": str(spec.code), "type": "Directory"}})
        mounts.append({"name": "code", "mountPath": CODE_MOUNT, "readOnly": True})
    if spec.shm_size:
        # Docker's --shm-size on a cluster: pods get a 64 MiB /dev/shm, too small for data loaders.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(spec.shm_size)}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})

    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    if spec.resources.cpus:
        limits["cpu"] = requests["cpu"] = f"{spec.resources.cpus:g}"
    if spec.resources.memory:
        limits["memory"] = requests["memory"] = _quantity(spec.resources.memory)

    container: dict = {
        "name": "trainer",
        "image": spec.image,
        # The image's ENTRYPOINT (`cvops train --`) stays; the job's command is its argument list.
        "args": list(spec.command),
        "env": env,
        "volumeMounts": mounts,
    }
    if spec.code is not None:
        container["workingDir"] = CODE_MOUNT
    if limits:
        container["resources"] = {"limits": limits, **({"requests": requests} if requests else {})}

    labels = {
        "app.kubernetes.io/name": "cvops-trainer",
        "app.kubernetes.io/managed-by": "cvops",
        "cvops.io/job": _label_value(spec.job_name),
        "cvops.io/framework": spec.framework,
        "cvops.io/experiment": _label_value(spec.experiment),
    }
    pod_spec: dict = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True},
        "containers": [container],
        "volumes": volumes,
    }
    if spec.kubernetes.service_account:
        pod_spec["serviceAccountName"] = spec.kubernetes.service_account
    if gpus:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    metadata: dict = {"generateName": f"cvops-{spec.job_name}-", "labels": labels}
    if spec.kubernetes.namespace:
        metadata["namespace"] = spec.kubernetes.namespace
    job_spec: dict = {
        # A failed training run is a result to look at in MLflow, not something to retry blindly.
        "backoffLimit": 0,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if spec.kubernetes.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.kubernetes.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
