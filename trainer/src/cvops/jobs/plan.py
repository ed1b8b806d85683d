"""What a job's container gets, decided once for both backends (Docker and Kubernetes).

:class:`Provenance` is what the submitter learnt about the code and the image; :func:`job_env`
is the environment contract between ``cvops submit`` and the SDK inside the container (the
names are the ones :mod:`cvops.config` reads); :func:`docker_run_kwargs` and
:func:`docker_cli_args` turn a spec into ``docker`` SDK arguments and the equivalent
``docker run`` command line.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cvops.config import TAG_ENV_PREFIX
from cvops.jobs.gpus import GpuChoice
from cvops.jobs.spec import CODE_MOUNT, JobSpec

LABEL_PREFIX = "cvops."
# The image's ENTRYPOINT (`cvops train --`) supervises the command and closes the run if the
# command dies without doing so (trainer/images/*/Dockerfile, cvops.jobs.runtime).
ENTRYPOINT = ("cvops", "train", "--")


@dataclass(frozen=True)
class Provenance:
    """Where the job's code and image come from, recorded as run tags."""

    git_commit: str | None = None
    git_dirty: bool = False
    image_digest: str | None = None  # the registry's sha256:…, when the image came from one
    image_id: str | None = None  # the local image id: names a local build on its host only


@dataclass(frozen=True)
class Tracking:
    """How the container reaches the tracking server and which run it continues."""

    uri: str | None = None
    username: str | None = None
    password: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where the container runs on this host: network and the GPUs chosen for it."""

    network: str | None = None
    gpus: GpuChoice | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)


def git_provenance(job_dir: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the git checkout holding ``job_dir``; (None, False) outside git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(job_dir), *args], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, False
    # Only the job's own folder counts: an unrelated edit elsewhere in a monorepo is not the job's.
    status = git("status", "--porcelain", "--untracked-files=normal", "--", ".")
    return commit, bool(status)


def offline_provenance(spec: JobSpec) -> Provenance:
    """Provenance for a job rendered, not run: the digest is known only when the image is named by digest."""
    commit, dirty = git_provenance(spec.job_dir)
    digest = spec.image.split("@", 1)[1] if "@" in spec.image else None
    return Provenance(git_commit=commit, git_dirty=dirty, image_digest=digest)


def job_env(spec: JobSpec, provenance: Provenance, tracking: Tracking) -> dict[str, str]:
    """The environment of the job's container, secrets included (Kubernetes swaps those for refs)."""
    env = {
        "PYTHONUNBUFFERED": "1",
        "CVOPS_IN_CONTAINER": "1",
        # MLflow imports GitPython, which warns for 15 lines when the image has no git; the
        # commit is recorded from the submitting host (CVOPS_GIT_COMMIT) instead.
        "GIT_PYTHON_REFRESH": "quiet",
        "MLFLOW_EXPERIMENT_NAME": spec.experiment,
        "CVOPS_IMAGE": spec.image,
        f"{TAG_ENV_PREFIX}FRAMEWORK": spec.framework,
    }
    env.update({f"{TAG_ENV_PREFIX}{name.upper()}": value for name, value in spec.tags.items()})
    optional = {
        "MLFLOW_TRACKING_URI": tracking.uri,
        "MLFLOW_TRACKING_USERNAME": tracking.username,
        "MLFLOW_TRACKING_PASSWORD": tracking.password,
        "MLFLOW_RUN_ID": tracking.run_id,
        "CVOPS_RUN_NAME": spec.run_name,
        "CVOPS_IMAGE_DIGEST": provenance.image_digest,
        "CVOPS_IMAGE_ID": provenance.image_id,
        "CVOPS_GIT_COMMIT": provenance.git_commit,
    }
    env.update({name: value for name, value in optional.items() if value})
    if provenance.git_commit:
        env[f"{TAG_ENV_PREFIX}GIT_DIRTY"] = str(provenance.git_dirty).lower()
    env.update(spec.env)
    return env


def job_labels(spec: JobSpec, tracking: Tracking, placement: Placement) -> dict[str, str]:
    """Labels by which `cvops ps/logs/stop` find the job's container later."""
    labels = {
        f"{LABEL_PREFIX}job": spec.job_name,
        f"{LABEL_PREFIX}framework": spec.framework,
        f"{LABEL_PREFIX}experiment": spec.experiment,
    }
    if placement.gpus:
        labels[f"{LABEL_PREFIX}gpus"] = ",".join(map(str, placement.gpus.indices))
    if tracking.run_id:
        labels[f"{LABEL_PREFIX}run_id"] = tracking.run_id
    if spec.run_name:
        labels[f"{LABEL_PREFIX}run_name"] = spec.run_name
    labels.update(placement.extra_labels)
    return labels


