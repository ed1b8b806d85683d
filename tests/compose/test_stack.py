"""docker-compose.yml brought up for real: a team member with only the URL and a password can use it.

The S3 service is moto's S3 server standing in for MinIO (no MinIO image can be pulled here); the
bucket bootstrap, versioning and lifecycle calls are the same S3 API calls MinIO receives.
"""

import os

import pytest
import requests

# The first test of the session also pays for building the images and `up`.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

ARTIFACT_BYTES = 16 * 2**20


def test_every_service_healthy_and_one_shots_succeeded(compose_stack):
    print(f"\n[compose] time from `up -d` to all healthy: {compose_stack.time_to_healthy_s:.1f} s")
    for service in ("postgres", "minio", "mlflow"):
        assert compose_stack.container_state(service)["Health"]["Status"] == "healthy"
    for service in ("secrets", "storage-init", "migrate"):
        assert compose_stack.container_state(service)["ExitCode"] == 0
    bootstrap = compose_stack.logs("storage-init")
    assert "versioning: Enabled" in bootstrap
    assert "incomplete multipart uploads aborted after 7 day(s)" in bootstrap


def test_only_the_tracking_port_is_published(compose_stack):
    published = {service: compose_stack.compose("port", service, port, check=False).stdout.strip()
                 for service, port in (("postgres", "5432"), ("minio", "9000"), ("minio", "9001"),
                                       ("mlflow", "5000"))}
    assert published.pop("mlflow").endswith(f":{compose_stack.port}")
    assert not any(address.rsplit(":", 1)[-1].isdigit() for address in published.values()), published


def test_client_with_only_url_and_credentials_round_trips_a_run(compose_stack, tmp_path):
    artifact = tmp_path / "model_final.pth"
    artifact.write_bytes(os.urandom(ARTIFACT_BYTES))
    logged = compose_stack.client("log", str(artifact))

    runs = compose_stack.client("snapshot", str(tmp_path / "download"))
    run = runs[logged["run_id"]]
    assert run["status"] == "FINISHED"
    assert run["params"] == {"SOLVER.BASE_LR": "0.01"}
    assert run["metrics"]["total_loss"] == [[step, 1.0 / (step + 1)] for step in range(5)]
    assert run["tags"]["framework"] == "detectron2"
    downloaded = tmp_path / "download" / logged["run_id"] / "checkpoints" / "model_final.pth"
    assert downloaded.read_bytes() == artifact.read_bytes()


def test_anonymous_and_wrong_password_requests_are_refused(compose_stack):
    search = f"{compose_stack.url}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=10).status_code == 401
    wrong = (compose_stack.admin_username, compose_stack.admin_password + "x")
    assert requests.post(search, json={"max_results": 1}, auth=wrong, timeout=10).status_code == 401
    admin = (compose_stack.admin_username, compose_stack.admin_password)
    assert requests.post(search, json={"max_results": 1}, auth=admin, timeout=10).status_code == 200


def test_server_image_refuses_an_empty_admin_password(compose_stack):
    # Without the secrets volume's file (e.g. a hand-written `docker run`), the image itself must refuse.
    result = compose_stack.compose("run", "--rm", "--no-deps", "-T", "-e", "MLFLOW_ADMIN_PASSWORD_FILE=",
                                   "-e", "MLFLOW_ADMIN_PASSWORD=", "mlflow", "serve", check=False, timeout=120)
    assert result.returncode != 0
    assert "MLFLOW_ADMIN_PASSWORD is required" in result.stdout + result.stderr
