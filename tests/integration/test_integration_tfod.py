"""TF OD API bridge mechanics the real OD API cannot show on demand, checked in the real MLflow
server (harness): an event file read while its last record is half written, an evaluation
directory appearing later, nothing logged twice. Files are written by real TensorFlow
(tf.summary, tf.train.CheckpointManager). Training, evaluation and export with the real,
unmodified OD API are in tests/frameworks/test_tfod.py.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow")
mlflow = pytest.importorskip("mlflow")

import cvops  # noqa: E402
from cvops.integrations.tfod import ModelDirMirror, TFODBridge  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "tfod"
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
        # What the bridge checks before it trusts that the final checkpoint was evaluated.
        assert mirror.evaluated_step == 200
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


def test_bad_pipeline_config_fails_before_starting_anything(tmp_path):
    bad = tmp_path / "pipeline.config"
    bad.write_text("model { faster_rcnn { num_classes: 3 }\n")
    with pytest.raises(ValueError, match="missing '}'"):
        TFODBridge(object(), pipeline_config_path=bad, model_dir=tmp_path, model_main=sys.executable, exporter=os.devnull)
