"""``GET /ready``: can this server serve requests? The readiness probe beside MLflow's ``/health``.

``/health`` answers 200 as long as a gunicorn worker runs Flask (liveness: restart the process only
when it fails). It stays 200 while PostgreSQL is down and the API answers 503. ``/ready`` checks
what every request needs, side by side, each with a short timeout so that a probe never hangs:

* ``tracking_database``: a new connection to the tracking database and ``SELECT 1``;
* ``auth_database``: the same for the auth database (servers with basic-auth);
* ``artifact_store``: one listing in the artifact bucket under the server's prefix, with the
  server's S3 endpoint and credentials.

200 ``{"status": "ready", "checks": {name: "ok", …}}`` when all pass, else 503 with ``"not ready"``
and each failed check as ``"unreachable"`` or ``"timed out"``. Like ``/health`` it needs no login
(probes have none), so the answer names no host, bucket or error text; the server's log does.
Fresh connections, not the pools: a probe must not wait for a connection that busy requests hold,
and it costs one PostgreSQL login per database per probe.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import urllib.parse

import server_setup
from flask import jsonify
from sqlalchemy.engine import make_url

CHECK_TIMEOUT_S = 2  # libpq's connect_timeout counts whole seconds, at least 2
PROBE_DEADLINE_S = 3
_logger = logging.getLogger(__name__)


def _database_answers(uri: str) -> None:
    url = make_url(uri)
    connection = server_setup.connect(url, url.database, timeout_s=CHECK_TIMEOUT_S)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


@functools.cache
def _probe_s3_client():
    """The server's S3 endpoint, TLS setting and credentials, without MLflow's long retries."""
    import boto3
    from botocore.config import Config
    from mlflow.environment_variables import (
        MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE,
        MLFLOW_S3_ENDPOINT_URL,
        MLFLOW_S3_IGNORE_TLS,
    )

    config = Config(connect_timeout=CHECK_TIMEOUT_S, read_timeout=CHECK_TIMEOUT_S,
                    retries={"max_attempts": 1}, s3={"addressing_style": MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE.get()})
    return boto3.client("s3", endpoint_url=MLFLOW_S3_ENDPOINT_URL.get() or None,
                        verify=False if MLFLOW_S3_IGNORE_TLS.get() else None, config=config)


def _bucket_answers(destination: str) -> None:
    parsed = urllib.parse.urlparse(destination)  # s3://bucket[/prefix], checked by entrypoint.sh
    _probe_s3_client().list_objects_v2(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/"), MaxKeys=1)


def _checks(auth_database_uri: str | None) -> dict:
    from mlflow.server.constants import ARTIFACTS_DESTINATION_ENV_VAR, BACKEND_STORE_URI_ENV_VAR

    checks = {
        "tracking_database": functools.partial(_database_answers, os.environ[BACKEND_STORE_URI_ENV_VAR]),
        "artifact_store": functools.partial(_bucket_answers, os.environ[ARTIFACTS_DESTINATION_ENV_VAR]),
    }
    if auth_database_uri:
        checks["auth_database"] = functools.partial(_database_answers, auth_database_uri)
    return checks


def _run(checks: dict) -> dict[str, str]:
    # Not a `with` block: leaving it would wait for a check that is still hanging.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="cvops-ready")
    futures = {name: pool.submit(check) for name, check in checks.items()}
    pool.shutdown(wait=False)
    concurrent.futures.wait(futures.values(), timeout=PROBE_DEADLINE_S)
    results = {}
    for name, future in futures.items():
        if not future.done():
            results[name] = "timed out"
        elif future.exception() is not None:
            results[name] = "unreachable"
            # libpq's messages span lines: the log keeps one per failed check
            _logger.warning("readiness: %s: %s", name, " ".join(str(future.exception()).split()))
        else:
            results[name] = "ok"
    return results


def install(app, auth=None) -> None:
    """Serve ``/ready`` (under MLflow's static prefix, like ``/health``), with no login under ``auth``."""
    from mlflow.server import _add_static_prefix

    checks = _checks(auth.auth_config.database_uri if auth is not None else None)

    def ready():
        results = _run(checks)
        is_ready = all(result == "ok" for result in results.values())
        return jsonify(status="ready" if is_ready else "not ready", checks=results), 200 if is_ready else 503

    app.add_url_rule(_add_static_prefix("/ready"), "cvops_ready", ready)
    if auth is not None:
        if not hasattr(auth, "_UNPROTECTED_PATH_PREFIXES"):  # fail loudly if an MLflow upgrade renamed it
            raise RuntimeError("mlflow.server.auth._UNPROTECTED_PATH_PREFIXES is gone: review readiness.py")
        auth._UNPROTECTED_PATH_PREFIXES = (*auth._UNPROTECTED_PATH_PREFIXES, "/ready")
