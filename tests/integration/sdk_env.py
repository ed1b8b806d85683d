"""Point cvops at a harness server with a private spool and cache (shared by the SDK's test files)."""
from __future__ import annotations

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
