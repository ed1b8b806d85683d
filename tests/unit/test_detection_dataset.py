"""cvops.detection_dataset: the evaluation set of `cvops evaluate` and `promote(reevaluate_on=...)`,
read from what trainer/examples/make_shapes.py writes, and refused with the file and field named."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvops.detection_dataset import DatasetError, class_index, load_detection_dataset
from cvops.tracking.lineage import dataset_digest

MAKE_SHAPES = Path(__file__).resolve().parents[2] / "trainer" / "examples" / "make_shapes.py"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    subprocess.run([sys.executable, str(MAKE_SHAPES), str(out), "--train", "3", "--val", "4", "--size", "32",
                    "--max-objects", "2", "--tfrecord", "off"], check=True, capture_output=True)
    return out


def test_the_val_split_of_a_make_shapes_folder_is_read_with_pixel_corner_boxes(shapes):
    dataset = load_detection_dataset(shapes)
    coco = json.loads((shapes / "annotations" / "val.json").read_text())
    assert dataset.class_names == ["circle", "square", "triangle"]  # category ids 1, 2, 3 in order
    assert [p.relative_to(shapes).as_posix() for p in dataset.image_files] == [
        f"images/{image['file_name']}" for image in coco["images"]]
    first = coco["annotations"][0]
    x, y, width, height = first["bbox"]
    truth = dataset.ground_truth[first["image_id"]]
    assert [x, y, x + width, y + height] in truth.boxes.tolist()
    assert first["category_id"] - 1 in truth.classes.tolist()
    assert sum(len(t.classes) for t in dataset.ground_truth) == len(coco["annotations"])
    images = dataset.load_images()
    assert [image.shape for image in images] == [(32, 32, 3)] * 4 and images[0].dtype == np.uint8
    assert load_detection_dataset(shapes / "annotations" / "val.json").image_files == dataset.image_files


def test_the_digest_covers_the_split_s_annotations_and_images_only(shapes, tmp_path):
    dataset = load_detection_dataset(shapes)
    assert dataset.root == shapes
    digest = dataset_digest(dataset.root, tmp_path, dataset.files).sha256
    (shapes / "images" / "train" / "000000.png").write_bytes(b"retouched training image")
    assert dataset_digest(dataset.root, tmp_path, dataset.files).sha256 == digest
    assert dataset_digest(shapes, tmp_path).sha256 != digest  # the whole folder includes the training split


def broken(shapes: Path, tmp_path: Path, change) -> Path:
    coco = json.loads((shapes / "annotations" / "val.json").read_text())
    change(coco)
    folder = tmp_path / "annotations"
    folder.mkdir(exist_ok=True)
    (tmp_path / "images").symlink_to(shapes / "images")
    path = folder / "val.json"
    path.write_text(json.dumps(coco))
    return path


def _set(path: str, value):
    def change(coco):
        *parents, last = path.split(".")
        target = coco
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is KeyError:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set("categories", []), r"categories: empty"),
    (_set("annotations", KeyError), r"annotations: missing or not a list"),
    (_set("images.1.file_name", KeyError), r"images\[1\]\.file_name: missing"),
    (_set("images.1.file_name", "val/nowhere.png"), r"images\[1\]\.file_name: .*nowhere\.png does not exist"),
    (_set("images.1.id", "one"), r"images\[1\]\.id: expected an integer, got 'one'"),
    (_set("annotations.0.bbox", [1, 2, -3, 4]), r"annotations\[0\]\.bbox: expected \[x, y, width, height\]"),
    (_set("annotations.0.bbox", [1, 2, 3]), r"annotations\[0\]\.bbox: expected"),
    (_set("annotations.0.category_id", 9), r"annotations\[0\]\.category_id: 9 is not the id of any entry in "
                                           r"categories \(ids \[1, 2, 3\]\)"),
    (_set("annotations.0.image_id", 99), r"annotations\[0\]\.image_id: 99 is not the id of any entry in images"),
    (_set("categories.2.name", "circle"), r"categories\[2\]\.name: 'circle' appears twice"),
])
def test_bad_annotations_are_refused_naming_the_file_and_field(shapes, tmp_path, change, message):
    path = broken(shapes, tmp_path, change)
    with pytest.raises(DatasetError, match=message) as refused:
        load_detection_dataset(path)
    assert str(path) in str(refused.value)


def test_a_missing_split_or_path_and_broken_json_are_named(shapes, tmp_path):
    with pytest.raises(DatasetError, match=r"no annotations/test\.json"):
        load_detection_dataset(shapes, split="test")
    with pytest.raises(DatasetError, match=r"nowhere: no such file or folder"):
        load_detection_dataset(tmp_path / "nowhere")
    (tmp_path / "val.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"val\.json: not JSON"):
        load_detection_dataset(tmp_path / "val.json")


def test_model_classes_are_matched_to_the_dataset_s_by_name():
    dataset_classes = ["circle", "square", "triangle"]
    # The OD API numbers from 1, Keras often keeps a background at 0.
    assert class_index({1: "circle", 2: "square", 3: "triangle"}, dataset_classes) == {1: 0, 2: 1, 3: 2}
    assert class_index({0: "background", 1: "square"}, dataset_classes) == {1: 1}
    with pytest.raises(DatasetError, match=r"none of the model's classes \(car, person\) is a category of the "
                                           r"dataset \(circle, square, triangle\)"):
        class_index({0: "car", 1: "person"}, dataset_classes)
