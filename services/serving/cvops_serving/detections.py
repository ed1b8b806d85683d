"""Request bodies in, images out; the model's answer becomes one detection schema in cvops.

Input: PNG/JPEG bytes, or JSON (a list of images, each nested (H, W, 3) 0-255 lists or a
base64 string of PNG/JPEG bytes). Each image becomes an (H, W, 3) uint8 RGB array.

Output per image: ``{"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "class_ids": [...],
"class_names": [...]}``, boxes in pixels of the image as sent, made by cvops.detection_schema
(the trainer package, installed in the image) from whichever framework's pyfunc output, the same
code cvops' evaluation of registered models reads detections with.
"""
from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from cvops.detection_schema import BadInput, InputFormat, UnsupportedOutput, normalise

__all__ = ["BadInput", "InputFormat", "UnsupportedOutput", "decode_image", "images_from_json", "normalise"]


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
