"""A registered detector's pyfunc, whatever its framework, fed images and read as detections.

Shared by the inference server (services/serving) and cvops' evaluation of registered models
(cvops.evaluation.evaluate_registered_model), so a version is scored on exactly the detections it
would serve.

Input: (H, W, 3) uint8 RGB arrays. A model with a tensor signature (a Keras model) takes one
batch of a fixed size and dtype; without one (cvops' Detectron2 and TF OD API detectors,
cvops.integrations._pyfunc) it takes a list of images of any size.
Output understood: a DataFrame with ``boxes``/``scores``/``classes`` columns (cvops' detectors), a
dict of batch-first ``boxes`` (N, K, 4), ``scores`` (N, K), ``classes`` (N, K) arrays (the Keras
convention, cvops.integrations.keras), or a list of such dicts per image. Boxes are x1, y1, x2,
y2 in pixels of the model's input, scaled back here to each image as given.

Class names travel as the version tag ``cvops.class_names`` (set by the framework adapters when
they register): a JSON list (index = class id) or an object {"id": "name"}.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

log = logging.getLogger("cvops")

OUTPUT_KEYS = ("boxes", "scores", "classes")
CLASS_NAMES_TAG = "cvops.class_names"


class BadInput(ValueError):
    """The images cannot be given to this model (the server answers 400)."""


class UnsupportedOutput(RuntimeError):
    """The model answers in a shape that is not detections (the server answers 500)."""


def class_names_tag_value(class_names: Sequence[str] | Mapping[int, str]) -> str:
    """The ``cvops.class_names`` tag value for a list (index = class id) or an id -> name mapping."""
    if isinstance(class_names, Mapping):
        return json.dumps({str(int(key)): str(name) for key, name in class_names.items()})
    return json.dumps([str(name) for name in class_names])


def class_names_from_tag(value: str | None) -> dict[int, str]:
    """Class id -> name from a ``cvops.class_names`` tag value; {} when absent or unreadable."""
    if not value:
        return {}
    try:
        names = json.loads(value)
    except json.JSONDecodeError:
        log.warning("tag %s is not JSON; class ids stand for their names", CLASS_NAMES_TAG)
        return {}
    if isinstance(names, list):
        return {index: str(name) for index, name in enumerate(names)}
    if isinstance(names, dict):
        return {int(key): str(name) for key, name in names.items()}
    return {}


def model_predict(pyfunc_model) -> Callable[[Any], Any]:
    """How to run a loaded pyfunc on a model input: its ``predict``, except for a Keras model
    (MLflow's tensorflow or keras flavor), which is called directly. The flavor's predict runs
    Keras' ``Model.predict``, built for large inputs: on one small image it cost 88 ms against
    6 ms for calling the model (the serving tests' box detector, CPU), and a served request is one
    small batch. The output is the same arrays."""
    if not {"tensorflow", "keras"} & set(pyfunc_model.metadata.flavors):
        return pyfunc_model.predict
    import keras

    model = pyfunc_model.get_raw_model()
    if not isinstance(model, keras.Model):  # a TensorFlow SavedModel: its own signature call
        return pyfunc_model.predict

    def call(batch):
        output = model(batch, training=False)
        if isinstance(output, Mapping):
            return {key: np.asarray(value) for key, value in output.items()}
        return np.asarray(output)

    return call


@dataclass(frozen=True)
class InputFormat:
    """What the model's signature asks for. A tensor signature (a Keras model) takes one batch of
    a fixed size and dtype: images are resized to it, and boxes scaled back to each image's own
    size. Without one (cvops' detectors) the model takes a list of images of any size."""

    height: int | None = None
    width: int | None = None
    dtype: np.dtype | None = None

    @classmethod
    def of(cls, pyfunc_model) -> InputFormat:
        schema = pyfunc_model.metadata.get_input_schema()
        if schema is None or not schema.is_tensor_spec():
            return cls()
        spec = schema.inputs[0]
        shape = tuple(spec.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise UnsupportedOutput(f"the model's input signature is a tensor of shape {shape}, not (N, H, W, 3) images")
        height, width = (size if size and size > 0 else None for size in shape[1:3])
        return cls(height, width, np.dtype(spec.type))

    def model_input(self, images: Sequence[np.ndarray]):
        if self.dtype is None:
            return list(images)
        batch = [self._resized(image) for image in images]
        sizes = {image.shape for image in batch}
        if len(sizes) > 1:
            raise BadInput(f"this model takes one batch of equally sized images; got sizes {sorted(sizes)}")
        return np.stack(batch).astype(self.dtype)

    def _resized(self, image: np.ndarray) -> np.ndarray:
        if self.height is None or self.width is None or image.shape[:2] == (self.height, self.width):
            return image
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((self.width, self.height), Image.BILINEAR))

    def box_scale(self, image: np.ndarray) -> np.ndarray:
        """Multiplier from the model's box coordinates to the given image's pixels."""
        if self.dtype is None or self.height is None or self.width is None:
            return np.ones(4)
        height, width = image.shape[:2]
        return np.array([width / self.width, height / self.height] * 2)


def _per_image(output: Any, count: int) -> list[tuple[Any, Any, Any]]:
    import pandas as pd

    if isinstance(output, pd.DataFrame) and set(OUTPUT_KEYS) <= set(output.columns):
        rows = [tuple(row[key] for key in OUTPUT_KEYS) for _, row in output.iterrows()]
    elif isinstance(output, dict) and set(OUTPUT_KEYS) <= set(output):
        columns = [np.asarray(output[key]) for key in OUTPUT_KEYS]
        rows = list(zip(*columns))
    elif isinstance(output, list) and all(isinstance(item, dict) and set(OUTPUT_KEYS) <= set(item) for item in output):
        rows = [tuple(item[key] for key in OUTPUT_KEYS) for item in output]
    else:
        described = sorted(output.columns) if isinstance(output, pd.DataFrame) else (
            sorted(output) if isinstance(output, dict) else type(output).__name__)
        raise UnsupportedOutput(
            f"the model's output ({described}) is not detections: a served detector returns 'boxes' (x1, y1, x2, y2 "
            f"in pixels), 'scores' and 'classes' per image (docs/serving.md \"Models it can serve\")"
        )
    if len(rows) != count:
        raise UnsupportedOutput(f"the model answered {len(rows)} results for {count} images")
    return rows


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections in its own pixels: boxes (K, 4) x1, y1, x2, y2, scores (K,), class ids (K,)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


def read_output(output: Any, images: Sequence[np.ndarray], input_format: InputFormat) -> list[ImageDetections]:
    """The model's answer for ``images`` (as given to :meth:`InputFormat.model_input`), per image."""
    results = []
    for image, (boxes, scores, classes) in zip(images, _per_image(output, len(images))):
        results.append(ImageDetections(
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * input_format.box_scale(image),
            scores=np.asarray(scores, dtype=np.float64).reshape(-1),
            class_ids=np.array([int(round(float(c))) for c in np.asarray(classes).reshape(-1)], dtype=np.int64),
        ))
    return results


def normalise(output: Any, images: Sequence[np.ndarray], input_format: InputFormat,
              class_names: dict[int, str]) -> list[dict[str, list]]:
    """The served schema: ``{"boxes", "scores", "class_ids", "class_names"}`` per image."""
    return [
        {
            "boxes": np.round(found.boxes, 2).tolist(),
            "scores": found.scores.tolist(),
            "class_ids": found.class_ids.tolist(),
            "class_names": [class_names.get(int(c), str(int(c))) for c in found.class_ids],
        }
        for found in read_output(output, images, input_format)
    ]
