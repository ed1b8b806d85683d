"""Images in, one detection schema out, whatever framework's pyfunc answers.

Input: PNG/JPEG bytes, or JSON (a list of images, each nested (H, W, 3) 0-255 lists or a
base64 string of PNG/JPEG bytes). Each image becomes an (H, W, 3) uint8 RGB array.

Output per image: ``{"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "class_ids": [...],
"class_names": [...]}``, boxes in pixels of the image as sent. The pyfunc outputs understood:
a DataFrame with ``boxes``/``scores``/``classes`` columns (cvops' Detectron2 and TF OD API
detectors, cvops.integrations._pyfunc) and a dict of batch-first ``boxes`` (N, K, 4),
``scores`` (N, K), ``classes`` (N, K) arrays (the Keras convention, cvops.integrations.keras).
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

OUTPUT_KEYS = ("boxes", "scores", "classes")


class BadInput(ValueError):
    """The request's images cannot be read (answered 400)."""


class UnsupportedOutput(RuntimeError):
    """The model answers in a shape this server cannot turn into detections (answered 500)."""


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInput(f"{what}: not a PNG or JPEG image ({exc})") from None


def images_from_json(payload: Any) -> list[np.ndarray]:
    if isinstance(payload, dict) and "images" in payload:
        payload = payload["images"]
    if not isinstance(payload, list) or not payload:
        raise BadInput('JSON body: expected a non-empty list of images (or {"images": [...]})')
    return [_json_image(item, index) for index, item in enumerate(payload)]


def _json_image(item: Any, index: int) -> np.ndarray:
    what = f"image {index}"
    if isinstance(item, str):
        try:
            return decode_image(base64.b64decode(item, validate=True), what)
        except binascii.Error:
            raise BadInput(f"{what}: a string must be base64-encoded PNG/JPEG bytes") from None
    try:
        array = np.asarray(item, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInput(f"{what}: expected nested (H, W, 3) lists of numbers") from None
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise BadInput(f"{what}: expected an (H, W, 3) RGB array, got shape {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise BadInput(f"{what}: pixel values must be within 0-255")
    return array.astype(np.uint8)


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
        """Multiplier from the model's box coordinates to the sent image's pixels."""
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


def normalise(output: Any, images: Sequence[np.ndarray], input_format: InputFormat,
              class_names: dict[int, str]) -> list[dict[str, list]]:
    results = []
    for image, (boxes, scores, classes) in zip(images, _per_image(output, len(images))):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * input_format.box_scale(image)
        class_ids = [int(round(float(c))) for c in np.asarray(classes).reshape(-1)]
        results.append({
            "boxes": np.round(boxes, 2).tolist(),
            "scores": [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)],
            "class_ids": class_ids,
            "class_names": [class_names.get(c, str(c)) for c in class_ids],
        })
    return results
