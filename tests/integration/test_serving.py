"""The inference server (services/serving) against the real tracking server: started by gunicorn
as its container starts it, serving a registered Keras detector from ``@champion``, predicting
over HTTP, checking logins with the tracking server, and following the alias when promotion
moves it while a client keeps sending requests."""
from __future__ import annotations

import base64
import io
import subprocess
import time
import uuid

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from cvops import registry
from tests.harness.serving import (
    DETECTIONS_PER_IMAGE, IMAGE_SIZE, SERVING_DIR, ServingServer, assert_one_switch_without_failures,
    move_alias_under_load, prediction_request, register_box_detector,
)
from tests.integration.sdk_env import use_sdk_env

pytestmark = pytest.mark.integration
pytest.importorskip("keras")

FIRST_CLASS, SECOND_CLASS = 1, 2
GATE = [registry.Gate("eval/mAP", min_value=10.0)]


def png(seed: int, size: int = IMAGE_SIZE) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_same_detections(found: dict, expected: dict) -> None:
    """Equal up to float32 rounding, which differs with the batch size."""
    assert (found["class_ids"], found["class_names"]) == (expected["class_ids"], expected["class_names"])
    np.testing.assert_allclose(found["boxes"], expected["boxes"], atol=0.02)
    np.testing.assert_allclose(found["scores"], expected["scores"], atol=1e-5)


@pytest.fixture(scope="module")
def served(tracking_server, tmp_path_factory):
    """Two registered detectors, each with @champion on version 1, served by one server."""
    root = tmp_path_factory.mktemp("serving")
    stable, moving = f"serve-stable-{uuid.uuid4().hex[:6]}", f"serve-moving-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_sdk_env(monkeypatch, tracking_server, root)
        client = MlflowClient(tracking_server.url)
        for name in (stable, moving):
            version = register_box_detector(name, FIRST_CLASS, {"eval/mAP": 20.0})
            registry.promote(name, version, GATE, client=client)
        client.set_model_version_tag(stable, "1", "cvops.class_names", '["background", "parcel"]')
    server = ServingServer(root, tracking_server.url, *tracking_server.admin_auth, models=f"{stable},{moving}@champion",
                           CVOPS_SERVE_POLL_INTERVAL_S="0.5", CVOPS_SERVE_AUTH_CACHE_S="2")
    server.start()
    try:
        server.wait_ready()
        yield server, stable, moving
    finally:
        server.stop()


def test_predicts_png_multipart_and_json_batches_in_one_schema(served, tracking_server):
    server, stable, _ = served
    url = f"{server.url}/v1/models/{stable}/predict"
    auth = tracking_server.admin_auth

    raw = requests.post(url, data=png(0), headers={"Content-Type": "image/png"}, auth=auth, timeout=30)
    assert raw.status_code == 200, raw.text
    assert raw.headers["X-Model-Version"] == "1"
    body = raw.json()
    assert (body["model"], body["version"]) == (stable, "1")
    [prediction] = body["predictions"]
    assert set(prediction) == {"boxes", "scores", "class_ids", "class_names"}
    assert len(prediction["boxes"]) == DETECTIONS_PER_IMAGE and all(len(box) == 4 for box in prediction["boxes"])
    assert all(0 <= coordinate <= IMAGE_SIZE for box in prediction["boxes"] for coordinate in box)
    assert prediction["class_ids"] == [FIRST_CLASS] * DETECTIONS_PER_IMAGE
    assert prediction["class_names"] == ["parcel"] * DETECTIONS_PER_IMAGE  # from the version's tag
    assert all(0 <= score <= 1 for score in prediction["scores"])

    # A bigger image is resized to the model's input; boxes come back in the sent image's pixels.
    multipart = requests.post(url, files=[("image", ("a.png", png(0), "image/png")),
                                          ("image", ("b.png", png(1, size=4 * IMAGE_SIZE), "image/png"))],
                              auth=auth, timeout=30)
    assert multipart.status_code == 200, multipart.text
    first, big = multipart.json()["predictions"]
    assert_same_detections(first, prediction)
    assert max(c for box in big["boxes"] for c in box) > IMAGE_SIZE

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png(0)))).tolist()  # the same image as numbers and as base64
    batch = requests.post(url, json=[pixels, base64.b64encode(png(0)).decode()], auth=auth, timeout=30)
    assert batch.status_code == 200, batch.text
    for found in batch.json()["predictions"]:
        assert_same_detections(found, prediction)


