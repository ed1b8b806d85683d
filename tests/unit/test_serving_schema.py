"""The inference server's pure parts (services/serving): its configuration and the one detection
schema every framework's output is turned into. The server itself: tests/integration/test_serving.py."""
from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The image runs the package from its own folder (gunicorn.conf.py puts it on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "serving"))

from cvops_serving import config  # noqa: E402
from cvops_serving.detections import (  # noqa: E402
    BadInput, InputFormat, UnsupportedOutput, images_from_json, normalise,
)


def test_models_default_to_champion_and_keep_a_given_alias():
    assert config.parse_models(" parcels, shapes@staging ,") == (
        config.ModelSpec("parcels", "champion"), config.ModelSpec("shapes", "staging"))


@pytest.mark.parametrize("value, message", [("", "empty"), ("@champion", "no model name"),
                                            ("a,a@staging", "more than once")])
def test_bad_model_lists_are_refused_with_the_reason(value, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse_models(value)


def test_the_password_is_read_from_its_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-value\n")
    settings = config.from_environ({"MLFLOW_TRACKING_URI": "http://mlflow:5000/", "CVOPS_SERVE_MODELS": "m",
                                    "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD_FILE": str(secret)})
    assert (settings.tracking_uri, settings.username, settings.password) == ("http://mlflow:5000", "admin", "s3cret-value")
    assert settings.poll_interval_s == 10.0


def test_a_missing_password_file_is_named():
    with pytest.raises(config.ConfigError, match="MLFLOW_TRACKING_PASSWORD_FILE=/nowhere"):
        config.from_environ({"MLFLOW_TRACKING_URI": "http://m", "CVOPS_SERVE_MODELS": "m",
                             "MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD_FILE": "/nowhere"})


def _png(height: int, width: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_json_images_are_arrays_or_base64_png():
    images = images_from_json({"images": [np.ones((4, 5, 3)).tolist(), base64.b64encode(_png(6, 7)).decode()]})
    assert [image.shape for image in images] == [(4, 5, 3), (6, 7, 3)]
    assert all(image.dtype == np.uint8 for image in images)


@pytest.mark.parametrize("payload, message", [
    ([], "non-empty list"), ([[1, 2, 3]], r"\(H, W, 3\)"), (["bm90IGFuIGltYWdl"], "not a PNG or JPEG"),
    ([np.full((2, 2, 3), 300).tolist()], "0-255"), (["not base64!"], "base64"),
])
def test_unreadable_json_images_are_bad_input(payload, message):
    with pytest.raises(BadInput, match=message):
        images_from_json(payload)


def test_a_detector_frame_becomes_the_schema_with_class_names():
    """cvops' Detectron2 and TF OD API pyfuncs answer a DataFrame, boxes already in pixels."""
    images = [np.zeros((100, 200, 3), np.uint8)] * 2
    frame = pd.DataFrame({"boxes": [[[1.0, 2.0, 30.0, 40.0]], []], "scores": [[0.9], []], "classes": [[3], []]})
    assert normalise(frame, images, InputFormat(), {3: "parcel"}) == [
        {"boxes": [[1.0, 2.0, 30.0, 40.0]], "scores": [0.9], "class_ids": [3], "class_names": ["parcel"]},
        {"boxes": [], "scores": [], "class_ids": [], "class_names": []},
    ]


def test_a_keras_dict_is_scaled_back_to_each_sent_image():
    """A Keras model sees images resized to its input; its boxes come back in the sent pixels."""
    model_input = InputFormat(height=32, width=32, dtype=np.dtype("float32"))
    images = [np.zeros((32, 32, 3), np.uint8), np.zeros((64, 128, 3), np.uint8)]
    batch = model_input.model_input(images)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.float32
    output = {"boxes": np.array([[[0, 0, 16, 16]], [[0, 0, 16, 16]]], np.float32),
              "scores": np.array([[0.5], [0.25]]), "classes": np.array([[1.0], [2.0]], np.float32)}
    small, big = normalise(output, images, model_input, {})
    assert small["boxes"] == [[0, 0, 16, 16]] and big["boxes"] == [[0, 0, 64, 32]]
    assert (small["class_ids"], big["class_names"]) == ([1], ["2"])  # no names recorded: the id


def test_an_output_that_is_not_detections_says_what_a_detector_returns():
    with pytest.raises(UnsupportedOutput, match=r"\['box', 'class'\].*'boxes'"):
        normalise({"box": np.zeros((1, 4)), "class": np.zeros((1, 2))}, [np.zeros((8, 8, 3), np.uint8)], InputFormat(), {})


def test_a_keras_model_is_called_directly_with_the_answers_of_its_pyfunc(tmp_path, monkeypatch):
    """A Keras pyfunc's predict runs Keras' Model.predict, ~15x the model's own cost on a small
    batch; the server and cvops evaluate call the model instead, for the same arrays."""
    keras = pytest.importorskip("keras")
    import mlflow.pyfunc
    import mlflow.tensorflow

    from cvops.detection_schema import model_predict
    from tests.harness.serving import IMAGE_SIZE, box_detector

    batch = np.random.default_rng(0).integers(0, 255, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    mlflow.tensorflow.save_model(box_detector(class_id=2), str(tmp_path / "model"), input_example=batch[:1])
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    expected = pyfunc.predict(batch)

    def refuse(*args, **kwargs):
        raise AssertionError("Model.predict was called")

    monkeypatch.setattr(keras.Model, "predict", refuse)
    found = model_predict(pyfunc)(batch)
    assert set(found) == set(expected) == {"boxes", "scores", "classes"}
    for key in expected:
        np.testing.assert_allclose(found[key], expected[key], atol=1e-5)
