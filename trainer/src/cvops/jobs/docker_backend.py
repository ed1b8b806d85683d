"""Running a job spec as a container on this host's Docker engine, tracked on the cvops stack.

``submit`` finds the tracking server (the compose stack's ``mlflow`` service, or a URL given),
picks GPUs, pre-creates the MLflow run so its link is printed before the container starts,
runs the container with the run id and credentials in its environment, streams its log under a
progress line, and closes the run if the container died without doing so. ``ps``/``logs``/
``stop`` find job containers again by their ``cvops.*`` labels.
"""
from __future__ import annotations

import codecs
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TextIO
from urllib.parse import urlparse

from cvops.jobs import gpus as gpu_selection
from cvops.jobs.plan import LABEL_PREFIX, Placement, Provenance, Tracking, docker_run_kwargs, git_provenance
from cvops.jobs.runtime import EXIT_CODE_TAG
from cvops.jobs.spec import JobSpec, check_host_paths
from cvops.ui_links import run_ui_url

RUN_ID_LABEL = f"{LABEL_PREFIX}run_id"
TRACKING_URI_LABEL = f"{LABEL_PREFIX}tracking_uri"
UI_URL_LABEL = f"{LABEL_PREFIX}ui_url"
GPUS_LABEL = f"{LABEL_PREFIX}gpus"
STACK_SERVICE = "mlflow"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


class SubmitError(RuntimeError):
    """Something outside the job spec stops the submission; the message says what to do."""


def docker_client():
    try:
        import docker
    except ImportError:
        raise SubmitError("the docker SDK is missing: `pip install 'cvops[jobs]'`") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as error:  # docker raises DockerException or requests' errors, both mean "no engine"
        raise SubmitError(f"cannot reach the Docker engine ({error}); is dockerd running and DOCKER_HOST right?") from None
    return client


# ----------------------------------------------------------------------------- where to track


@dataclass(frozen=True)
class Target:
    """The tracking server as this machine sees it and as the job's container sees it."""

    submitter_uri: str
    container_uri: str
    network: str | None


def _stack_containers(client) -> list:
    return client.containers.list(filters={"label": f"com.docker.compose.service={STACK_SERVICE}", "status": "running"})


def _server_port(container) -> int:
    env = dict(item.split("=", 1) for item in container.attrs["Config"].get("Env") or [] if "=" in item)
    return int(env.get("MLFLOW_PORT", "5000"))


def _published_uri(container, port: int) -> str | None:
    bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostPort"):
            host = binding.get("HostIp") or "127.0.0.1"
            return f"http://{'127.0.0.1' if host in _LOCAL_HOSTS else host}:{binding['HostPort']}"
    return None


def resolve_target(client, tracking_uri: str | None, network: str | None, environ_uri: str | None) -> Target:
    """Where the job tracks: ``--tracking-uri`` if given, else the running compose stack."""
    if tracking_uri:
        if network is None and urlparse(tracking_uri).hostname in _LOCAL_HOSTS:
            # A loopback URL means "this host": only the host network reaches it from a container.
            network = "host"
        return Target(submitter_uri=tracking_uri, container_uri=tracking_uri, network=network)
    stacks = _stack_containers(client)
    if network:
        stacks = [c for c in stacks if network in (c.attrs["NetworkSettings"].get("Networks") or {})]
    if not stacks:
        where = f" on network {network}" if network else ""
        raise SubmitError(
            f"no running cvops stack found (no running container of compose service '{STACK_SERVICE}'{where}). "
            "Start it with `docker compose up -d`, or pass --tracking-uri URL"
        )
    if len(stacks) > 1:
        projects = sorted({c.labels.get("com.docker.compose.project", c.name) for c in stacks})
        raise SubmitError(f"several cvops stacks are running ({', '.join(projects)}); choose one with --network NAME")
    server = stacks[0]
    networks = list(server.attrs["NetworkSettings"].get("Networks") or {})
    stack_network = network or next((n for n in networks if n.endswith("_default")), networks[0])
    port = _server_port(server)
    submitter_uri = environ_uri or _published_uri(server, port)
    if not submitter_uri:
        raise SubmitError(
            "the stack's MLflow port is not published on this host; set MLFLOW_TRACKING_URI to the URL "
            "you open in the browser, or pass --tracking-uri"
        )
    host = f"{STACK_SERVICE}:{port}"
    if not _host_header_accepted(submitter_uri, host):
        # cvops' server always answers mlflow:*; a server with its own MLFLOW_SERVER_ALLOWED_HOSTS may not.
        address = server.attrs["NetworkSettings"]["Networks"][stack_network]["IPAddress"]
        print(
            f"[cvops] the server refuses the Host header {host!r}; the job uses its address {address} instead, "
            f"which changes if the server container is recreated. Add {STACK_SERVICE},{STACK_SERVICE}:* to the "
            "server's MLFLOW_SERVER_ALLOWED_HOSTS to fix this",
            file=sys.stderr,
        )
        host = f"{address}:{port}"
    return Target(submitter_uri=submitter_uri, container_uri=f"http://{host}", network=stack_network)