def test_answers_clear_json_errors(served, tracking_server):
    server, stable, _ = served
    auth = tracking_server.admin_auth
    bad_image = requests.post(f"{server.url}/v1/models/{stable}/predict", data=b"not an image", auth=auth, timeout=30)
    assert bad_image.status_code == 400 and bad_image.json()["error"]["code"] == "bad_input"
    bad_json = requests.post(f"{server.url}/v1/models/{stable}/predict", json=[[[1, 2]]], auth=auth, timeout=30)
    assert bad_json.status_code == 400 and "(H, W, 3)" in bad_json.json()["error"]["message"]
    unknown = requests.post(f"{server.url}/v1/models/no-such-model/predict", data=png(0), auth=auth, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"
    listed = requests.get(f"{server.url}/v1/models", auth=auth, timeout=30).json()["models"]
    assert listed[stable] == {"alias": "champion", "version": "1", "ready": True, "last_error": None}


def test_only_logins_of_the_tracking_server_may_predict(served, tracking_server):
    server, stable, _ = served
    url = f"{server.url}/v1/models/{stable}/predict"
    anonymous = requests.post(url, data=png(0), timeout=30)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = requests.post(url, data=png(0), auth=(tracking_server.admin_username, "wrong-password-123"), timeout=30)
    assert wrong.status_code == 401
    (reader,) = tracking_server.create_users("reader").values()
    assert requests.post(url, data=png(0), auth=reader, timeout=30).status_code == 200
    # Unauthenticated probes for orchestrators.
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/ready", timeout=10).status_code == 200


def test_follows_champion_to_a_promoted_version_without_failed_requests(served, tracking_server, tmp_path, monkeypatch):
    server, _, moving = served
    url = f"{server.url}/v1/models/{moving}/predict"
    auth = tracking_server.admin_auth
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    challenger = register_box_detector(moving, SECOND_CLASS, {"eval/mAP": 30.0})

    def promote() -> None:
        assert registry.promote(moving, challenger, GATE, client=MlflowClient(tracking_server.url)).promoted

    answers = move_alias_under_load(prediction_request(server.url, moving, auth, [png(0)], timeout=30), promote,
                                    challenger, timeout_s=120)
    assert_one_switch_without_failures(answers, "1", challenger, server.log())
    answer = requests.post(url, data=png(0), auth=auth, timeout=30).json()
    assert answer["predictions"][0]["class_ids"] == [SECOND_CLASS] * DETECTIONS_PER_IMAGE

    # The version swapped out leaves the disk: one downloaded copy per served model remains.
    def model_copies() -> list[str]:
        return sorted(str(found.parent.relative_to(server.temp_dir)) for found in server.temp_dir.rglob("MLmodel"))

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(model_copies()) != 2:
        time.sleep(0.5)
    assert len(model_copies()) == 2, model_copies()


def _model_that_cannot_load():
    import mlflow.pyfunc

    class CannotLoad(mlflow.pyfunc.PythonModel):  # defined here: pickled by value, runs in the server
        def load_context(self, context):
            raise RuntimeError("the weights are corrupt")

        def predict(self, context, model_input, params=None):
            return model_input

    return CannotLoad()


def test_a_version_that_cannot_load_leaves_the_serving_one_answering(served, tracking_server, tmp_path, monkeypatch):
    server, stable, _ = served
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    import cvops

    with cvops.start_run(experiment="serving") as run:
        broken = registry.log_model_and_register(run, _model_that_cannot_load(), "pyfunc", registered_model_name=stable)
    MlflowClient(tracking_server.url).set_registered_model_alias(stable, "champion", broken.version)
    url, auth = f"{server.url}/v1/models", tracking_server.admin_auth
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not requests.get(url, auth=auth, timeout=10).json()["models"][stable]["last_error"]:
        time.sleep(0.5)
    state = requests.get(url, auth=auth, timeout=10).json()["models"][stable]
    assert state["version"] == "1" and "the weights are corrupt" in state["last_error"]
    answer = requests.post(f"{url}/{stable}/predict", data=png(0), auth=auth, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "1"
    assert requests.get(f"{server.url}/ready", timeout=10).status_code == 200


def test_ready_only_once_every_model_is_loaded(tracking_server, tmp_path):
    """A model whose alias points nowhere yet: the process is up, not ready, and says why."""
    name = f"serve-unset-{uuid.uuid4().hex[:6]}"
    server = ServingServer(tmp_path, tracking_server.url, *tracking_server.admin_auth, models=f"{name}@staging",
                           CVOPS_SERVE_POLL_INTERVAL_S="0.5")
    server.start()
    try:
        time.sleep(2)  # a few polls
        ready = requests.get(f"{server.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["models"][name]["ready"] is False and ready.json()["models"][name]["last_error"]
        response = requests.post(f"{server.url}/v1/models/{name}/predict", data=png(0),
                                 auth=tracking_server.admin_auth, timeout=30)
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_ready"
    finally:
        server.stop()


def test_a_bad_configuration_stops_the_server_once_with_the_reason(tmp_path):
    """Checked in gunicorn's master: a worker refusing it would be restarted forever."""
    server = ServingServer(tmp_path, "http://127.0.0.1:9", "admin", "unused-password", models="")
    with open(server.log_file, "wb") as log:
        process = subprocess.Popen(server.command, cwd=SERVING_DIR, env=server.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert process.wait(timeout=60) != 0
    finally:
        process.kill()
    assert server.log().count("CVOPS_SERVE_MODELS is empty") == 1, server.log()
