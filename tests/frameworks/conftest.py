"""The framework tier: the real Detectron2 and the real, unmodified TF Object Detection API, each
in its own virtual environment (tests/frameworks/environments.py), training against the real
tracking server that tests/harness starts. The tests run the frameworks as a user does (a
training script, ``cvops tfod``) in a subprocess and read back from the server what arrived.

Tests skip, saying why, where the framework wheelhouse or CPython 3.11 is missing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.frameworks import environments
from tests.harness.serving import ServingServer
from tests.integration.sdk_env import use_sdk_env

@pytest.fixture(scope="session")
def framework_python():
    """``framework_python("detectron2")``: that environment's interpreter (built when missing)."""

    def get(name: str) -> Path:
        try:
            return environments.ensure(name)
        except environments.Unavailable as reason:
            pytest.skip(f"the {name} environment cannot be built here: {reason}")

    return get


@pytest.fixture(scope="module")
def framework_env(tracking_server, tmp_path_factory):
    """The process environment a training job gets: the harness server's URL and admin login,
    a private spool, and this checkout's cvops ahead of the one installed in the environment.
    Module-scoped, so one trained run can be shared by the tests that read it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_sdk_env(monkeypatch, tracking_server, tmp_path_factory.mktemp("sdk"))
        monkeypatch.setenv("PYTHONPATH", str(environments.REPO_ROOT / "trainer" / "src"))
        monkeypatch.setenv("PYTHONUNBUFFERED", "1")
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        yield tracking_server


@pytest.fixture(scope="module")
def serve_champion(framework_env, tmp_path_factory):
    """``serve_champion(python, name)``: the inference server (services/serving, started as its
    image starts it) running in that framework's environment, serving ``name@champion`` with the
    harness server's admin login, ready; it follows the alias every second. Stopped with the module."""
    servers: list[ServingServer] = []

    def start(python: Path, name: str) -> ServingServer:
        server = ServingServer(tmp_path_factory.mktemp("serving"), framework_env.url, *framework_env.admin_auth,
                               models=f"{name}@champion", python=python, CVOPS_SERVE_POLL_INTERVAL_S="1")
        servers.append(server)
        server.start()
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
