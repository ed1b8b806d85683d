"""Keras adapter end to end: a tiny box-regression model really trains with model.fit (Keras 3 on
TensorFlow, CPU, a few seconds) on synthetic images, and the test reads back from the real MLflow
server (harness: PostgreSQL, S3 stand-in, server via the container entrypoint) what a user would
look at: metric names, steps and values, params, artifacts, the registered model loading back."""
import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration

keras = pytest.importorskip("keras")
mlflow = pytest.importorskip("mlflow")

import cvops  # noqa: E402
from cvops import export, registry  # noqa: E402
from cvops.evaluation import Detections  # noqa: E402
from cvops.integrations.keras import CvopsCallback  # noqa: E402

SIZE = 32
CLASSES = ["red", "green"]


def synthetic_boxes(count, seed):
    """Images with one coloured square each; the target is its box (0-1) and its colour."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE, 3), np.float32)
    boxes = np.zeros((count, 4), np.float32)
    labels = rng.integers(0, 2, count)
    for i in range(count):
        side = int(rng.integers(8, 16))
        x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
        images[i, y:y + side, x:x + side, labels[i]] = 1.0
        boxes[i] = np.array([x, y, x + side, y + side]) / SIZE
    return images, boxes, labels


def tiny_detector():
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(inputs))
    features = keras.layers.Concatenate()([features, keras.layers.Flatten()(keras.layers.MaxPooling2D(4)(inputs))])
    outputs = {
        "box": keras.layers.Dense(4, activation="sigmoid", name="box")(features),
        "cls": keras.layers.Dense(len(CLASSES), activation="softmax", name="cls")(features),
    }
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"box": "mse", "cls": "sparse_categorical_crossentropy"})
    return model


def decode(outputs):
    """This model's output -> one Detections per image (the user-supplied decoder)."""
    return [
        Detections(box[None] * SIZE, [int(np.argmax(probs))], [float(np.max(probs))])
        for box, probs in zip(outputs["box"], outputs["cls"])
    ]


def ground_truth(boxes, labels):
    return [Detections(box[None] * SIZE, [label]) for box, label in zip(boxes, labels)]


def wait_for_run_metrics(client, run_id, name, count, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        history = client.get_metric_history(run_id, name)
        if len(history) >= count or time.monotonic() > deadline:
            return sorted(history, key=lambda m: m.step)
        time.sleep(0.5)


def test_fit_logs_metrics_params_samples_evaluation_and_a_registered_model(tracking_env, tmp_path):
    images, boxes, labels = synthetic_boxes(64, seed=0)
    val_images, val_boxes, val_labels = synthetic_boxes(16, seed=1)
    model_name = f"keras-boxes-{time.time_ns()}"
    model = tiny_detector()
    with cvops.start_run(experiment="integrations-keras", run_name="tiny-detector") as run:
        callback = CvopsCallback(
            run,
            log_every_n_steps=4,
            registered_model_name=model_name,
            sample_images=val_images[:2],
            decode_predictions=decode,
            class_names=CLASSES,
            evaluation_data=(val_images, ground_truth(val_boxes, val_labels)),
        )
        targets = {"box": boxes, "cls": labels}
        model.fit(images, targets, epochs=2, batch_size=8, validation_data=(val_images, {"box": val_boxes, "cls": val_labels}), callbacks=[callback], verbose=0)
        registered_boxes = np.asarray(model(val_images[:3], training=False)["box"])
        # A second fit (its own callback, as a fine-tuning stage would have) continues the
        # optimizer's step count: batch steps go on from 16.
        model.fit(images, targets, epochs=1, batch_size=8, verbose=0, callbacks=[CvopsCallback(run, log_every_n_steps=4)])
        run_id = run.run_id

    client = mlflow.MlflowClient()
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.tags["framework"] == "keras"

    epoch_loss = wait_for_run_metrics(client, run_id, "loss", 3)
    # Epoch metrics: step = epoch index within each fit, as Keras' History numbers them.
    assert [m.step for m in epoch_loss] == [0, 0, 1]
    assert all(np.isfinite(m.value) for m in epoch_loss)
    assert "val_loss" in stored.data.metrics and "learning_rate" in stored.data.metrics
    batch_loss = wait_for_run_metrics(client, run_id, "batch/loss", 6)
    # 64 images / batch 8 = 8 optimizer steps per epoch, 3 epochs: every 4th global step.
    assert [m.step for m in batch_loss] == [4, 8, 12, 16, 20, 24]

    params = stored.data.params
    assert params["optimizer.class"] == "Adam"
    assert float(params["optimizer.learning_rate"]) == pytest.approx(1e-2)
    assert params["fit.epochs"] in ("2", "1")

    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"model_summary.txt", "samples", "evaluation"} <= artifacts
    assert {f.path for f in client.list_artifacts(run_id, "samples")} == {"samples/epoch_000", "samples/epoch_001"}
    assert "samples/epoch_000/00.png" in {f.path for f in client.list_artifacts(run_id, "samples/epoch_000")}
    evaluation_files = {f.path.split("/")[-1] for f in client.list_artifacts(run_id, "evaluation")}
    assert {"per_class_ap.json", "per_class_ap.md", "pr_curves.png", "confusion_matrix.png", "confusion_matrix.json"} <= evaluation_files
    summary = client.download_artifacts(run_id, "model_summary.txt", str(tmp_path))
    assert "Total params" in open(summary).read()
    # "model/" is the logged model's directory alone: a file of ours there would shadow it.
    assert "model/summary.txt" not in {f.path for f in client.list_artifacts(run_id, "model")}

    metrics = stored.data.metrics
    for name in ("eval/mAP", "eval/AP50", "eval/AP/red", "eval/AP/green", "inference/latency_p50_ms", "inference/latency_p95_ms", "inference/images_per_s"):
        assert name in metrics, name
    assert 0 <= metrics["eval/AP50"] <= 100
    assert metrics["inference/latency_p50_ms"] <= metrics["inference/latency_p95_ms"]

    (version,) = client.search_model_versions(f"name='{model_name}'")
    assert version.run_id == run_id
    assert json.loads(version.tags["cvops.class_names"]) == CLASSES  # what serving and `cvops evaluate` name classes by
    assert export.tag("onnx") not in version.tags  # CVOPS_EXPORT is off unless set
    uri = f"models:/{model_name}/{version.version}"
    assert mlflow.models.get_model_info(uri).signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, SIZE, SIZE, 3)
    assert mlflow.models.get_model_info(uri).saved_input_example_info is not None
    served = mlflow.pyfunc.load_model(uri).predict(val_images[:3])
    np.testing.assert_allclose(np.asarray(served["box"]), registered_boxes, rtol=1e-5)


