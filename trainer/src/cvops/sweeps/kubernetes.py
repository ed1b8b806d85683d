"""A sweep as Kubernetes objects (`cvops sweep --render k8s`): the cluster's scheduler places the
trials, the study in PostgreSQL hands them out.

Two objects: a ConfigMap with the sweep spec (the template job inline, no storage URL) and an
Indexed Job, ``completions`` = the trial budget, ``parallelism`` = the spec's. Its pod is the
template job's pod as :func:`cvops.jobs.kubernetes.render_job` renders it (image, environment,
credentials from a Secret, datasets, GPUs = ``gpus_per_trial``), with two containers running
:mod:`cvops.sweeps.runner`: the init container ``setup`` (``cvops sweep --setup``: creates the
study and the parent run, or finds them; of the first pods exactly one creates) and ``trainer``
(``cvops sweep --worker``: one trial, asked from the study, run in place, told, exit). The
storage URL comes from a Secret, like the tracking credentials.
"""
from __future__ import annotations

import copy
import hashlib
import re

from cvops.jobs.kubernetes import render_job
from cvops.jobs.plan import Provenance
from cvops.sweeps.spec import STORAGE_ENV, SweepSpec, template_job

SPEC_DIR = "/etc/cvops/sweep"
SPEC_FILE = "sweep.yaml"
STORAGE_SECRET_KEY = "url"
# `cvops sweep` exits 2 when the spec, the study or the configuration is wrong: the same in every pod.
CONFIGURATION_EXIT_CODE = 2
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def object_name(study: str) -> str:
    """A DNS label for the study's objects; a short hash keeps two studies whose names differ
    only in case or punctuation apart."""
    slug = _NOT_DNS.sub("-", study.lower()).strip("-")
    if slug != study:
        slug = f"{slug[:40].strip('-')}-{hashlib.sha256(study.encode()).hexdigest()[:6]}"
    return f"cvops-sweep-{slug[:50].strip('-')}"


def pod_spec_document(spec: SweepSpec) -> dict:
    """The sweep spec as the pods read it: self-contained (the template job inline), and without
    a storage URL, which may hold a password (the pods get it from the Secret)."""
    document = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"job", "storage"})
    document["job"] = template_job(spec).model_dump(mode="json", exclude_none=True)
    return document


def render_sweep(spec: SweepSpec, provenance: Provenance, tracking_uri: str | None = None) -> list[dict]:
    """[ConfigMap, Job] manifests (plain dicts, for ``yaml.safe_dump_all``)."""
    import yaml

    job = template_job(spec)
    name = object_name(spec.study)
    spec_path = f"{SPEC_DIR}/{SPEC_FILE}"
    worker = job.model_copy(update={"command": ["cvops", "sweep", "--worker", spec_path], "gpus": spec.gpus_per_trial})
    manifest = render_job(worker, provenance, tracking_uri)
    namespace = manifest["metadata"].get("namespace")
    labels = {**manifest["metadata"]["labels"], "cvops.io/sweep": name}

    config_map: dict = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {SPEC_FILE: yaml.safe_dump(pod_spec_document(spec), sort_keys=False)},
    }
    # Fixed names, so `kubectl apply` is idempotent and one study has one Job.
    manifest["metadata"] = {"name": name, "labels": labels}
    if namespace:
        config_map["metadata"]["namespace"] = manifest["metadata"]["namespace"] = namespace

    pod = manifest["spec"]["template"]["spec"]
    manifest["spec"]["template"]["metadata"]["labels"] = dict(labels)
    [trainer] = pod["containers"]
    trainer["env"].append({
        "name": STORAGE_ENV,
        "valueFrom": {"secretKeyRef": {"name": spec.kubernetes.storage_secret, "key": STORAGE_SECRET_KEY}},
    })
    trainer["volumeMounts"].append({"name": "sweep-spec", "mountPath": SPEC_DIR, "readOnly": True})
    pod["volumes"].append({"name": "sweep-spec", "configMap": {"name": name}})
    # The parent run exists before any trial starts: the init container creates it with the study.
    pod["initContainers"] = [{
        "name": "setup",
        "image": trainer["image"],
        "args": ["cvops", "sweep", "--setup", spec_path],
        "env": copy.deepcopy(trainer["env"]),  # a copy: YAML would write a shared list as an alias
        "volumeMounts": [{"name": "sweep-spec", "mountPath": SPEC_DIR, "readOnly": True}],
    }]
    manifest["spec"].update({
        "completionMode": "Indexed",
        "completions": spec.trials,
        "parallelism": spec.parallelism,
        # A trial that fails is a result (the worker tells the study and exits 0); a pod fails only
        # when its worker could not run, e.g. the database was unreachable: retry a few of those.
        "backoffLimit": max(3, spec.trials // 10),
        "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"operator": "In", "values": [CONFIGURATION_EXIT_CODE]}},
            # Preempted, evicted, drained: the study fails the lost trial (no heartbeat), the pod reruns.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
    })
    return [config_map, manifest]


def manifests_yaml(manifests: list[dict]) -> str:
    """The manifests as one YAML stream, the ConfigMap's sweep.yaml as a readable block."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    _Dumper.add_representer(str, text)
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False)
