"""The checks, one function each, in the order a training job depends on them.

Every check takes the shared :class:`Probe` (what earlier checks learned) and returns a
:class:`CheckResult`. They talk to the server the way a job does: MLflow's own HTTP helper
and ``MlflowClient``, MLflow's own environment variables and credential lookup.
"""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import re
import socket
import ssl
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import SplitResult, urlsplit

from cvops.doctor.report import CheckResult, Status

# A stopped or firewalled server must fail in seconds, not after MLflow's default
# 120 s timeout and seven retries with back-off.
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 10.0
TRANSFER_TIMEOUT_S = 60.0
CERT_EXPIRY_WARNING_DAYS = 14
CLOCK_SKEW_WARNING_S = 2.0
# The artifact round trip must not depend on the client holding object-store credentials:
# with proxied artifacts the server alone talks to S3.
S3_CLIENT_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
)
PRESIGNED_TRANSFER_FLAGS = ("multipart_downloads_enabled", "multipart_uploads_enabled")


@dataclass
class Probe:
    """The target and what the checks have learned about it so far."""

    tracking_uri: str
    artifact_mb: int = 4
    url: SplitResult = field(init=False)
    server_date: float | None = None
    local_time_at_response: float | None = None
    server_version: str | None = None
    server_info: dict[str, Any] = field(default_factory=dict)
    username: str | None = None
    credential_source: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    artifact_uri: str | None = None
    s3_variables_removed: tuple[str, ...] = ()

    def __post_init__(self):
        self.url = urlsplit(self.tracking_uri)

    @property
    def host(self) -> str:
        return self.url.hostname or ""

    @property
    def port(self) -> int:
        return self.url.port or (443 if self.url.scheme == "https" else 80)

    def host_creds(self, *, authenticated: bool = True):
        from mlflow.utils.credentials import get_default_host_creds

        creds = get_default_host_creds(self.tracking_uri)
        if not authenticated:
            creds.username = creds.password = None
        return creds

    def request(self, method: str, endpoint: str, *, authenticated: bool = True, **kwargs):
        from mlflow.utils.rest_utils import http_request

        return http_request(
            self.host_creds(authenticated=authenticated),
            endpoint,
            method,
            max_retries=0,
            timeout=REQUEST_TIMEOUT_S,
            raise_on_status=False,
            **kwargs,
        )

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)


