"""An evaluation set for detectors: COCO detection JSON and the images it names.

This is what ``trainer/examples/make_shapes.py`` writes (and COCO tools read):

    shapes/annotations/val.json        {"images": [{"id", "file_name"}], "annotations":
                                        [{"image_id", "category_id", "bbox": [x, y, w, h]}],
                                        "categories": [{"id", "name"}]}
    shapes/images/val/000000.png       file_name is relative to the images folder

``load_detection_dataset("shapes")`` reads split ``val`` of such a folder; a path to the JSON file
reads that file, with images under ``images_dir`` (default: the ``images`` folder beside an
``annotations`` folder, else the JSON file's own folder). Boxes are pixels; categories keep the
order of their ids and are matched to a model's classes by name. The dataset's digest (what
``run.log_dataset`` records) covers the JSON file and exactly the images it names, so two
evaluations with the same digest scored the same pictures against the same boxes.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvops.evaluation import Detections

DEFAULT_SPLIT = "val"


class DatasetError(ValueError):
    """The dataset cannot be evaluated on; the message names the file and the field."""


@dataclass(frozen=True)
class DetectionDataset:
    annotations: Path
    images_dir: Path
    image_files: list[Path]
    ground_truth: list[Detections]  # classes index class_names
    class_names: list[str]

    @property
    def root(self) -> Path:
        """The folder holding both the annotation file and the images (what its digest is taken under)."""
        return Path(os.path.commonpath([self.annotations.parent, self.images_dir]))

    @property
    def files(self) -> list[Path]:
        return [self.annotations, *self.image_files]

    def load_images(self, limit: int | None = None) -> list[np.ndarray]:
        from PIL import Image

        images = []
        for path in self.image_files[:limit]:
            try:
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except OSError as exc:
                raise DatasetError(f"{path}: not a readable image ({exc})") from None
        return images


def load_detection_dataset(path: str | os.PathLike, *, split: str = DEFAULT_SPLIT,
                           images_dir: str | os.PathLike | None = None) -> DetectionDataset:
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        annotations = path / "annotations" / f"{split}.json"
        if not annotations.is_file():
            raise DatasetError(f"{path}: no annotations/{split}.json; give a COCO detection JSON file or a folder "
                               f"laid out as trainer/examples/make_shapes.py writes it")
    elif path.is_file():
        annotations = path
    else:
        raise DatasetError(f"{path}: no such file or folder")
    if images_dir is None:
        beside = annotations.parent.parent / "images"
        images_dir = beside if annotations.parent.name == "annotations" and beside.is_dir() else annotations.parent
    images_dir = Path(images_dir).expanduser().resolve()
    try:
        coco = json.loads(annotations.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{annotations}: not JSON ({exc})") from None
    return _parse(coco, annotations, images_dir)


def _parse(coco: Any, annotations: Path, images_dir: Path) -> DetectionDataset:
    def fail(where: str, problem: str) -> DatasetError:
        return DatasetError(f"{annotations}: {where}: {problem}")

    if not isinstance(coco, dict):
        raise fail("top level", "expected an object with 'images', 'annotations' and 'categories'")
    sections = {}
    for key in ("images", "annotations", "categories"):
        value = coco.get(key)
        if not isinstance(value, list):
            raise fail(key, "missing or not a list")
        sections[key] = value
    if not sections["categories"]:
        raise fail("categories", "empty: nothing to score a detector on")
    if not sections["images"]:
        raise fail("images", "empty: nothing to evaluate")

    index_of_category: dict[int, int] = {}
    names: list[str] = []
    for position, category in sorted(enumerate(sections["categories"]), key=lambda item: _id(item[1])):
        where = f"categories[{position}]"
        category_id, name = _field(category, "id", int, where, fail), _field(category, "name", str, where, fail)
        if category_id in index_of_category:
            raise fail(f"{where}.id", f"{category_id} appears twice")
        if name in names:
            raise fail(f"{where}.name", f"{name!r} appears twice; classes are matched to a model's by name")
        index_of_category[category_id] = len(names)
        names.append(name)

    position_of_image: dict[int, int] = {}
    files: list[Path] = []
    for position, image in enumerate(sections["images"]):
        where = f"images[{position}]"
        image_id, file_name = _field(image, "id", int, where, fail), _field(image, "file_name", str, where, fail)
        if image_id in position_of_image:
            raise fail(f"{where}.id", f"{image_id} appears twice")
        file = (images_dir / file_name).resolve()
        if not file.is_file():
            raise fail(f"{where}.file_name", f"{file} does not exist (file names are relative to {images_dir})")
        position_of_image[image_id] = position
        files.append(file)

    boxes: list[list[list[float]]] = [[] for _ in files]
    classes: list[list[int]] = [[] for _ in files]
    for position, annotation in enumerate(sections["annotations"]):
        where = f"annotations[{position}]"
        image_id = _field(annotation, "image_id", int, where, fail)
        category_id = _field(annotation, "category_id", int, where, fail)
        bbox = _field(annotation, "bbox", list, where, fail)
        if image_id not in position_of_image:
            raise fail(f"{where}.image_id", f"{image_id} is not the id of any entry in images")
        if category_id not in index_of_category:
            raise fail(f"{where}.category_id", f"{category_id} is not the id of any entry in categories "
                                               f"(ids {sorted(index_of_category)})")
        if (len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise fail(f"{where}.bbox", f"expected [x, y, width, height] in pixels, 4 finite numbers with width "
                                        f"and height >= 0; got {bbox!r}")
        x, y, width, height = (float(v) for v in bbox)
        boxes[position_of_image[image_id]].append([x, y, x + width, y + height])
        classes[position_of_image[image_id]].append(index_of_category[category_id])

    ground_truth = [Detections(np.asarray(b, dtype=np.float64).reshape(-1, 4), c) for b, c in zip(boxes, classes)]
    return DetectionDataset(annotations, images_dir, files, ground_truth, names)


def _id(category: Any) -> float:
    value = category.get("id") if isinstance(category, dict) else None
    return value if isinstance(value, int) else math.inf  # a bad id is reported where it stands


def _field(item: Any, key: str, kind: type, where: str, fail) -> Any:
    if not isinstance(item, dict):
        raise fail(where, "expected an object")
    value = item.get(key)
    if key not in item:
        raise fail(f"{where}.{key}", "missing")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise fail(f"{where}.{key}", f"expected {'an integer' if kind is int else 'a ' + kind.__name__}, "
                                     f"got {value!r}")
    return value


def class_index(model_classes: dict[int, str], dataset_classes: Sequence[str]) -> dict[int, int]:
    """Model class id -> dataset class index, by name. Fails when no name is shared: then the
    model was trained on other classes, or its names differ in spelling, and every AP would be 0."""
    position = {name: index for index, name in enumerate(dataset_classes)}
    mapping = {class_id: position[name] for class_id, name in model_classes.items() if name in position}
    if not mapping:
        raise DatasetError(
            f"none of the model's classes ({', '.join(sorted(set(model_classes.values()))) or 'none'}) is a category "
            f"of the dataset ({', '.join(dataset_classes)}): classes are matched by name"
        )
    return mapping
