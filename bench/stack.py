"""The two servers every benchmark compares, on one PostgreSQL cluster and one S3 endpoint.

* ``stock``: ``mlflow server --backend-store-uri postgresql+psycopg2://… --artifacts-destination
  s3://…`` with MLflow's default options (uvicorn, 4 workers, no auth), as a team would start it
  from the MLflow docs.
* ``ours``: ``services/mlflow/entrypoint.sh migrate`` + ``serve`` with the container's defaults
  (gunicorn gthread 2×8, basic-auth on, proxied artifacts), started by the test harness's own
  ``TrackingServer`` so the bench measures exactly what the container and the tests run.

Both servers share one tracking database (so search benchmarks read identical rows) and one bucket
(different prefixes). Everything binds to 127.0.0.1 on free ports; ``Stack`` stops it all on exit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from tests.harness.fixtures import (
    VENV_BIN,
    PostgresCluster,
    S3Endpoint,
    TrackingServer,
    _postgres_bin_dir,
    _stop_process_group,
    _tail,
    _wait_until,
    free_port,
)

# What docker-compose.yml / .env.example give the container (the harness's own default is smaller).
CONTAINER_DEFAULTS = {"GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "8"}
TRACKING_DB = "mlflow_bench"
START_TIMEOUT_S = 180


@dataclass
class Endpoint:
    """What a client needs to reach one server, and the process tree to watch for CPU."""

    name: str
    url: str
    auth: tuple[str, str] | None
    pid: int
    startup_s: float
    artifacts_prefix: str

    def client_env(self) -> dict[str, str | None]:
        user, password = self.auth or (None, None)
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password}

    @contextlib.contextmanager
    def as_client(self):
        """Point MLflow's client (and cvops) at this server for the duration."""
        saved = {k: os.environ.get(k) for k in self.client_env()}
        _set_env(self.client_env())
        try:
            yield self
        finally:
            _set_env(saved)

    def processes(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        return []


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class StockServer:
    """``mlflow server`` with default options, or those given, against the shared database and bucket."""

    def __init__(self, postgres: PostgresCluster, s3: S3Endpoint, root: Path, backend_uri: str,
                 options: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.log_file = root / "stock.log"
        self.artifacts_destination = f"s3://{s3.bucket}/stock"
        self.cmd = [
            str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", backend_uri, "--artifacts-destination", self.artifacts_destination, *options,
        ]
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        self.env = {**keep, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url, "AWS_ACCESS_KEY_ID": s3.access_key,
                    "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": s3.region,
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TMPDIR": str(root)}
        self._proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self) -> float:
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=self.root)
        self.startup_s = _wait_until(self._healthy, START_TIMEOUT_S, "stock mlflow server",
                                     lambda: _tail(self.log_file))
        return self.startup_s

    def _healthy(self) -> bool:
        if self._proc.poll() is not None:
            raise RuntimeError(f"stock mlflow server exited:\n{_tail(self.log_file)}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        return False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        if self._proc:
            _stop_process_group(self._proc)
            self._proc = None


@dataclass
class Stack:
    """PostgreSQL + S3 + stock + ours; ``with Stack() as stack:`` then ``stack.stock`` / ``stack.ours``.

    ``start_servers=False`` leaves both servers stopped (migrated) for start-up benchmarks.
    ``ours_env`` overrides the container env (e.g. MLFLOW_AUTH=off to price the auth layer).
    """

    start_servers: bool = True
    ours_env: dict[str, str] = field(default_factory=dict)
    keep_dir: bool = False

    def __enter__(self) -> Stack:
        bin_dir = _postgres_bin_dir()
        if bin_dir is None:
            raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
        self.root = Path(tempfile.mkdtemp(prefix="cvops-bench-"))
        os.chmod(self.root, 0o755)  # the unprivileged PostgreSQL user must traverse it
        self._stack = contextlib.ExitStack()
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.postgres = PostgresCluster(_postgres_bin_dir(), self.root / "pg")
        self.postgres.init()
        self.postgres.start()
        self._stack.callback(self.postgres.stop)
        self.s3 = S3Endpoint(self.root)
        self.s3.start()
        self._stack.callback(self.s3.stop)
        env = {**CONTAINER_DEFAULTS, **self.ours_env}
        self.ours_server = TrackingServer(TRACKING_DB, self.postgres, self.s3, self.root / "ours", env)
        self.ours_server.migrate()
        self._stack.callback(self.ours_server.stop)
        self.stock_server = StockServer(self.postgres, self.s3, self.root / "stock",
                                        self.postgres.url(TRACKING_DB))
        self._stack.callback(self.stock_server.stop)
        if self.start_servers:
            self.start_ours()
            self.start_stock()

    def start_ours(self) -> float:
        return self.ours_server.start()

    def start_stock(self) -> float:
        return self.stock_server.start()

    def start_variant(self, name: str, env: dict[str, str]) -> Endpoint:
        """Another server like ours on the same tracking database, with other settings. Stopped
        with the stack."""
        server = TrackingServer(name, self.postgres, self.s3, self.root / name,
                                {**CONTAINER_DEFAULTS, **env,
                                 "MLFLOW_BACKEND_STORE_URI": self.postgres.url(TRACKING_DB)})
        self._stack.callback(server.stop)
        server.migrate()
        server.start()
        auth = server.admin_auth if env.get("MLFLOW_AUTH", "on") == "on" else None
        return Endpoint(name, server.url, auth, server._proc.pid, server.startup_s, server.artifacts_destination)

    def start_stock_variant(self, name: str, options: tuple[str, ...]) -> Endpoint:
        """Stock ``mlflow server`` with other options on the same database. Stopped with the stack."""
        server = StockServer(self.postgres, self.s3, self.root / name, self.postgres.url(TRACKING_DB), options)
        self._stack.callback(server.stop)
        server.start()
        return Endpoint(name, server.url, None, server.pid, server.startup_s, server.artifacts_destination)

    @property
    def ours(self) -> Endpoint:
        s = self.ours_server
        auth = s.admin_auth if s.env.get("MLFLOW_AUTH", "on") == "on" else None
        return Endpoint("ours", s.url, auth, s._proc.pid, s.startup_s or 0.0, s.artifacts_destination)

    def ours_as_plain_user(self) -> Endpoint:
        """Ours, called by a new user who is not an admin: MLflow then checks the caller's permission
        on the run or experiment of every call."""
        username, password = f"bench-user-{uuid.uuid4().hex[:6]}", f"bench-pw-{uuid.uuid4().hex}"
        self.ours_server.create_user(username, password)
        return dataclasses.replace(self.ours, name="ours_plain_user", auth=(username, password))

    @property
    def stock(self) -> Endpoint:
        s = self.stock_server
        return Endpoint("stock", s.url, None, s.pid, s.startup_s or 0.0, s.artifacts_destination)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [self.stock, self.ours]

    def tracking_db(self):
        return self.postgres.connect(TRACKING_DB)

    def stored_metric_points(self, run_ids: list[str]) -> int:
        """Rows of the benchmarks' ``metric_<n>`` keys that reached PostgreSQL for these runs."""
        with contextlib.closing(self.tracking_db()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = ANY(%s) AND key LIKE 'metric\\_%%'",
                        (run_ids,))
            return cur.fetchone()[0]

    @property
    def postgres_endpoint(self) -> Endpoint:
        """PostgreSQL's process tree, for CpuMeter."""
        pid = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        return Endpoint("postgres", "", None, pid, 0.0, "")

    def server_log_tracebacks(self, endpoint: Endpoint) -> int:
        server = self.ours_server if endpoint.name == "ours" else self.stock_server
        return server.log_file.read_text(errors="replace").count("Traceback")

    def __exit__(self, *exc) -> None:
        self._stack.close()
        if not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)


class CpuMeter:
    """CPU seconds used by a server's whole process tree between ``start()`` and ``stop()``."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._seen: dict[int, float] = {}

    def _sample(self) -> dict[int, float]:
        usage = {}
        for proc in self.endpoint.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                usage[proc.pid] = t.user + t.system
        return usage

    def start(self) -> None:
        self._before = self._sample()
        self._t0 = time.monotonic()

    def stop(self) -> tuple[float, float]:
        """(cpu seconds, mean cores busy) over the interval; workers that came or went count from 0."""
        after = self._sample()
        elapsed = time.monotonic() - self._t0
        used = sum(after[pid] - self._before.get(pid, 0.0) for pid in after)
        return used, used / elapsed if elapsed else 0.0
