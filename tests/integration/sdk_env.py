"""Point cvops at a harness server with a private spool and cache (shared by the SDK's test files)."""
from __future__ import annotations

import os
from pathlib import Path

import cvops
from tests.harness.fixtures import pin_mlflow_tracking_uri_per_test


def use_sdk_env(monkeypatch, server, tmp_path, uri: str | None = None) -> None:
    """``uri`` overrides the URL (a proxy in front of ``server``, or a port where nothing listens)."""
    pin_mlflow_tracking_uri_per_test(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri or server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    monkeypatch.setenv("CVOPS_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CVOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CVOPS_FLUSH_INTERVAL_S", "0.2")
    monkeypatch.setenv("CVOPS_REQUEST_TIMEOUT_S", "3")
    monkeypatch.setenv("CVOPS_SYSTEM_METRICS", "0")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def sweep_env(server, tmp_path, storage_url: str) -> dict[str, str]:
    """The environment of a `cvops sweep` process (and so of its trials): the harness server's
    admin login, the study's storage, a private spool, and the cvops under test."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MLFLOW_", "CVOPS_", "AWS_"))}
    env.update({
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": server.admin_username,
        "MLFLOW_TRACKING_PASSWORD": server.admin_password,
        "CVOPS_SWEEP_STORAGE": storage_url,
        "CVOPS_SPOOL_DIR": str(tmp_path / "spool"),
        "CVOPS_CACHE_DIR": str(tmp_path / "cache"),
        "CVOPS_FLUSH_INTERVAL_S": "0.2",
        "PYTHONPATH": str(Path(cvops.__file__).parents[1]),
    })
    return env
