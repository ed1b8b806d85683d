"""The `serve` profile: the inference server built from services/serving/Dockerfile, started by
`docker compose --profile serve up`, reading the registry with the secrets volume's admin login,
healthy once its model is loaded, and following @champion under load.

The image is built on the stand-in base with the requirements the Keras detector of
tests/harness/serving.py recorded (tensorflow-cpu, keras, numpy, ...), from PyPI; the test skips
when that fails.
"""
from __future__ import annotations

import os
import uuid

import pytest
import requests
from mlflow import MlflowClient

from tests.compose.serving import recorded_requirements, served_by_the_profile
from tests.harness.serving import (assert_one_switch_without_failures, move_alias_under_load, prediction_request,
                                   register_box_detector)
from tests.integration.sdk_env import use_sdk_env
from tests.integration.test_serving import png

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

SERVING_IMAGE = "cvops-compose-test/serving:local"


@pytest.fixture(scope="module")
def serving(compose_stack, tmp_path_factory):
    """A registered detector with @champion, served by the profile's container."""
    name = f"compose-serve-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_sdk_env(monkeypatch, compose_stack, tmp_path_factory.mktemp("serving-sdk"))
        first = register_box_detector(name, class_id=1)
        client = MlflowClient(compose_stack.url)
        client.set_registered_model_alias(name, "champion", first)
        requirements = recorded_requirements(f"models:/{name}@champion")
    image = os.environ.get("SERVING_IMAGE", SERVING_IMAGE)
    with served_by_the_profile(compose_stack, name, requirements, image) as url:
        yield url, name, client


def test_the_profile_serves_champion_and_follows_a_promotion(serving, compose_stack, tmp_path, monkeypatch):
    url, name, client = serving
    predict = f"{url}/v1/models/{name}/predict"
    auth = (compose_stack.admin_username, compose_stack.admin_password)
    assert requests.post(predict, data=png(0), timeout=30).status_code == 401
    first = requests.post(predict, data=png(0), auth=auth, timeout=30)
    assert first.status_code == 200, first.text
    assert first.headers["X-Model-Version"] == "1" and first.json()["predictions"][0]["class_ids"] == [1, 1]

    use_sdk_env(monkeypatch, compose_stack, tmp_path)
    second = register_box_detector(name, class_id=2)
    answers = move_alias_under_load(prediction_request(url, name, auth, [png(0)], timeout=30),
                                    lambda: client.set_registered_model_alias(name, "champion", second), second,
                                    timeout_s=120)
    assert_one_switch_without_failures(answers, "1", second, compose_stack.logs("serving"))


def test_the_container_runs_as_its_own_user_with_the_secret_as_a_file(serving, compose_stack):
    environment = compose_stack.compose("--profile", "serve", "exec", "-T", "serving", "sh", "-c",
                                        "id -u; env | grep MLFLOW_TRACKING_PASSWORD || true",
                                        check=False).stdout.split()
    assert environment[0] == "10002"
    assert environment[1:] == ["MLFLOW_TRACKING_PASSWORD_FILE=/run/secrets/mlflow_admin_password"]
