"""Trials as containers (``trials_in: docker``): each trial runs the template job's image as
``cvops submit`` would run the job (same environment, mounts, labels and tracking target, on the
worker's GPUs), plus the trial's ``CVOPS_TRIAL_*`` environment.

The sweep process stays on the host: it asks the study, creates the trial's run, streams the
container's log and tells the study how the container ended. The container reaches the tracking
server at the address ``cvops submit`` would give it (a loopback URL: the host network) and the
study at the sweep's own storage URL, so that URL must be reachable from the container's network
too (checked before the first trial). Finished trial containers are removed: their log went to
the sweep's output, and a long sweep would otherwise leave hundreds behind.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, TextIO
from urllib.parse import urlparse

from cvops.jobs.docker_backend import (
    _LOCAL_HOSTS,
    TRACKING_URI_LABEL,
    UI_URL_LABEL,
    SubmitError,
    Target,
    _container_exit,
    docker_client,
    image_provenance,
    inspect_image,
    resolve_target,
    stream_logs,
)
from cvops.jobs.gpus import GpuChoice
from cvops.jobs.plan import LABEL_PREFIX, Placement, Provenance, Tracking, docker_run_kwargs
from cvops.jobs.spec import JobSpec
from cvops.sweeps.runner import SweepError
from cvops.ui_links import run_ui_url

SWEEP_LABEL = f"{LABEL_PREFIX}sweep"
TRIAL_LABEL = f"{LABEL_PREFIX}trial"
# Ctrl-C: SIGTERM to the trial (through the container's init), SIGKILL after this long.
STOP_TIMEOUT_S = 10


def check_storage_reachable(storage_url: str, network: str | None) -> None:
    """The trial's pruning reports go to ``storage_url`` from inside the container: refuse the
    URLs that cannot work there, saying why (the URL's password is never printed)."""
    parsed = urlparse(storage_url)
    if parsed.scheme.startswith("sqlite"):
        raise SweepError("trials in containers need a database server as the study's storage, not a SQLite file "
                         "on this host; use the stack's PostgreSQL (docs/sweeps.md, 'Storage in the stack')")
    if parsed.hostname in _LOCAL_HOSTS and network != "host":
        raise SweepError(
            f"the study's storage is on this host's loopback ({parsed.hostname}), which a trial's container on "
            f"network {network or 'bridge'} cannot reach; give the storage an address the containers reach too "
            "(trials run on the host network when MLFLOW_TRACKING_URI is a loopback URL as well)"
        )


@dataclass
class TrialContainers:
    """What every trial container shares, decided once when the sweep starts."""

    client: Any
    job: JobSpec
    target: Target
    provenance: Provenance
    study: str
    username: str | None
    password: str | None
    gpu_indices: dict[str, int] = field(default_factory=dict)
    running: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def prepare(cls, job: JobSpec, study: str, tracking_uri: str, storage_url: str, provenance: Provenance,
                gpus_per_trial: int, err: TextIO = sys.stderr) -> "TrialContainers":
        from mlflow.utils.credentials import read_mlflow_creds

        try:
            client = docker_client()
            target = resolve_target(client, tracking_uri, None, None)
            check_storage_reachable(storage_url, target.network)
            digest, image_id = image_provenance(inspect_image(client, job.image, err))
        except SubmitError as error:
            raise SweepError(f"trials run in containers (trials_in: docker), and {error}") from None
        gpu_indices = {}
        if gpus_per_trial:
            from cvops.jobs.gpus import probe_gpus

            gpu_indices = {gpu.uuid: gpu.index for gpu in probe_gpus()}
        credentials = read_mlflow_creds()
        return cls(client, job, target, replace(provenance, image_digest=digest, image_id=image_id), study,
                   credentials.username, credentials.password, gpu_indices)

    def run(self, number: int, run_id: str, experiment_id: str, trial_env: dict[str, str],
            gpu_uuids: tuple[str, ...], write: Callable[[str], None]) -> int:
        """The trial's container from start to removal; its exit code."""
        gpus = GpuChoice(tuple(self.gpu_indices[uuid] for uuid in gpu_uuids), gpu_uuids) if gpu_uuids else None
        # The trial's variables go last, over the job's own env, as job_env applies `env:` last.
        job = self.job.model_copy(update={"env": {**self.job.env, **trial_env}, "gpus": len(gpu_uuids)})
        tracking = Tracking(uri=self.target.container_uri, username=self.username, password=self.password,
                            run_id=run_id)
        placement = Placement(network=self.target.network, gpus=gpus, extra_labels={
            TRACKING_URI_LABEL: self.target.submitter_uri,
            UI_URL_LABEL: run_ui_url(self.target.submitter_uri, experiment_id, run_id),
            SWEEP_LABEL: self.study,
            TRIAL_LABEL: str(number),
        })
        try:
            container = self.client.containers.run(**docker_run_kwargs(job, self.provenance, tracking, placement))
        except Exception as error:  # docker's APIError or a bad mount: the trial fails, the sweep goes on
            write(f"the container did not start: {error}\n")
            return 127
        with self.lock:
            self.running.add(container)
        try:
            stream_logs(container, write)
            exit_code, reason = _container_exit(container)
            if reason:
                write(f"container ended: {reason}\n")
            return exit_code
        finally:
            with self.lock:
                self.running.discard(container)
            container.remove(force=True)

    def stop(self) -> None:
        """Ctrl-C: stop every running trial container (each worker then records its exit)."""
        with self.lock:
            containers = list(self.running)
        stoppers = [threading.Thread(target=_stop, args=(container,), daemon=True) for container in containers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()


def _stop(container) -> None:
    import docker.errors

    try:
        container.stop(timeout=STOP_TIMEOUT_S)
    except docker.errors.NotFound:  # it ended and its worker removed it meanwhile
        pass
