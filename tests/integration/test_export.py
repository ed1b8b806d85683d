"""ONNX export of a registered Keras detector (cvops.export): the file and its record in the run,
the parity figure and latencies as metrics of the version's logged model, the verdict tag."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from mlflow import MlflowClient

import cvops
from cvops import export
from cvops.integrations import _pyfunc
from tests.harness.serving import IMAGE_SIZE, box_detector
from tests.integration.sdk_env import use_sdk_env

pytestmark = pytest.mark.integration
pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
onnxruntime = pytest.importorskip("onnxruntime")


def test_a_registered_keras_model_exports_to_onnx_with_its_parity_recorded(tracking_server, tmp_path, monkeypatch):
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    client = MlflowClient(tracking_server.url)
    model = box_detector(class_id=1)
    samples = np.random.default_rng(0).integers(0, 255, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    with cvops.start_run(experiment="export") as run:
        version = _pyfunc.log_keras_model(run, model, input_example=samples[:2],
                                          registered_model_name=f"export-{uuid.uuid4().hex[:6]}")
        result = export.export_keras_onnx(model, version, samples, client=client)

    assert result.passed, result.summary()
    assert 0 <= result.max_abs_diff <= export.DEFAULT_TOLERANCE
    registered = client.get_model_version(version.name, version.version)
    assert registered.tags[export.tag("onnx")] == "passed"
    logged_model = client.get_logged_model(version.model_uri.removeprefix("models:/"))
    metrics = {metric.key: metric.value for metric in logged_model.metrics}
    assert metrics["export/onnx_max_abs_diff"] == pytest.approx(result.max_abs_diff)
    assert metrics["export/onnx_latency_ms"] > 0 and metrics["export/native_latency_ms"] > 0

    folder = export.artifact_dir("onnx")
    files = {item.path for item in client.list_artifacts(version.run_id, folder)}
    assert files == {f"{folder}/model.onnx", f"{folder}/export.json"}
    assert result.artifact_uri == f"runs:/{version.run_id}/{folder}/model.onnx"
    onnx_file = client.download_artifacts(version.run_id, f"{folder}/model.onnx", str(tmp_path))
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": samples})))
    np.testing.assert_allclose(outputs["boxes"], np.asarray(model(samples, training=False)["boxes"]), atol=1e-3)


def test_a_failed_conversion_is_recorded_on_the_version_and_never_raises(tracking_server, tmp_path, monkeypatch):
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    client = MlflowClient(tracking_server.url)
    model = box_detector(class_id=1)
    samples = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32")
    with cvops.start_run(experiment="export") as run:
        version = _pyfunc.log_keras_model(run, model, input_example=samples,
                                          registered_model_name=f"export-{uuid.uuid4().hex[:6]}")
        with pytest.warns(UserWarning, match="onnx export FAILED: conversion failed"):
            result = export.export_keras_onnx(model, version, samples, client=client, opset=1)  # no such opset

    assert not result.passed and result.artifact_uri is None
    registered = client.get_model_version(version.name, version.version)
    assert registered.tags[export.tag("onnx")].startswith("failed: conversion failed")
    assert registered.status == "READY"  # the registration stands
    assert not client.list_artifacts(version.run_id, export.artifact_dir("onnx"))


def test_cvops_export_promote_exports_what_promotion_moves_the_alias_to(tracking_server, tmp_path, monkeypatch):
    """CVOPS_EXPORT=promote: registering exports nothing; a promotion exports the promoted version,
    checked on the first images of the re-evaluation dataset; a refused challenger is not exported."""
    from cvops import registry
    from tests.harness.serving import register_keras_detector
    from tests.integration.test_fair_promotion import SQUARE, fixed_box_detector, write_squares_dataset

    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    monkeypatch.setenv("CVOPS_EXPORT", "promote")
    client = MlflowClient(tracking_server.url)
    name = f"export-at-promotion-{uuid.uuid4().hex[:6]}"
    good = register_keras_detector(name, fixed_box_detector(SQUARE, class_id=1), class_names=["circle", "square"])
    assert export.tag("onnx") not in client.get_model_version(name, good).tags
    write_squares_dataset(tmp_path / "squares")
    gates = [registry.Gate("eval/mAP", min_value=50.0)]

    decision = registry.promote(name, good, gates, client=client, reevaluate_on=tmp_path / "squares")

    assert decision.promoted and decision.exports == {"onnx": "passed"}, decision.summary()
    assert client.get_model_version(name, good).tags[export.tag("onnx")] == "passed"
    record = client.download_artifacts(client.get_model_version(name, good).run_id,
                                       f"{export.artifact_dir('onnx')}/export.json", str(tmp_path))
    assert json.loads(open(record).read())["samples"] == 1  # the dataset's first images, one batch
    assert '"exports": {"onnx": "passed"}' in client.get_model_version(name, good).tags[registry.DECISION_TAG]

    bad = register_keras_detector(name, fixed_box_detector((0, 0, 4, 4), class_id=1), class_names=["circle", "square"])
    refused = registry.promote(name, bad, gates, client=client, reevaluate_on=tmp_path / "squares")
    assert not refused.promoted and refused.exports == {}
    assert export.tag("onnx") not in client.get_model_version(name, bad).tags


def test_export_at_promotion_without_a_dataset_checks_on_the_input_example(tracking_server, tmp_path, monkeypatch):
    from cvops import registry
    from tests.harness.serving import register_box_detector

    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    client = MlflowClient(tracking_server.url)
    name = f"export-at-promotion-{uuid.uuid4().hex[:6]}"
    version = register_box_detector(name, class_id=1, metrics={"eval/mAP": 40.0})

    decision = registry.promote(name, version, [registry.Gate("eval/mAP", min_value=10.0)], client=client, export=True)

    assert decision.exports == {"onnx": "passed"}, decision.summary()
    assert "export onnx: passed" in decision.summary()
    logged_model = client.get_logged_model(client.get_model_version(name, version).source.removeprefix("models:/"))
    assert {metric.key for metric in logged_model.metrics} >= {"export/onnx_max_abs_diff", "export/onnx_latency_ms"}


def test_a_bad_cvops_export_is_refused_before_the_alias_moves(tracking_server, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    from cvops import registry
    from cvops.config import ConfigError
    from tests.harness.serving import register_box_detector

    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    client = MlflowClient(tracking_server.url)
    name = f"export-at-promotion-{uuid.uuid4().hex[:6]}"
    version = register_box_detector(name, class_id=1, metrics={"eval/mAP": 40.0})
    monkeypatch.setenv("CVOPS_EXPORT", "on-promotion")

    with pytest.raises(ConfigError, match="CVOPS_EXPORT='on-promotion' is not one of off, register, promote"):
        registry.promote(name, version, [registry.Gate("eval/mAP", min_value=10.0)], client=client)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "champion")