def _host_header_accepted(uri: str, host: str) -> bool:
    """Whether the server answers requests naming it ``host`` (as jobs on its network do)."""
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                                params={"max_results": 1}, headers={"Host": host}, timeout=10)
    except requests.RequestException:
        return True  # unreachable from here: pre-creating the run reports that, with its fix
    return not (response.status_code == 403 and "Host header" in response.text)


# ----------------------------------------------------------------------------- image, GPUs


def image_provenance(inspected: dict) -> tuple[str | None, str]:
    """(registry digest ``sha256:…`` or None, local image id) from ``docker image inspect``. A
    local build has no registry digest: its id names it on this host only and is not pullable,
    so it is recorded as ``image_id``, never as a digest appended to the image's name."""
    repo_digests = inspected.get("RepoDigests") or []
    digest = repo_digests[0].split("@", 1)[1] if repo_digests else None
    return digest, inspected["Id"]


def inspect_image(client, image: str, out: TextIO) -> dict:
    """``docker image inspect`` of the job's image, pulling it when absent."""
    import docker.errors

    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        print(f"[cvops] pulling {image} …", file=out, flush=True)
        try:
            found = client.images.pull(image)
        except docker.errors.APIError as error:
            raise SubmitError(
                f"image {image} is not on this host and cannot be pulled ({error.explanation or error}); "
                "build it first (docs/jobs.md, 'Images')"
            ) from None
    return found.attrs


def held_gpu_indices(client) -> set[int]:
    held: set[int] = set()
    for container in client.containers.list(filters={"label": GPUS_LABEL}):
        held.update(int(index) for index in container.labels.get(GPUS_LABEL, "").split(",") if index.strip())
    return held


# ----------------------------------------------------------------------------- the run


def precreate_run(uri: str, spec: JobSpec, provenance: Provenance) -> tuple[str, str]:
    """Creates the run the container will continue; returns (experiment_id, run_id)."""
    from cvops.tracking.transport import Transport, TransportError

    tags = {"framework": spec.framework, "image": spec.image, **spec.tags}
    if provenance.image_digest:
        tags["image_digest"] = provenance.image_digest
    if provenance.image_id:
        tags["image_id"] = provenance.image_id
    if provenance.git_commit:
        tags.update(
            {
                "git_commit": provenance.git_commit,
                "git_dirty": str(provenance.git_dirty).lower(),
                "mlflow.source.git.commit": provenance.git_commit,
            }
        )
    if spec.source_file:
        tags["mlflow.source.name"] = str(spec.source_file)
    tags[f"{LABEL_PREFIX}job"] = spec.job_name
    transport = Transport(uri)
    try:
        experiment_id = transport.experiment_id(spec.experiment)
        run = transport.create_run(experiment_id, int(time.time() * 1000), spec.run_name, tags)
    except TransportError as error:
        raise SubmitError(
            f"cannot create the run on {uri}: {error}. Check the URL and your credentials "
            "(MLFLOW_TRACKING_USERNAME/PASSWORD or ~/.mlflow/credentials); `cvops doctor` explains more"
        ) from None
    return experiment_id, run["run_id"]


