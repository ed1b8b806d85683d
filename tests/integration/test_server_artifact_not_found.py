"""A wrong artifact path is a quick 404 RESOURCE_DOES_NOT_EXIST, not a 500 that clients retry for minutes.

MLflow's client retries a 500 with backoff (4-5 minutes before a download of a wrong path failed);
a 404 it gives up on at once. The answer keeps MLflow's JSON error shape and names neither the
bucket nor the object's key.
"""

import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.integration

MISSING = "no/such/file.txt"
# A 404 costs a couple of requests; a retried 500 takes minutes.
FAST_S = 1.0


@pytest.fixture(scope="module")
def logged_run(tracking_server, tmp_path_factory):
    """A run with one small artifact (cvops/notes.txt), logged as the admin through the proxy."""
    client = MlflowClient(tracking_uri=tracking_server.url)
    notes = tmp_path_factory.mktemp("artifacts") / "notes.txt"
    notes.write_text("present\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", tracking_server.admin_username)
        env.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.admin_password)
        experiment_id = client.create_experiment(f"missing-artifacts-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment_id)
        client.log_artifact(run.info.run_id, str(notes), artifact_path="cvops")
    return run


def assert_not_found_without_storage_details(response, server, s3):
    assert response.status_code == 404, f"{response.status_code} {response.text[:500]}"
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert s3.bucket not in response.text
    assert server.artifacts_destination not in response.text


def timed_get(server, endpoint, **params):
    started = time.perf_counter()
    response = requests.get(f"{server.url}{endpoint}", params=params, auth=server.admin_auth, timeout=30)
    return response, time.perf_counter() - started


def test_proxied_download_of_a_missing_object_is_404(tracking_server, s3, logged_run):
    artifact_root = logged_run.info.artifact_uri.removeprefix("mlflow-artifacts:")
    response, took_s = timed_get(tracking_server, f"/api/2.0/mlflow-artifacts/artifacts{artifact_root}/{MISSING}")
    assert_not_found_without_storage_details(response, tracking_server, s3)
    assert took_s < FAST_S


def test_get_artifact_of_a_missing_object_is_404(tracking_server, s3, logged_run):
    response, _ = timed_get(tracking_server, "/get-artifact", run_id=logged_run.info.run_id, path=MISSING)
    assert_not_found_without_storage_details(response, tracking_server, s3)


def test_model_version_artifact_of_a_missing_object_is_404(tracking_server, s3, logged_run):
    api = f"{tracking_server.url}/api/2.0/mlflow"
    name = f"missing-artifacts-{uuid.uuid4().hex[:8]}"
    requests.post(f"{api}/registered-models/create", json={"name": name}, auth=tracking_server.admin_auth,
                  timeout=30).raise_for_status()
    requests.post(f"{api}/model-versions/create", auth=tracking_server.admin_auth, timeout=30,
                  json={"name": name, "source": f"{logged_run.info.artifact_uri}/cvops",
                        "run_id": logged_run.info.run_id}).raise_for_status()

    response, _ = timed_get(tracking_server, "/model-versions/get-artifact", name=name, version="1", path=MISSING)
    assert_not_found_without_storage_details(response, tracking_server, s3)
    present, _ = timed_get(tracking_server, "/model-versions/get-artifact", name=name, version="1",
                           path="notes.txt")
    assert present.status_code == 200 and present.content == b"present\n"


def test_client_download_of_a_missing_artifact_fails_at_once(tracking_env, s3, logged_run, tmp_path):
    client = MlflowClient()
    outcome = {}

    def download():
        started = time.perf_counter()
        try:
            client.download_artifacts(logged_run.info.run_id, MISSING, str(tmp_path))
        except MlflowException as error:
            outcome["error"] = error
        outcome["took_s"] = time.perf_counter() - started

    # A daemon thread: before the fix the client would still be retrying minutes after the assert.
    worker = threading.Thread(target=download, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the client is still retrying a missing artifact after 30 s"
    assert outcome["took_s"] < FAST_S
    # The client words its own error (runs:/ resolution tries the run's and its models' artifacts).
    assert outcome["error"].error_code == "RESOURCE_DOES_NOT_EXIST"

    # A path that is there still downloads, folder and file alike.
    run_id = logged_run.info.run_id
    folder = client.download_artifacts(run_id, "cvops", str(tmp_path))
    assert Path(folder, "notes.txt").read_text() == "present\n"
    (tmp_path / "file").mkdir()
    assert Path(client.download_artifacts(run_id, "cvops/notes.txt", str(tmp_path / "file"))).read_text() \
        == "present\n"

def test_listing_a_missing_folder_is_an_empty_listing(tracking_env, logged_run):
    # S3 has no folders: a prefix nothing is stored under lists as empty, as MLflow documents.
    assert MlflowClient().list_artifacts(logged_run.info.run_id, "no/such") == []
