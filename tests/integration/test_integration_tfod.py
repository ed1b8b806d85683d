"""TF OD API bridge end to end, checked in the real MLflow server (harness).

What stands in for what: the OD API itself is not installable here (TF <= 2.15 and non-PyPI
packages). Its on-disk interface is the contract the bridge relies on, and every file here is
the real format written by real TensorFlow: event files from tf.summary (scalars as tensors,
images), checkpoints from tf.train.CheckpointManager, a Detection-Zoo-style pipeline.config
(tests/data/tfod) and a SavedModel from tf.saved_model.save. The OD API's scripts are replaced
by tests/data/tfod/od_api_standin/*.py, which take the same command line and write those files.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow")
mlflow = pytest.importorskip("mlflow")

import cvops  # noqa: E402
from cvops.integrations.tfod import ModelDirMirror, TFODBridge  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "tfod"
STANDIN = DATA / "od_api_standin"
PIPELINE = DATA / "faster_rcnn_resnet50_v1_640x640.config"
TRAIN_TAGS = [
    "Loss/RPNLoss/localization_loss",
    "Loss/BoxClassifierLoss/classification_loss",
    "Loss/regularization_loss",
    "Loss/total_loss",
    "learning_rate",
    "steps_per_sec",
]
EVAL_TAGS = [
    "DetectionBoxes_Precision/mAP",
    "DetectionBoxes_Precision/mAP@.50IOU",
    "DetectionBoxes_Precision/mAP (small)",
    "DetectionBoxes_Recall/AR@100",
    "DetectionBoxes_PerformanceByCategory/mAP/car",
]


def write_summaries(directory, step_values, image=None):
    """Real tf.summary event file: TF2 scalars (tensor + plugin "scalars") and an image."""
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for step, values in step_values.items():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
            if image is not None:
                tf.summary.image("eval_side_by_side_0_0", image, step=step)
    writer.close()


def history(client, run_id, name):
    return [(m.step, round(m.value, 6)) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


def test_mirror_follows_partial_records_new_eval_files_images_and_checkpoints(tracking_env, tmp_path):
    model_dir = tmp_path / "model_dir"
    staging = tmp_path / "staging"
    write_summaries(staging, {100: {t: 1.0 for t in TRAIN_TAGS}, 200: {t: 0.5 for t in TRAIN_TAGS}})
    (written,) = staging.glob("events.out.tfevents.*")
    data = written.read_bytes()
    (model_dir / "train").mkdir(parents=True)
    train_file = model_dir / "train" / written.name

    with cvops.start_run(experiment="integrations-tfod", run_name="mirror") as run:
        mirror = ModelDirMirror(run, model_dir)
        # The trainer has flushed 3/4 of its file: the last record is cut in the middle.
        train_file.write_bytes(data[: len(data) * 3 // 4])
        mirror.poll()
        with open(train_file, "ab") as handle:
            handle.write(data[len(data) * 3 // 4:])
        mirror.poll()
        # The evaluator starts later: a new directory and file appear.
        image = np.zeros((1, 8, 16, 3), np.uint8)
        image[0, :, :8, 0] = 255
        write_summaries(model_dir / "eval", {200: {t: 0.25 for t in EVAL_TAGS}}, image=image)
        tf.train.CheckpointManager(
            tf.train.Checkpoint(step=tf.Variable(200, dtype=tf.int64)), str(model_dir), max_to_keep=3
        ).save()
        mirror.poll()
        mirror.poll()  # nothing new: nothing logged twice
        mirror.close()
        run_id = run.run_id

    client = mlflow.MlflowClient()
    for tag in TRAIN_TAGS:
        assert history(client, run_id, cvops.sanitize_metric_name(tag)) == [(100, 1.0), (200, 0.5)], tag
    stored = client.get_run(run_id).data.metrics
    for tag in EVAL_TAGS:
        name = cvops.sanitize_metric_name(f"eval/{tag}")
        assert not set("@(),") & set(name)
        assert history(client, run_id, name) == [(200, 0.25)], name
    assert "eval/DetectionBoxes_Precision/mAP_at_.50IOU" in stored
    image_files = [f.path for f in client.list_artifacts(run_id, "images/eval/eval_side_by_side_0_0")]
    assert image_files == ["images/eval/eval_side_by_side_0_0/step_00000200_0.png"]
    local = client.download_artifacts(run_id, image_files[0], str(tmp_path / "dl"))
    from PIL import Image

    assert np.asarray(Image.open(local))[0, 0].tolist()[:3] == [255, 0, 0]
    checkpoint_files = {f.path for f in client.list_artifacts(run_id, "checkpoints/ckpt-1")}
    assert "checkpoints/ckpt-1/ckpt-1.index" in checkpoint_files
    assert any(".data-" in path for path in checkpoint_files)
    # ckpt-1 is the first save, made at training step 200: the step comes from the checkpoint.
    assert history(client, run_id, "checkpoint/number") == [(200, 1.0)]


def test_bridge_runs_train_eval_and_export_and_registers_the_detector(tracking_env, tmp_path):
    model_dir = tmp_path / "model_dir"
    pipeline = tmp_path / "pipeline.config"
    shutil.copy(PIPELINE, pipeline)
    model_name = f"tfod-frcnn-{time.time_ns()}"
    with cvops.start_run(experiment="integrations-tfod", run_name="bridge") as run:
        bridge = TFODBridge(
            run,
            pipeline_config_path=pipeline,
            model_dir=model_dir,
            model_main=STANDIN / "model_main_tf2.py",
            exporter=STANDIN / "exporter_main_v2.py",
            poll_interval_s=0.5,
            eval_timeout_s=20,
            train_args=["--num_train_steps=300", "--checkpoint_every_n=100"],
        )
        bridge.train()
        saved_model = bridge.export(tmp_path / "exported", registered_model_name=model_name)
        run_id = run.run_id
    assert (saved_model / "saved_model.pb").is_file()

    client = mlflow.MlflowClient()
    stored = client.get_run(run_id)
    params = stored.data.params
    assert params["meta_architecture"] == "faster_rcnn"
    assert params["num_classes"] == "3"
    assert params["learning_rate_schedule"] == "cosine_decay_learning_rate"
    assert params["model.faster_rcnn.first_stage_max_proposals"] == "300"
    assert stored.data.tags["framework"] == "tfod"
    assert stored.data.tags["backbone"] == "faster_rcnn_resnet50_keras"
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert "checkpoints" in artifacts and "images" in artifacts
    assert any("pipeline.config" in f.path for f in _walk(client, run_id, ""))

    # Train: steps 50..300, every 50; evaluation: each checkpoint (100, 200, 300) seen by the
    # evaluator (it may skip one that was superseded while it was busy, as the OD API does).
    assert [s for s, _ in history(client, run_id, "Loss/total_loss")] == [50, 100, 150, 200, 250, 300]
    eval_steps = [s for s, _ in history(client, run_id, "eval/DetectionBoxes_Precision/mAP")]
    assert eval_steps and eval_steps[-1] == 300
    assert {f.path for f in client.list_artifacts(run_id, "checkpoints")} == {
        "checkpoints/ckpt-1", "checkpoints/ckpt-2", "checkpoints/ckpt-3"
    }
    assert history(client, run_id, "checkpoint/number") == [(100, 1.0), (200, 2.0), (300, 3.0)]

    (version,) = client.search_model_versions(f"name='{model_name}'")
    assert version.run_id == run_id
    detector = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")
    result = detector.predict(np.zeros((1, 40, 80, 3), np.uint8))
    # Normalised (ymin, xmin, ymax, xmax) = (0.25, 0.5, 0.75, 1.0) on 80x40 pixels.
    assert result["boxes"][0][0] == pytest.approx([40.0, 10.0, 80.0, 30.0])
    assert result["classes"][0] == [1, 2] and result["scores"][0] == pytest.approx([0.9, 0.4])


def test_failed_training_is_reported_after_logging_what_it_wrote(tracking_env, tmp_path):
    run = cvops.start_run(experiment="integrations-tfod", run_name="fails")
    bridge = TFODBridge(
        run,
        pipeline_config_path=PIPELINE,
        model_dir=tmp_path / "model_dir",
        model_main=STANDIN / "model_main_tf2.py",
        run_eval=False,
        poll_interval_s=0.5,
        train_args=["--num_train_steps=300", "--fail_at_step=150"],
    )
    with pytest.raises(subprocess.CalledProcessError):
        with run:
            bridge.train()
    client = mlflow.MlflowClient()
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert [s for s, _ in history(client, run.run_id, "Loss/total_loss")] == [50, 100]


def _walk(client, run_id, path):
    for item in client.list_artifacts(run_id, path or None):
        if item.is_dir:
            yield from _walk(client, run_id, item.path)
        else:
            yield item


def test_bad_pipeline_config_fails_before_starting_anything(tmp_path):
    bad = tmp_path / "pipeline.config"
    bad.write_text("model { faster_rcnn { num_classes: 3 }\n")
    with pytest.raises(ValueError, match="missing '}'"):
        TFODBridge(object(), pipeline_config_path=bad, model_dir=tmp_path, model_main=sys.executable, exporter=os.devnull)