def container_name(spec: JobSpec, tracking: Tracking) -> str | None:
    return f"cvops-{spec.job_name}-{tracking.run_id[:8]}" if tracking.run_id else None


def _volumes(spec: JobSpec) -> dict[str, dict[str, str]]:
    volumes = {str(mount.source): {"bind": mount.target, "mode": "ro"} for mount in spec.datasets}
    if spec.code is not None:
        volumes[str(spec.code)] = {"bind": CODE_MOUNT, "mode": "ro"}
    return volumes


def _device_request(spec: JobSpec, placement: Placement):
    from docker.types import DeviceRequest

    if placement.gpus:
        # UUIDs, not indices: the container runtime and NVML may number devices differently.
        return DeviceRequest(device_ids=list(placement.gpus.uuids), capabilities=[["gpu"]])
    # Not placed on this host's GPUs (a rendered command line): the spec's request as written.
    if spec.gpus == "all":
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    if isinstance(spec.gpus, list):
        return DeviceRequest(device_ids=[str(index) for index in spec.gpus], capabilities=[["gpu"]])
    return DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])


def docker_run_kwargs(
    spec: JobSpec, provenance: Provenance, tracking: Tracking, placement: Placement
) -> dict:
    """Keyword arguments for ``docker.DockerClient().containers.run`` (detached)."""
    pvc_mounts = [index for index, mount in enumerate(spec.datasets) if mount.pvc]
    if pvc_mounts:
        raise ValueError(
            f"datasets[{pvc_mounts[0]}].pvc is a Kubernetes claim; `cvops submit` on Docker needs a host "
            "folder as source (or render the job with --render k8s)"
        )
    kwargs: dict = {
        "image": spec.image,
        "command": list(spec.command),
        "environment": job_env(spec, provenance, tracking),
        "labels": job_labels(spec, tracking, placement),
        "volumes": _volumes(spec),
        "detach": True,
        # PID 1 that reaps zombies and forwards signals, so `cvops stop` reaches the trainer.
        "init": True,
    }
    name = container_name(spec, tracking)
    if name:
        kwargs["name"] = name
    if spec.code is not None:
        kwargs["working_dir"] = CODE_MOUNT
    if placement.network:
        kwargs["network"] = placement.network
    if spec.shm_size:
        kwargs["shm_size"] = spec.shm_size
    if spec.resources.cpus:
        kwargs["nano_cpus"] = int(spec.resources.cpus * 1e9)
    if spec.resources.memory:
        kwargs["mem_limit"] = spec.resources.memory
    if spec.wants_gpu:
        kwargs["device_requests"] = [_device_request(spec, placement)]
    return kwargs


def docker_cli_args(kwargs: dict, *, secret_names: frozenset[str] = frozenset()) -> list[str]:
    """The ``docker run`` command equivalent to ``kwargs``; secrets are passed by name
    (``-e NAME``, read from the caller's environment) so the printed line holds no password."""
    args = ["docker", "run", "--detach", "--init"]
    if "name" in kwargs:
        args += ["--name", kwargs["name"]]
    if "network" in kwargs:
        args += ["--network", kwargs["network"]]
    for key, value in kwargs["labels"].items():
        args += ["--label", f"{key}={value}"]
    for key, value in kwargs["environment"].items():
        args += ["--env", key if key in secret_names else f"{key}={value}"]
    for source, bind in kwargs["volumes"].items():
        args += ["--volume", f"{source}:{bind['bind']}:{bind['mode']}"]
    if "working_dir" in kwargs:
        args += ["--workdir", kwargs["working_dir"]]
    if "shm_size" in kwargs:
        args += ["--shm-size", str(kwargs["shm_size"])]
    if "nano_cpus" in kwargs:
        args += ["--cpus", f"{kwargs['nano_cpus'] / 1e9:g}"]
    if "mem_limit" in kwargs:
        args += ["--memory", str(kwargs["mem_limit"])]
    for request in kwargs.get("device_requests", []):
        if request.get("DeviceIDs"):
            # docker parses --gpus as CSV: a device list needs its own quotes ('"device=a,b"').
            args += ["--gpus", '"device=' + ",".join(request["DeviceIDs"]) + '"']
        else:
            args += ["--gpus", "all" if request["Count"] == -1 else str(request["Count"])]
    return [*args, kwargs["image"], *kwargs["command"]]