def finish_orphaned_run(uri: str, run_id: str, exit_code: int, reason: str | None) -> str | None:
    """The container is gone: end its run if neither the job nor its entrypoint did."""
    from cvops.tracking.transport import Transport, TransportError

    transport = Transport(uri)
    try:
        if transport.get_run(run_id)["info"]["status"] != "RUNNING":
            return None
        status = "FINISHED" if exit_code == 0 else ("KILLED" if reason == "stopped" else "FAILED")
        tags = [(EXIT_CODE_TAG, str(exit_code))] + ([(f"{LABEL_PREFIX}exit_reason", reason)] if reason else [])
        transport.log_batch(run_id, tags=tags)
        transport.update_run(run_id, status, end_ms=int(time.time() * 1000))
        return status
    except TransportError as error:
        print(f"[cvops] could not close run {run_id}: {error}", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressLine:
    """The log, with a status line under it: elapsed time and the run's latest metrics.

    On a terminal the line is redrawn in place (stderr); elsewhere (CI logs) it is printed as a
    plain line every ``plain_interval_s`` so logs stay readable."""

    def __init__(self, out: TextIO, status: TextIO, describe: Callable[[], str], plain_interval_s: float = 30.0):
        self.out, self.status, self.describe = out, status, describe
        self.interactive = status.isatty()
        self.plain_interval_s = plain_interval_s
        self._lock = threading.Lock()
        self._line = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="cvops-progress", daemon=True)

    def __enter__(self) -> "ProgressLine":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self.interactive and self._line:
                self.status.write("\r\x1b[K")
                self.status.flush()

    def log(self, text: str) -> None:
        with self._lock:
            if self.interactive and self._line:
                self.status.write("\r\x1b[K")
                self.status.flush()
            self.out.write(text)
            self.out.flush()
            if self.interactive and self._line:
                self.status.write(self._line)
                self.status.flush()

    def _refresh(self) -> None:
        interval = 2.0 if self.interactive else self.plain_interval_s
        while not self._stop.wait(interval):
            try:
                line = self.describe()
            except Exception as error:  # progress is decoration: never let it break the stream
                line = f"[cvops] progress unavailable: {error}"
            with self._lock:
                if self.interactive:
                    self._line = line[: 200]
                    self.status.write("\r\x1b[K" + self._line)
                else:
                    self.status.write(line + "\n")
                self.status.flush()


def run_progress(uri: str, run_id: str, started: float) -> Callable[[], str]:
    from cvops.tracking.transport import Transport, TransportError

    transport = Transport(uri, timeout_s=10.0)

    def describe() -> str:
        try:
            run = transport.get_run(run_id)
        except TransportError:
            return f"[cvops] {_duration(time.time() - started)} · the tracking server is not answering (the job spools)"
        metrics = (run.get("data") or {}).get("metrics") or []
        step = max((int(m.get("step", 0)) for m in metrics), default=None)
        # Losses first: they are what a user watches while a job trains.
        shown = sorted(metrics, key=lambda m: ("loss" not in m["key"], m["key"]))[:3]
        parts = [f"[cvops] {run['info']['status'].lower()} {_duration(time.time() - started)}"]
        if step is not None:
            parts.append(f"step {step}")
        parts += [f"{m['key']} {m['value']:.4g}" for m in shown]
        return " · ".join(parts)

    return describe


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class SubmitOptions:
    tracking_uri: str | None = None
    network: str | None = None
    wait_for_gpu: bool = False
    detach: bool = False


def _container_exit(container) -> tuple[int, str | None]:
    result = container.wait()
    container.reload()
    state = container.attrs.get("State") or {}
    reason = "OOMKilled" if state.get("OOMKilled") else None
    return int(result.get("StatusCode", 1)), reason


