"""The `serve` profile started as docs/serving.md tells a user to: the image built with the
models' requirements (`SERVING_MODEL_REQUIREMENTS`), `docker compose --profile serve up -d`,
healthy once every model is loaded. Shared by test_serving_profile.py and the submit tests, whose
trained models it serves.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import requests

from tests.compose.trainer_jobs import wheels_in_build_context
from tests.frameworks.support import assert_detections_inside, register_again
from tests.harness.fixtures import free_port
from tests.harness.serving import (answered_version, assert_one_switch_without_failures, move_alias_under_load,
                                   prediction_request)
from tests.integration.sdk_env import use_sdk_env

HEALTHY_TIMEOUT_S = 600


def recorded_requirements(model_uri: str) -> str:
    """The requirements the model recorded when it was logged, as `SERVING_MODEL_REQUIREMENTS`
    takes them (space-separated): what a user reads off `get_model_dependencies` (docs/serving.md)."""
    import mlflow.pyfunc

    with open(mlflow.pyfunc.get_model_dependencies(model_uri)) as recorded:
        lines = [line.split("#", 1)[0].strip() for line in recorded]
    requirements = [line for line in lines if line]
    assert all(" " not in line for line in requirements), f"a requirement the build argument cannot carry: {requirements}"
    return " ".join(requirements)


@contextmanager
def served_by_the_profile(compose_stack, models: str, requirements: str, image: str, *,
                          wheels: Path | None = None, build_timeout_s: float = 1500):
    """The profile's `serving` container for `models`, built as `image` with `requirements` (and
    the wheels of `wheels` in the build's wheelhouse); yields its URL once healthy, removes the
    container afterwards. Skips when the build fails (PyPI unreachable)."""
    settings = {
        "SERVING_IMAGE": image,
        "SERVING_BASE_IMAGE": compose_stack.settings["BASE_IMAGE"],
        "SERVING_MODEL_REQUIREMENTS": requirements,
        "SERVING_MODELS": models,
        "SERVING_HOST_PORT": str(free_port()),
        "SERVING_POLL_INTERVAL_S": "1",
    }
    with wheels_in_build_context(wheels) if wheels is not None else nullcontext():
        built = compose_stack.compose("--profile", "serve", "build", "serving", check=False,
                                      timeout=build_timeout_s, **settings)
    if built.returncode != 0:
        pytest.skip(f"could not build the serving image (PyPI reachable?):\n{built.stderr[-1500:]}")
    compose_stack.compose("--profile", "serve", "up", "-d", "--no-build", "serving", **settings)
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while (compose_stack.container_state("serving") or {}).get("Health", {}).get("Status") != "healthy":
            assert time.monotonic() < deadline, compose_stack.logs("serving")
            time.sleep(1)
        yield f"http://127.0.0.1:{settings['SERVING_HOST_PORT']}"
    finally:
        compose_stack.compose("--profile", "serve", "rm", "-s", "-f", "serving", check=False, **settings)


def assert_the_trained_model_is_served_and_follows_champion(compose_stack, client, registered: dict, shapes: Path,
                                                            serving_image: str, monkeypatch, tmp_path: Path, *,
                                                            wheels: Path | None = None) -> None:
    """The version a submit test's job registered (``registered["name"]``, @candidate) promoted to
    @champion and served by the profile, its image built with the requirements the model recorded:
    a validation PNG of ``shapes`` answered in the one schema by that version; then @champion moved
    to a new version while a client keeps predicting: no failed request, one switch, the same
    detections."""
    from cvops.detection_schema import CLASS_NAMES_TAG

    if "name" not in registered:
        pytest.skip("the submit test before this one registers the model this serves, and did not")
    use_sdk_env(monkeypatch, compose_stack, tmp_path)  # register_again registers through the SDK
    name = registered["name"]
    image_file = sorted((shapes / "images" / "val").glob("*.png"))[0]
    version = client.get_model_version_by_alias(name, "candidate").version
    client.set_registered_model_alias(name, "champion", version)
    class_names = json.loads(client.get_model_version(name, version).tags[CLASS_NAMES_TAG])
    class_names = set(class_names.values() if isinstance(class_names, dict) else class_names)
    auth = (compose_stack.admin_username, compose_stack.admin_password)
    sample = image_file.read_bytes()
    requirements = recorded_requirements(f"models:/{name}@champion")
    with served_by_the_profile(compose_stack, name, requirements, serving_image, wheels=wheels,
                               build_timeout_s=3000) as url:
        predict = prediction_request(url, name, auth, [sample], timeout=300)
        first = predict(requests)
        assert first.status_code == 200 and answered_version(first) == version, first.text
        [found] = first.json()["predictions"]
        assert_detections_inside(found, image_file, class_names)

        new = register_again(client, name, version)
        answers = move_alias_under_load(predict, lambda: client.set_registered_model_alias(name, "champion", new),
                                        new, timeout_s=600)
        assert_one_switch_without_failures(answers, version, new, compose_stack.logs("serving"))
        after = predict(requests)
        assert answered_version(after) == new and after.json()["predictions"] == [found]
