"""/health says the process answers (liveness); /ready says it can serve: both databases and the bucket.

Before, /health was the only probe and stayed 200 while PostgreSQL was down and the API answered 503.
While PostgreSQL is down the API's 503 names neither the database's host nor SQL, and the log has
one line per failure (database_errors.py); before, the answer carried the whole exception and the
log a traceback per request.
"""

import time

import pytest
import requests

pytestmark = pytest.mark.integration

CHECKS = {"tracking_database", "auth_database", "artifact_store"}
# Each check has a 2 s timeout and they run side by side; a probe must never hang.
PROBE_S = 5


def ready(server):
    started = time.perf_counter()
    response = requests.get(f"{server.url}/ready", timeout=30)  # probes have no login
    return response, time.perf_counter() - started


def assert_no_secrets(response, server, s3, postgres):
    for secret in (postgres.password, s3.secret_key, s3.access_key, server.admin_password,
                   s3.bucket, str(postgres.port)):
        assert secret not in response.text


def test_ready_without_login_when_everything_is_up(tracking_server, s3, postgres):
    response, took_s = ready(tracking_server)
    assert response.status_code == 200, f"{response.text}\n{tracking_server.log()}"
    assert response.json() == {"status": "ready", "checks": {name: "ok" for name in CHECKS}}
    assert took_s < PROBE_S
    assert_no_secrets(response, tracking_server, s3, postgres)


def test_ready_names_an_unreachable_bucket(tracking_server_factory, s3, postgres):
    server = tracking_server_factory(MLFLOW_ARTIFACTS_DESTINATION="s3://cvops-no-such-bucket/artifacts")
    response, _ = ready(server)
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert checks["artifact_store"] != "ok"
    assert checks["tracking_database"] == checks["auth_database"] == "ok"
    assert "cvops-no-such-bucket" not in response.text
    assert_no_secrets(response, server, s3, postgres)


def test_ready_and_uploads_refuse_when_s3_refuses_the_server_s_keys(tracking_server_factory, s3, postgres):
    """A rotated or mistyped S3 secret: the store refuses every request (SeaweedFS checks
    signatures), /ready says so without the secret, and an upload fails instead of reading as done."""
    server = tracking_server_factory(AWS_SECRET_ACCESS_KEY="not-the-store-s-secret")
    response, took_s = ready(server)
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert checks["artifact_store"] != "ok"
    assert checks["tracking_database"] == checks["auth_database"] == "ok"
    assert took_s < PROBE_S
    assert "not-the-store-s-secret" not in response.text
    assert_no_secrets(response, server, s3, postgres)

    upload = requests.put(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/refused/model.pth",
                          data=b"weights", auth=server.admin_auth, timeout=60)
    assert upload.status_code >= 500, upload.text
    assert "not-the-store-s-secret" not in upload.text
    prefix = server.artifacts_destination.split("/", 3)[3]
    assert s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/refused")["KeyCount"] == 0


def test_ready_follows_postgres_while_health_stays_live(tracking_server, s3, postgres):
    log_before = tracking_server.log_file.read_text()
    postgres.stop()
    try:
        # The API's answer: retry later, naming no host, port or SQL; the log: one line per failure.
        search = requests.post(f"{tracking_server.url}/api/2.0/mlflow/runs/search", auth=tracking_server.admin_auth,
                               json={"experiment_ids": ["0"]}, timeout=30)
        assert search.status_code == 503, search.text
        assert search.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert search.json()["message"] == "The database is temporarily unavailable; retry later.", search.text
        assert_no_secrets(search, tracking_server, s3, postgres)
        log = tracking_server.log_file.read_text()[len(log_before):]
        assert "Traceback" not in log and "[SQL:" not in log, log
        assert "database error, the request is answered 503: (psycopg2.OperationalError) connection to server at" in log, log
        assert requests.get(f"{tracking_server.url}/health", timeout=30).status_code == 200
        response, took_s = ready(tracking_server)
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "not ready"
        assert body["checks"]["tracking_database"] != "ok"
        assert body["checks"]["auth_database"] != "ok"
        assert body["checks"]["artifact_store"] == "ok"
        assert took_s < PROBE_S
        assert_no_secrets(response, tracking_server, s3, postgres)
    finally:
        postgres.start()

    deadline = time.monotonic() + 30
    while (response := ready(tracking_server)[0]).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200, response.text