def submit(spec: JobSpec, options: SubmitOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    from mlflow.utils.credentials import read_mlflow_creds

    from cvops.config import load_settings

    check_host_paths(spec)
    client = docker_client()
    target = resolve_target(client, options.tracking_uri, options.network, load_settings().tracking_uri)
    choice = None
    if spec.wants_gpu:
        choice = gpu_selection.wait_for_gpus(
            spec.gpus,
            lambda: held_gpu_indices(client),
            wait=options.wait_for_gpu,
            on_wait=lambda why: print(f"[cvops] waiting for GPUs: {why}", file=err, flush=True),
        )
    commit, dirty = git_provenance(spec.job_dir)
    digest, image_id = image_provenance(inspect_image(client, spec.image, err))
    provenance = Provenance(git_commit=commit, git_dirty=dirty, image_digest=digest, image_id=image_id)
    experiment_id, run_id = precreate_run(target.submitter_uri, spec, provenance)
    link = run_ui_url(target.submitter_uri, experiment_id, run_id)
    print(f"[cvops] run {run_id} in experiment '{spec.experiment}': {link}", file=err, flush=True)
    credentials = read_mlflow_creds()
    tracking = Tracking(
        uri=target.container_uri, username=credentials.username, password=credentials.password, run_id=run_id
    )
    placement = Placement(
        network=target.network,
        gpus=choice,
        extra_labels={TRACKING_URI_LABEL: target.submitter_uri, UI_URL_LABEL: link},
    )
    started = time.time()
    try:
        container = client.containers.run(**docker_run_kwargs(spec, provenance, tracking, placement))
    except Exception as error:
        finish_orphaned_run(target.submitter_uri, run_id, 127, "container did not start")
        raise SubmitError(f"the container did not start: {error}") from None
    print(f"[cvops] container {container.name} started", file=err, flush=True)
    if options.detach:
        print(f"[cvops] detached: `cvops logs {run_id[:12]} -f` to follow, `cvops stop {run_id[:12]}` to stop", file=err)
        return 0
    try:
        with ProgressLine(out, err, run_progress(target.submitter_uri, run_id, started)) as progress:
            stream_logs(container, progress.log)
        exit_code, reason = _container_exit(container)
    except KeyboardInterrupt:
        print(
            f"\n[cvops] detached; the job keeps running: `cvops logs {run_id[:12]} -f`, `cvops stop {run_id[:12]}`",
            file=err,
        )
        return 130
    closed = finish_orphaned_run(target.submitter_uri, run_id, exit_code, reason)
    status = closed or _run_status(target.submitter_uri, run_id)
    note = f" ({reason})" if reason else ""
    print(
        f"[cvops] run {run_id} {status} · exit code {exit_code}{note} · {_duration(time.time() - started)} · {link}",
        file=err,
        flush=True,
    )
    return exit_code


def _run_status(uri: str, run_id: str) -> str:
    from cvops.tracking.transport import Transport, TransportError

    try:
        return Transport(uri).get_run(run_id)["info"]["status"]
    except TransportError:
        return "status unknown"


def log_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines from the byte chunks Docker streams (a chunk may end mid-line or mid-UTF-8)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for line in lines:
            # Progress bars redraw with \r: keep only the last state of each line.
            yield line.rstrip("\r").rsplit("\r", 1)[-1] + "\n"
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending.rsplit("\r", 1)[-1] + "\n"


def stream_logs(container, write: Callable[[str], None], follow: bool = True, tail: str | int = "all") -> None:
    for line in log_lines(container.logs(stream=True, follow=follow, tail=tail)):
        write(line)


def job_containers(client, include_stopped: bool = False) -> list:
    return client.containers.list(all=include_stopped, filters={"label": RUN_ID_LABEL})


def find_job(client, reference: str):
    """The job container whose run id starts with ``reference`` (or whose name is it)."""
    matches = [
        c
        for c in job_containers(client, include_stopped=True)
        if c.labels.get(RUN_ID_LABEL, "").startswith(reference) or c.name == reference
    ]
    if not matches:
        raise SubmitError(f"no cvops job container for run {reference!r}; `cvops ps --all` lists them")
    if len(matches) > 1:
        names = ", ".join(c.labels[RUN_ID_LABEL][:12] for c in matches)
        raise SubmitError(f"{reference!r} matches several runs ({names}); give more of the run id")
    return matches[0]


def job_rows(client, include_stopped: bool) -> list[dict[str, str]]:
    rows = []
    for container in job_containers(client, include_stopped):
        labels = container.labels
        state = container.attrs.get("State") or {}
        status = container.status if container.status != "exited" else f"exited ({state.get('ExitCode')})"
        rows.append(
            {
                "RUN": labels.get(RUN_ID_LABEL, "")[:12],
                "JOB": labels.get(f"{LABEL_PREFIX}job", ""),
                "FRAMEWORK": labels.get(f"{LABEL_PREFIX}framework", ""),
                "STATUS": status,
                "GPUS": labels.get(GPUS_LABEL) or "-",
                "CREATED": container.attrs.get("Created", "")[:19].replace("T", " "),
                "CONTAINER": container.name,
            }
        )
    return rows


def stop_job(client, reference: str, timeout_s: int, err: TextIO = sys.stderr) -> int:
    container = find_job(client, reference)
    run_id = container.labels[RUN_ID_LABEL]
    if container.status == "running":
        print(f"[cvops] stopping {container.name} (SIGTERM, {timeout_s}s before SIGKILL) …", file=err, flush=True)
        container.stop(timeout=timeout_s)
    exit_code, _ = _container_exit(container)
    uri = container.labels.get(TRACKING_URI_LABEL)
    closed = finish_orphaned_run(uri, run_id, exit_code, "stopped") if uri else None
    status = closed or (_run_status(uri, run_id) if uri else "status unknown")
    print(f"[cvops] run {run_id} {status} · exit code {exit_code}", file=err)
    return 0