@contextlib.contextmanager
def scoped_environment(
    *, set_values: dict[str, str] | None = None, remove: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Temporarily change this process's environment; yields the names actually removed.

    MLflow reads its HTTP timeouts/retries and boto3 its credentials from the environment at
    call time, so this is the only way to run the client exactly as a job would, minus S3.
    """
    saved = {name: os.environ.get(name) for name in (*(set_values or {}), *remove)}
    removed = tuple(name for name in remove if name in os.environ)
    try:
        for name in remove:
            os.environ.pop(name, None)
        os.environ.update(set_values or {})
        yield removed
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def client_environment():
    """MLflow client settings for the doctor: fail fast, never retry into a long back-off, and no
    progress bars of MLflow's (drawn wherever tqdm is installed) between the doctor's lines."""
    return scoped_environment(
        set_values={
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(TRANSFER_TIMEOUT_S)),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )


def _result(name: str):
    def bind(status: Status, detail: str, fix: str = "") -> CheckResult:
        return CheckResult(name, status, detail, fix)

    return bind


def _short(error: BaseException | str, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_network(probe: Probe) -> CheckResult:
    result = _result("network")
    if probe.url.scheme not in ("http", "https") or not probe.host:
        return result(
            Status.FAIL,
            f"tracking URI {probe.tracking_uri!r} is not a server URL",
            "set MLFLOW_TRACKING_URI (or --tracking-uri) to the http(s):// URL you were given",
        )
    # getaddrinfo has no timeout of its own; a broken resolver must not hang the doctor.
    with ThreadPoolExecutor(max_workers=1) as pool:
        lookup = pool.submit(socket.getaddrinfo, probe.host, probe.port, type=socket.SOCK_STREAM)
        try:
            addresses = lookup.result(timeout=CONNECT_TIMEOUT_S + 2)
        except socket.gaierror as error:
            return result(
                Status.FAIL,
                f"cannot resolve {probe.host!r} ({error.strerror})",
                "check the host name in MLFLOW_TRACKING_URI (typo? VPN down?); inside a compose "
                "network use the service name, e.g. http://mlflow:5000",
            )
        except FutureTimeout:
            return result(
                Status.FAIL,
                f"DNS lookup of {probe.host!r} took over {CONNECT_TIMEOUT_S + 2:.0f} s",
                "the resolver is unreachable: check /etc/resolv.conf or the VPN",
            )
    ip = addresses[0][4][0]
    started = time.perf_counter()
    try:
        socket.create_connection((probe.host, probe.port), timeout=CONNECT_TIMEOUT_S).close()
    except ConnectionRefusedError:
        return result(
            Status.FAIL,
            f"{probe.host} ({ip}) refused TCP connections on port {probe.port}",
            "the MLflow server is not running or listens on another port: on the server host run "
            "`docker compose ps mlflow`; check the port in MLFLOW_TRACKING_URI",
        )
    except (socket.timeout, TimeoutError):
        return result(
            Status.FAIL,
            f"no answer from {probe.host} ({ip}) port {probe.port} within {CONNECT_TIMEOUT_S:.0f} s",
            "a firewall or security group drops the traffic, or the host is down",
        )
    except OSError as error:
        return result(
            Status.FAIL,
            f"cannot connect to {probe.host} ({ip}) port {probe.port}: {error.strerror or error}",
            "check the network route to the server (VPN, proxy, container network)",
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    return result(
        Status.PASS, f"{probe.host} → {ip}, TCP port {probe.port} open ({elapsed_ms:.0f} ms)"
    )


def check_tls(probe: Probe) -> CheckResult:
    from mlflow.environment_variables import (
        MLFLOW_TRACKING_INSECURE_TLS,
        MLFLOW_TRACKING_SERVER_CERT_PATH,
    )

    result = _result("tls")
    if probe.url.scheme == "http":
        where = "loopback" if probe.host in ("localhost", "127.0.0.1", "::1") else "the network"
        return result(
            Status.INFO,
            f"plain HTTP: password and data cross {where} unencrypted "
            "(use the https:// URL where the stack runs its TLS proxy)",
        )
    if MLFLOW_TRACKING_INSECURE_TLS.get():
        return result(
            Status.WARN,
            "certificate not verified (MLFLOW_TRACKING_INSECURE_TLS=true)",
            "unset MLFLOW_TRACKING_INSECURE_TLS and point MLFLOW_TRACKING_SERVER_CERT_PATH at "
            "your team's CA bundle",
        )
    context = ssl.create_default_context(cafile=MLFLOW_TRACKING_SERVER_CERT_PATH.get())
    try:
        with socket.create_connection((probe.host, probe.port), timeout=CONNECT_TIMEOUT_S) as raw:
            with context.wrap_socket(raw, server_hostname=probe.host) as tls:
                certificate = tls.getpeercert()
                protocol = tls.version()
    except ssl.SSLCertVerificationError as error:
        return result(
            Status.FAIL,
            f"certificate not trusted: {error.verify_message}",
            "if the team uses its own CA, set MLFLOW_TRACKING_SERVER_CERT_PATH=/path/to/ca.pem; "
            "if it expired, renew it on the proxy",
        )
    except (ssl.SSLError, OSError) as error:
        return result(
            Status.FAIL,
            f"TLS handshake failed: {_short(error)}",
            "is this port serving plain HTTP? try the http:// URL or the proxy's port",
        )
    not_after = ssl.cert_time_to_seconds(certificate["notAfter"])
    days_left = (not_after - time.time()) / 86400
    expires = time.strftime("%Y-%m-%d", time.gmtime(not_after))
    if days_left < CERT_EXPIRY_WARNING_DAYS:
        return result(
            Status.WARN,
            f"{protocol}, certificate expires {expires} (in {days_left:.0f} days)",
            "renew the certificate on the TLS proxy before it expires",
        )
    return result(Status.PASS, f"{protocol}, certificate valid until {expires}")


def check_server(probe: Probe) -> CheckResult:
    from mlflow.version import VERSION as client_version

    result = _result("server")
    sent = time.time()
    try:
        health = probe.request("GET", "/health", authenticated=False)
    except Exception as error:  # noqa: BLE001 - any transport error is the finding
        return result(
            Status.FAIL,
            f"GET /health failed: {_short(error)}",
            "the port answers but not with HTTP from MLflow: check the URL's scheme and port",
        )
    if health.headers.get("Date"):
        probe.server_date = email.utils.parsedate_to_datetime(health.headers["Date"]).timestamp()
        probe.local_time_at_response = (sent + time.time()) / 2
    if health.status_code != 200:
        return result(
            Status.FAIL,
            f"GET /health answered HTTP {health.status_code}",
            "this URL is not the MLflow server (the object store console? a path prefix?): "
            "use the tracking URL your admin gave you",
        )
    version = probe.request("GET", "/version")
    if version.status_code != 200:
        return result(
            Status.PASS,
            f"MLflow server healthy (version shown only after login, HTTP {version.status_code})",
        )
    probe.server_version = version.text.strip()
    same_minor = probe.server_version.split(".")[:2] == client_version.split(".")[:2]
    detail = f"MLflow {probe.server_version} healthy; this client runs MLflow {client_version}"
    if not same_minor:
        return result(
            Status.WARN,
            detail,
            f"install the server's version on this machine: pip install "
            f"'mlflow-skinny=={probe.server_version}'",
        )
    return result(Status.PASS, detail)


def _allowed_hosts_entry(probe: Probe) -> str:
    # MLflow matches the Host header verbatim, port included, unless the entry has a wildcard.
    return probe.host if probe.url.port is None else f"{probe.host}:*"


# The start of MLflow's mlflow.server.security_utils.INVALID_HOST_MSG, restated because that
# module imports Flask, which mlflow-skinny (the SDK's MLflow) does not bring; a unit test holds
# the two together.
INVALID_HOST_MSG_START = "Invalid Host header"


def check_host_header(probe: Probe) -> CheckResult:
    result = _result("host")
    response = probe.request("GET", "/api/3.0/mlflow/server-info")
    # MLflow answers 403 (Flask app) or 400 (uvicorn app) with the same text.
    if response.status_code in (400, 403) and INVALID_HOST_MSG_START in response.text:
        return result(
            Status.FAIL,
            f"the server rejects the Host header {probe.url.netloc!r} ({response.text.strip()[:120]!r})",
            f"add {_allowed_hosts_entry(probe)} to MLFLOW_ALLOWED_HOSTS in the server's .env and "
            "restart the mlflow service (docker compose up -d mlflow)",
        )
    if response.status_code == 200:
        probe.server_info = response.json()
    return result(Status.PASS, f"server accepts requests addressed to {probe.url.netloc}")


def _credential_source() -> tuple[str | None, str]:
    from mlflow.environment_variables import MLFLOW_TRACKING_USERNAME
    from mlflow.utils.credentials import read_mlflow_creds

    username = read_mlflow_creds().username
    if MLFLOW_TRACKING_USERNAME.get():
        return username, "MLFLOW_TRACKING_USERNAME/PASSWORD"
    if username:
        return username, "~/.mlflow/credentials"
    return None, "nowhere"


def check_auth(probe: Probe) -> CheckResult:
    result = _result("login")
    probe.username, probe.credential_source = _credential_source()
    response = probe.request("GET", "/api/2.0/mlflow/users/current")
    if response.status_code == 200:
        user = response.json().get("user", {})
        role = " (admin)" if user.get("is_admin") else ""
        return result(
            Status.PASS,
            f"logged in as {user.get('username', probe.username)!r}{role}, credentials from "
            f"{probe.credential_source}",
        )
    if response.status_code == 401 and probe.username is None:
        return result(
            Status.FAIL,
            "401: the server requires a login and no credentials were found",
            "set MLFLOW_TRACKING_USERNAME/PASSWORD (or put them in ~/.mlflow/credentials)",
        )
    if response.status_code == 401:
        return result(
            Status.FAIL,
            f"401: the server refused user {probe.username!r} (credentials from "
            f"{probe.credential_source})",
            "set MLFLOW_TRACKING_USERNAME/PASSWORD to the values you were given (the environment "
            "overrides ~/.mlflow/credentials); an admin can reset the password",
        )
    if response.status_code == 404:
        return result(
            Status.WARN,
            "the server has no login (authentication off): anyone who reaches it can write",
            "set MLFLOW_AUTH=on in the server's .env unless this is a single-user machine",
        )
    return result(
        Status.FAIL,
        f"login check answered HTTP {response.status_code}: {_short(response.text)}",
        "see the server log: docker compose logs mlflow",
    )


def _mlflow_error(error: BaseException) -> tuple[str, str]:
    """Status code name (or '') and a short message for an MLflow client failure."""
    return getattr(error, "error_code", "") or "", _short(getattr(error, "message", error))


def check_experiment(probe: Probe) -> CheckResult:
    result = _result("experiment")
    name = f"cvops-doctor/{probe.username or 'anonymous'}/{socket.gethostname()}/{uuid.uuid4().hex[:8]}"
    try:
        with client_environment():
            probe.experiment_id = probe.client().create_experiment(name)
    except Exception as error:  # noqa: BLE001 - the client's failure is the finding
        code, message = _mlflow_error(error)
        if code == "PERMISSION_DENIED" or "403" in message:
            return result(
                Status.FAIL,
                f"user {probe.username!r} may not create experiments ({message})",
                "ask an admin to grant you access (cvops jobs create their experiment on first use)",
            )
        return result(Status.FAIL, f"could not create an experiment: {message}",
                      "see the server log: docker compose logs mlflow")
    return result(Status.PASS, f"created scratch experiment {name!r}")


def check_metrics(probe: Probe) -> CheckResult:
    from mlflow.entities import Metric

    result = _result("metrics")
    now_ms = int(time.time() * 1000)
    sent = [Metric("doctor_loss", 1.0 / (step + 1), now_ms + step, step) for step in range(5)]
    started = time.perf_counter()
    try:
        with client_environment():
            client = probe.client()
            run = client.create_run(probe.experiment_id, run_name="cvops-doctor")
            probe.run_id, probe.artifact_uri = run.info.run_id, run.info.artifact_uri
            client.log_batch(probe.run_id, metrics=sent)
            received = client.get_metric_history(probe.run_id, "doctor_loss")
    except Exception as error:  # noqa: BLE001 - the client's failure is the finding
        return result(Status.FAIL, f"metric round trip failed: {_mlflow_error(error)[1]}",
                      "see the server log: docker compose logs mlflow")
    elapsed_ms = (time.perf_counter() - started) * 1000
    if sorted((m.step, m.value) for m in received) != [(m.step, m.value) for m in sent]:
        return result(
            Status.FAIL,
            f"wrote {len(sent)} points of doctor_loss, read back {len(received)} different ones",
            "the server's backend store lost or altered data: check PostgreSQL and the server log",
        )
    return result(
        Status.PASS, f"run created, {len(sent)} metric points written and read back ({elapsed_ms:.0f} ms)"
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# How MLflow's client reports an HTTP status: urllib3's retry exhaustion, requests' raise_for_status.
_HTTP_STATUS_IN_ERROR = re.compile(r"too many (\d{3}) error responses|\b(\d{3}) (?:Server|Client) Error")


def _http_status(error: BaseException) -> int | None:
    match = _HTTP_STATUS_IN_ERROR.search(str(error))
    return int(match.group(1) or match.group(2)) if match else None


def _artifact_failure(probe: Probe, stage: str, error: BaseException) -> CheckResult:
    result = _result("artifacts")
    status = _http_status(error)
    presigned = [flag for flag in PRESIGNED_TRANSFER_FLAGS if probe.server_info.get(flag)]
    if stage == "download" and presigned and status is None:
        return result(
            Status.FAIL,
            f"download failed: the server hands out presigned S3 URLs ({', '.join(presigned)}) "
            f"and this machine cannot use them: {_short(error)}",
            "switch presigned transfers off on the server (see docs/onboarding.md), or export "
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false here",
        )
    if status is not None and status >= 500:
        return result(
            Status.FAIL,
            f"{stage} failed inside the server (HTTP {status}): it cannot reach its artifact store",
            "on the server host check the object store (docker compose ps minio) and "
            "MLFLOW_S3_ENDPOINT_URL / AWS_* / MLFLOW_ARTIFACTS_DESTINATION in .env; "
            "details in docker compose logs mlflow",
        )
    if status == 403:
        return result(Status.FAIL, f"{stage} refused (HTTP 403)",
                      "your user lacks write access to this experiment's artifacts; ask an admin")
    return result(Status.FAIL, f"{stage} failed: {_short(error)}",
                  "see the server log: docker compose logs mlflow")


def check_artifacts(probe: Probe) -> CheckResult:
    result = _result("artifacts")
    if probe.run_id is None:
        return result(Status.SKIP, "skipped: no run to attach artifacts to (metrics check failed)")
    size = probe.artifact_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="cvops-doctor-") as workdir:
        payload = os.path.join(workdir, "payload.bin")
        with open(payload, "wb") as stream:
            stream.write(os.urandom(size))
        with client_environment(), scoped_environment(remove=S3_CLIENT_VARIABLES) as removed:
            probe.s3_variables_removed = removed
            client = probe.client()
            started = time.perf_counter()
            try:
                client.log_artifact(probe.run_id, payload, artifact_path="doctor")
            except Exception as error:  # noqa: BLE001 - the client's failure is the finding
                return _artifact_failure(probe, "upload", error)
            upload_s = time.perf_counter() - started
            started = time.perf_counter()
            try:
                downloaded = client.download_artifacts(
                    probe.run_id, "doctor/payload.bin", os.path.join(workdir, "back")
                )
            except Exception as error:  # noqa: BLE001 - the client's failure is the finding
                return _artifact_failure(probe, "download", error)
            download_s = time.perf_counter() - started
        if _sha256(downloaded) != _sha256(payload):
            return result(
                Status.FAIL,
                f"the {probe.artifact_mb} MB file came back different",
                "a proxy in between alters or truncates bodies: check its body-size limit",
            )
    mb = probe.artifact_mb
    return result(
        Status.PASS,
        f"{mb} MB through the server: upload {mb / upload_s:.1f} MB/s, "
        f"download {mb / download_s:.1f} MB/s, content identical",
    )


def check_no_s3_credentials(probe: Probe) -> CheckResult:
    result = _result("s3-free")
    removed = ", ".join(probe.s3_variables_removed) or "none were set"
    presigned = [flag for flag in PRESIGNED_TRANSFER_FLAGS if probe.server_info.get(flag)]
    if presigned:
        return result(
            Status.WARN,
            f"round trip passed without S3 variables ({removed}), but the server advertises "
            f"presigned S3 transfers ({', '.join(presigned)}): machines that cannot reach the "
            "object store will fail to download",
            "switch presigned transfers off on the server (see docs/onboarding.md)",
        )
    return result(
        Status.PASS,
        f"no S3 credentials needed: round trip ran with S3 variables removed ({removed}); "
        "the server proxies every transfer",
    )


def check_clock(probe: Probe) -> CheckResult:
    result = _result("clock")
    if probe.server_date is None:
        return result(Status.SKIP, "skipped: the server sent no Date header")
    skew = probe.local_time_at_response - probe.server_date
    # The Date header has one-second resolution, so up to ~1 s is no evidence of skew.
    if abs(skew) <= CLOCK_SKEW_WARNING_S:
        return result(Status.PASS, f"local clock within {CLOCK_SKEW_WARNING_S:.0f} s of the server")
    direction = "ahead of" if skew > 0 else "behind"
    return result(
        Status.WARN,
        f"local clock {abs(skew):.0f} s {direction} the server: metric timestamps and run "
        "durations will be off",
        "enable time sync on this machine (timedatectl set-ntp true, or chrony)",
    )


def check_gpus(probe: Probe) -> CheckResult:
    result = _result("gpus")
    try:
        import pynvml
    except ImportError:
        return result(Status.INFO, "no NVML: CPU only (on GPU machines: pip install 'cvops[gpu]')")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return result(Status.INFO, f"no NVML: CPU only ({_short(error, 60)})")
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory_gib = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1024**3
            devices.append(f"{index}: {pynvml.nvmlDeviceGetName(handle)} {memory_gib:.0f} GiB")
    finally:
        pynvml.nvmlShutdown()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    scope = f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
    if not devices:
        return result(
            Status.WARN,
            f"NVIDIA driver {driver} loaded but no GPU visible{scope}",
            "in a container, run it with --gpus all (docker) or the nvidia runtime",
        )
    return result(Status.PASS, f"{len(devices)} GPU(s), driver {driver}: {'; '.join(devices)}{scope}")


def cleanup(probe: Probe) -> CheckResult:
    """Remove what the doctor wrote; soft-deleted rows stay until `mlflow gc`."""
    result = _result("cleanup")
    if probe.experiment_id is None:
        return result(Status.INFO, "nothing to clean up")
    leftovers = []
    with client_environment():
        client = probe.client()
        if probe.artifact_uri:
            try:
                from mlflow.store.artifact.artifact_repository_registry import (
                    get_artifact_repository,
                )

                get_artifact_repository(
                    probe.artifact_uri, tracking_uri=probe.tracking_uri
                ).delete_artifacts()
            except Exception:  # noqa: BLE001 - cleanup is best effort
                leftovers.append("artifacts")

        def end_and_delete_run():
            if probe.run_id:
                # Ended first: a deleted run left RUNNING shows as in progress wherever it is listed.
                client.set_terminated(probe.run_id, "FINISHED")
                client.delete_run(probe.run_id)

        for what, delete in (
            ("run", end_and_delete_run),
            ("experiment", lambda: client.delete_experiment(probe.experiment_id)),
        ):
            try:
                delete()
            except Exception:  # noqa: BLE001 - cleanup is best effort
                leftovers.append(what)
    if leftovers:
        return result(
            Status.WARN,
            f"could not delete the scratch {', '.join(leftovers)} (experiment {probe.experiment_id})",
            "harmless; an admin can remove it from the UI",
        )
    return result(Status.INFO, f"scratch experiment {probe.experiment_id} and its run ended and deleted")