def fit_one_epoch_and_register(model_name: str, evaluated_on, **callback_options):
    """The tiny detector trained one epoch with a callback that evaluates on ``evaluated_on``
    (images, boxes, labels) and registers it as ``model_name``; returns the registered version."""
    images, boxes, labels = synthetic_boxes(16, seed=0)
    eval_images, eval_boxes, eval_labels = evaluated_on
    with cvops.start_run(experiment="integrations-keras", run_name=model_name) as run:
        callback = CvopsCallback(run, registered_model_name=model_name, decode_predictions=decode,
                                 input_example=eval_images[:2],
                                 evaluation_data=(eval_images, ground_truth(eval_boxes, eval_labels)),
                                 **callback_options)
        tiny_detector().fit(images, {"box": boxes, "cls": labels}, epochs=1, batch_size=8, verbose=0,
                            callbacks=[callback])
    (version,) = mlflow.MlflowClient().search_model_versions(f"name='{model_name}'")
    return version


def test_with_export_on_register_the_registered_version_gets_a_checked_onnx_copy(tracking_env, tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("CVOPS_EXPORT", "register")
    version = fit_one_epoch_and_register(f"keras-export-{time.time_ns()}", synthetic_boxes(8, seed=1),
                                         class_names=CLASSES)

    client = mlflow.MlflowClient()
    assert version.tags[export.tag("onnx")] == "passed", version.tags[export.tag("onnx")]
    folder = export.artifact_dir("onnx")
    assert {f.path for f in client.list_artifacts(version.run_id, folder)} == {f"{folder}/model.onnx", f"{folder}/export.json"}
    record = json.loads(open(client.download_artifacts(version.run_id, f"{folder}/export.json", str(tmp_path))).read())
    assert record["passed"] and record["versions"]["tf2onnx"]
    logged_model = client.get_logged_model(version.source.removeprefix("models:/"))  # the version's LoggedModel
    metrics = {metric.key: metric.value for metric in logged_model.metrics}
    assert 0 <= metrics["export/onnx_max_abs_diff"] <= export.DEFAULT_TOLERANCE
    assert metrics["export/onnx_latency_ms"] > 0 and metrics["export/native_latency_ms"] > 0


def test_a_failing_evaluation_still_logs_and_registers_the_model(tracking_env, caplog):
    # No class_names: the evaluation refuses the predicted class ids it cannot name.
    version = fit_one_epoch_and_register(f"keras-eval-fails-{time.time_ns()}", synthetic_boxes(16, seed=0))

    assert "outside class_names" in caplog.text  # the user is told why there is no evaluation
    model, files = registry.load_registered_version(version.name, version.version)
    with files:
        assert model is not None


def test_autolog_is_turned_off_so_nothing_is_logged_twice(tracking_env):
    mlflow.tensorflow.autolog(log_models=False, silent=True)
    images, boxes, labels = synthetic_boxes(16, seed=2)
    model = tiny_detector()
    experiment = f"integrations-keras-autolog-{time.time_ns()}"
    try:
        with cvops.start_run(experiment=experiment) as run:
            callback = CvopsCallback(run)
            model.fit(images, {"box": boxes, "cls": labels}, epochs=2, batch_size=8, callbacks=[callback], verbose=0)
            run_id = run.run_id
    finally:
        mlflow.tensorflow.autolog(disable=True)
    client = mlflow.MlflowClient()
    # autolog would have started its own run (or logged a second "loss" series into ours).
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert [m.step for m in wait_for_run_metrics(client, run_id, "loss", 2)] == [0, 1]


def test_defer_mode_leaves_epoch_metrics_and_params_to_autolog(tracking_env):
    images, boxes, labels = synthetic_boxes(16, seed=3)
    model = tiny_detector()
    experiment = f"integrations-keras-defer-{time.time_ns()}"
    mlflow.tensorflow.autolog(log_models=False, silent=True)
    try:
        with cvops.start_run(experiment=experiment) as run:
            callback = CvopsCallback(run, log_every_n_steps=1, autolog="defer")
            model.fit(images, {"box": boxes, "cls": labels}, epochs=1, batch_size=8, callbacks=[callback], verbose=0)
            run_id = run.run_id
    finally:
        mlflow.tensorflow.autolog(disable=True)
    client = mlflow.MlflowClient()
    ours = client.get_run(run_id)
    assert [m.step for m in wait_for_run_metrics(client, run_id, "batch/loss", 2)] == [1, 2]
    assert "optimizer.class" not in ours.data.params
    # cvops did not log "loss" itself; at most autolog's single series exists, wherever it logged.
    autolog_series = [
        client.get_metric_history(r.info.run_id, "loss")
        for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    ]
    assert sum(len(h) for h in autolog_series) <= 1
