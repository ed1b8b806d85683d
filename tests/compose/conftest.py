"""The real docker-compose.yml, brought up once per test session under a unique project name.

Images come from the stand-ins built by ../shared/docker-offline/setup.sh (no registry is
reachable here): offline/postgres:15 for postgres:16, offline/s3:latest (moto's S3 server) for
MinIO, offline/python:3.11-slim as BASE_IMAGE of the two images we build. Override any of them
with the same variable names (POSTGRES_IMAGE, S3_IMAGE, BASE_IMAGE) to run against the official
images, and name the images built here with MLFLOW_IMAGE / STORAGE_INIT_IMAGE. Every other setting
comes from .env.example. `compose_stack` sets every secret in the environment (an operator's
overrides); `ComposeStack(..., set_secrets=False)` is a fresh checkout's `up -d`, whose secrets the
stack generates itself.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.harness.fixtures import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STAND_IN_IMAGES = {
    "POSTGRES_IMAGE": "offline/postgres:15",
    "S3_IMAGE": "offline/s3:latest",
    "BASE_IMAGE": "offline/python:3.11-slim",
}
# Names for the images this tier builds, so a real deployment's images on the same host stay untouched.
BUILT_IMAGES = {
    "MLFLOW_IMAGE": "cvops-compose-test/mlflow:local",
    "STORAGE_INIT_IMAGE": "cvops-compose-test/storage-init:local",
}
LONG_RUNNING = ("postgres", "minio", "mlflow")
ONE_SHOT = ("secrets", "storage-init", "migrate")
SECRET_SETTINGS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD",
                   "MLFLOW_FLASK_SERVER_SECRET_KEY")
HEALTHY_TIMEOUT_S = 300
# Settings the host shell may carry that must not leak into the test project.
LEAKY_PREFIXES = ("MLFLOW_", "AWS_", "POSTGRES_", "S3_", "GUNICORN_", "COMPOSE", "PROXY_", "CVOPS_")


def _compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _env_example() -> dict[str, str]:
    settings = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            settings[match.group(1)] = match.group(2)
    return settings


class ComposeStack:
    """One compose project of the repository's docker-compose.yml."""

    def __init__(self, compose: list[str], work_dir: Path, set_secrets: bool = True,
                 extra_settings: dict[str, str] | None = None):
        self.project = f"cvops-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.admin_username = "admin"
        # Without set secrets the stack generates them: read it from the server once it is up.
        self.admin_password = secrets.token_hex(16) if set_secrets else None
        self.work_dir = work_dir
        self.settings = {
            **_env_example(),
            **STAND_IN_IMAGES,
            **BUILT_IMAGES,
            **{k: os.environ[k] for k in (*STAND_IN_IMAGES, *BUILT_IMAGES) if os.environ.get(k)},
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE": " ".join(compose),
            "MLFLOW_HOST_PORT": str(self.port),
            "MLFLOW_ADMIN_USERNAME": self.admin_username,
            "BACKUP_DIR": str(work_dir / "backups"),
            **(extra_settings or {}),
        }
        if set_secrets:
            self.settings.update({
                "POSTGRES_PASSWORD": secrets.token_hex(16),
                "S3_ACCESS_KEY": "cvops" + secrets.token_hex(4),
                "S3_SECRET_KEY": secrets.token_hex(16),
                "MLFLOW_ADMIN_PASSWORD": self.admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
            })
        else:
            for name in SECRET_SETTINGS:
                self.settings.pop(name, None)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES)}
        self.env.update(self.settings)
        self.compose_cmd = compose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_auth(self) -> tuple[str, str]:
        return self.admin_username, self.admin_password

    def run(self, *args: str, check: bool = True, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        """A command from the repository root with the project's settings (scripts and compose alike)."""
        result = subprocess.run(list(args), cwd=REPO_ROOT, env={**self.env, **env}, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
        return result

    def compose(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(*self.compose_cmd, *args, **kwargs)

    def container_state(self, service: str) -> dict | None:
        ids = self.compose("ps", "-q", service).stdout.split()
        if not ids:
            return None
        return json.loads(self.run("docker", "inspect", "--format", "{{json .State}}", ids[0]).stdout)

    def wait_healthy(self) -> float:
        """Seconds until every long-running service is healthy and every one-shot exited 0."""
        start = time.monotonic()
        while True:
            pending = []
            for service in LONG_RUNNING + ONE_SHOT:
                state = self.container_state(service)
                if state is None:
                    pending.append(f"{service}: no container")
                elif service in ONE_SHOT:
                    if state["Status"] == "exited" and state["ExitCode"] != 0:
                        raise AssertionError(f"{service} exited {state['ExitCode']}:\n{self.logs(service)}")
                    if state["Status"] != "exited":
                        pending.append(f"{service}: {state['Status']}")
                else:
                    health = state.get("Health", {}).get("Status", state["Status"])
                    if health == "unhealthy" or state["Status"] == "exited":
                        raise AssertionError(f"{service} is {health}:\n{self.logs(service)}")
                    if health != "healthy":
                        pending.append(f"{service}: {health}")
            if not pending:
                return time.monotonic() - start
            if time.monotonic() - start > HEALTHY_TIMEOUT_S:
                raise AssertionError(f"not healthy after {HEALTHY_TIMEOUT_S} s: {pending}\n{self.logs()}")
            time.sleep(0.5)

    def up(self) -> float:
        """`up -d` on built images; returns the seconds from `up` to all healthy."""
        start = time.monotonic()
        result = self.compose("up", "-d", "--no-build", check=False)
        if result.returncode != 0:
            raise AssertionError(f"`up -d` exited {result.returncode}:\n{result.stderr[-3000:]}\n{self.logs()}")
        self.wait_healthy()
        return time.monotonic() - start

    def stored_secrets(self) -> dict[str, str]:
        """What the secrets volume holds, as the server container reads it."""
        return {name: self.compose("exec", "-T", "mlflow", "cat", f"/run/secrets/{name.lower()}").stdout
                for name in SECRET_SETTINGS}

    def printed_admin_password(self) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", "mlflow", "cvops-admin-password", check=False)

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "80", *services, check=False).stdout[-8000:]

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", check=False, timeout=300)

    def client(self, *args: str, timeout: float = 300, url: str | None = None,
               ca_bundle: Path | None = None) -> dict:
        """tracking_client.py in a process that knows only the tracking URL and credentials
        (and, behind the TLS proxy, the CA certificate to trust)."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.work_dir),
               "MLFLOW_TRACKING_URI": url or self.url,
               "MLFLOW_TRACKING_USERNAME": self.admin_username,
               "MLFLOW_TRACKING_PASSWORD": self.admin_password}
        if ca_bundle:
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(ca_bundle)
        result = subprocess.run([sys.executable, str(Path(__file__).with_name("tracking_client.py")), *args],
                                env=env, text=True, capture_output=True, timeout=timeout, cwd=self.work_dir)
        assert result.returncode == 0, f"client failed:\n{result.stderr[-4000:]}"
        return json.loads(result.stdout.splitlines()[-1])


def compose_or_skip() -> list[str]:
    """The compose command, or a skip saying what is missing."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine reachable (`docker info` fails); the compose tier needs one")
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    return compose


def skip_without_stand_in_images(stack: ComposeStack) -> None:
    for variable in STAND_IN_IMAGES:
        image = stack.settings[variable]
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            pytest.skip(f"{variable}={image} is not present locally (build the stand-ins with "
                        "../shared/docker-offline/setup.sh, or set {variable} to an image you have)")


@pytest.fixture(scope="session")
def compose_stack(tmp_path_factory):
    stack = ComposeStack(compose_or_skip(), tmp_path_factory.mktemp("compose"))
    skip_without_stand_in_images(stack)
    try:
        started = time.monotonic()
        stack.compose("build", "storage-init", "mlflow")
        print(f"\n[compose] images built in {time.monotonic() - started:.1f} s")
        stack.time_to_healthy_s = stack.up()
        print(f"[compose] `up -d` to all healthy: {stack.time_to_healthy_s:.1f} s (project {stack.project})")
        yield stack
    finally:
        stack.down()


SEAWEEDFS_SETTINGS = {
    "COMPOSE_FILE": "docker-compose.yml:docker-compose.seaweedfs.yml",
    "SEAWEEDFS_IMAGE": "cvops-compose-test/seaweedfs:local",
}


@pytest.fixture(scope="session")
def seaweedfs_stack(tmp_path_factory):
    """The stack with SeaweedFS as its S3 store (docker-compose.seaweedfs.yml): objects on disk,
    kept across restarts, every signature checked."""
    stack = ComposeStack(compose_or_skip(), tmp_path_factory.mktemp("seaweedfs"),
                         extra_settings=SEAWEEDFS_SETTINGS)
    skip_without_stand_in_images(stack)
    try:
        stack.compose("build", "minio", "storage-init", "mlflow")
        print(f"\n[compose] SeaweedFS stack `up -d` to all healthy: {stack.up():.1f} s")
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack_network(compose_stack):
    ids = compose_stack.compose("ps", "-q", "mlflow").stdout.split()
    networks = compose_stack.run("docker", "inspect", "--format",
                                 "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}", ids[0])
    return networks.stdout.split()[0]


@pytest.fixture
def submitter(compose_stack, stack_network, tmp_path):
    """`cvops <command>` as a user on this host: the stack's URL and admin login in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CVOPS_"))}
    env.update(HOME=str(tmp_path), MLFLOW_TRACKING_URI=compose_stack.url,
               MLFLOW_TRACKING_USERNAME=compose_stack.admin_username,
               MLFLOW_TRACKING_PASSWORD=compose_stack.admin_password)

    def cvops(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cvops", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path)

    cvops.network = stack_network
    yield cvops
    # Job containers stay after they exit so that `cvops logs` can read them; the test's are removed here.
    jobs = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=cvops.tracking_uri={compose_stack.url}"],
                          capture_output=True, text=True).stdout.split()
    if jobs:
        subprocess.run(["docker", "rm", "-f", *jobs], capture_output=True)


@pytest.fixture(scope="module")
def registered():
    """{"name": the model a module's submit test registered}, for the serving test after it."""
    return {}


@pytest.fixture
def mlflow_client(compose_stack, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", compose_stack.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", compose_stack.admin_password)
    return MlflowClient(tracking_uri=compose_stack.url)
