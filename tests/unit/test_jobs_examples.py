"""The example jobs' data and configs agree with each other (they cannot all run here:
detectron2 and the OD API are not installable from PyPI; the keras one runs in tests/compose)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "trainer" / "examples"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_shapes", EXAMPLES / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_coco_is_consistent_and_repeatable(tmp_path):
    make_shapes = load_generator()
    for out in (tmp_path / "a", tmp_path / "b"):
        assert make_shapes.main([str(out), "--train", "12", "--val", "4", "--size", "48", "--max-objects", "3",
                                 "--tfrecord", "off"]) == 0
    coco = json.loads((tmp_path / "a" / "annotations" / "train.json").read_text())
    assert coco == json.loads((tmp_path / "b" / "annotations" / "train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(make_shapes.CLASSES)
    assert len(coco["images"]) == 12
    per_image: dict[int, int] = {}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48 and w >= 48 // 5
        assert annotation["category_id"] in {1, 2, 3}
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
    assert set(per_image) == set(range(12)) and max(per_image.values()) <= 3
    for image in coco["images"]:
        assert (tmp_path / "a" / "images" / image["file_name"]).is_file()
    assert "name: 'triangle'" in (tmp_path / "a" / "label_map.pbtxt").read_text()


def test_tfrecords_follow_the_od_api_layout(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="TFRecords are written with tf.io")
    make_shapes = load_generator()
    make_shapes.main([str(tmp_path), "--train", "3", "--val", "1", "--size", "64", "--max-objects", "2",
                      "--tfrecord", "required"])
    coco = json.loads((tmp_path / "annotations" / "train.json").read_text())
    records = list(tf.data.TFRecordDataset(str(tmp_path / "tfrecord" / "train.record")).as_numpy_iterator())
    assert len(records) == 3
    example = tf.train.Example.FromString(records[0])
    feature = example.features.feature
    boxes = [a for a in coco["annotations"] if a["image_id"] == 0]
    assert list(feature["image/object/class/label"].int64_list.value) == [a["category_id"] for a in boxes]
    assert feature["image/object/bbox/xmin"].float_list.value[0] == pytest.approx(boxes[0]["bbox"][0] / 64)
    assert feature["image/format"].bytes_list.value == [b"png"]


def test_tfod_pipeline_reads_what_the_job_mounts():
    from cvops.integrations.pipeline_config import read_pipeline_config, summarize

    pipeline = read_pipeline_config(EXAMPLES / "tfod" / "pipeline.config")
    assert summarize(pipeline)["num_classes"] == len(load_generator().CLASSES)
    job = yaml.safe_load((EXAMPLES / "tfod" / "job.yaml").read_text())
    target = job["datasets"][0]["target"]
    text = (EXAMPLES / "tfod" / "pipeline.config").read_text()
    for path in ("label_map.pbtxt", "tfrecord/train.record", "tfrecord/val.record"):
        assert f'"{target}/{path}"' in text
    assert "fine_tune_checkpoint:" not in text  # trained from random initialisation, nothing downloaded


@pytest.mark.parametrize("framework", ["keras", "detectron2", "tfod"])
def test_example_jobs_run_their_script_from_the_mounted_code(framework):
    job = yaml.safe_load((EXAMPLES / framework / "job.yaml").read_text())
    assert job["code"] == "." and job["command"][1] == "train.py"
    assert (EXAMPLES / framework / "train.py").is_file()
    assert job["image"].startswith(f"cvops/trainer-{framework}:")


def test_the_keras_sweep_varies_what_its_training_script_reads():
    from cvops.sweeps.spec import load_sweep_spec, template_job

    spec = load_sweep_spec(EXAMPLES / "keras" / "sweep.yaml")
    job = template_job(spec)
    assert (job.job_dir / job.command[1]).is_file()
    data = job.command[job.command.index("--data") + 1]
    assert (job.job_dir / data).resolve() == (EXAMPLES / "data" / "shapes").resolve()
    script = (job.job_dir / job.command[1]).read_text()
    for name in spec.search_space:
        assert f'"{name}": args.' in script, f"train.py does not take {name} from cvops.sweeps.trial_params()"
    # Trials log their model (a model name is given); the sweep registers the best one.
    assert job.command[job.command.index("--model-name") + 1] == spec.registration.name


def test_the_detectron2_sweep_varies_config_keys_of_its_training_script():
    from cvops.sweeps.spec import load_sweep_spec, template_job

    spec = load_sweep_spec(EXAMPLES / "detectron2" / "sweep.yaml")
    job = template_job(spec)
    assert (job.job_dir / job.command[1]).is_file()
    data = job.command[job.command.index("--data") + 1]
    assert (job.job_dir / data).resolve() == (EXAMPLES / "data" / "shapes-128").resolve()
    assert job.command[job.command.index("--model-name") + 1] == ""  # trials register nothing
    script = (job.job_dir / job.command[1]).read_text()
    assert "cvops.sweeps.trial_params()" in script
    for name in spec.search_space:
        # detectron2 config keys: upper-case nodes, as cfg.merge_from_list takes them
        assert name.split(".")[0] in ("MODEL", "SOLVER", "INPUT", "TEST", "DATALOADER"), name
