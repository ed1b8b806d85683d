"""Metric, param and tag names that MLflow accepts, for names frameworks actually produce.

TF Object Detection API and COCO evaluators emit ``DetectionBoxes_Precision/mAP@.50IOU`` or
``DetectionBoxes_Recall/AR@100 (small)``; MLflow only accepts ``[/\\w.\\- ]`` in names that are
also normalised relative paths of at most 250 characters. :func:`sanitize_metric_name` is the
one sanitiser every adapter uses; :class:`NameRegistry` (one per run) keeps the mapping back to
the original names and makes distinct originals stay distinct within the run.
"""
from __future__ import annotations

import hashlib
import posixpath
import re

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

# MLflow also allows ':' on POSIX servers but not on Windows ones; cvops names work on both.
_VALID_NAME = re.compile(r"^[/\w.\- ]+$")
_BRACKETED = re.compile(r"\s*[(\[{]\s*([^)\]}]*?)\s*[)\]}]\s*")
_INVALID_CHARS = re.compile(r"[^/\w.\- ]+")
_SUFFIX_CHARS = 7  # "_" + 6 hex digits


def is_valid_name(name: str) -> bool:
    return (
        bool(name)
        and len(name) <= MAX_ENTITY_KEY_LENGTH
        and _VALID_NAME.match(name) is not None
        and _is_normalised_path(name)
    )


def _is_normalised_path(name: str) -> bool:
    normalised = posixpath.normpath(name)
    return normalised == name and normalised != "." and not normalised.startswith(("..", "/"))


def name_digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]


def sanitize_metric_name(name: str) -> str:
    """A valid MLflow metric/param/tag name for ``name``; valid names come back unchanged.

    Readable rewrites first (``@`` -> ``_at_``, ``mAP (small)`` -> ``mAP_small``, any other
    invalid character run -> ``_``, empty or ``..`` path segments dropped), then names over
    250 characters are cut and given a digest suffix of the original so they stay distinct.
    Deterministic: the same input always gives the same output.
    """
    name = str(name)
    if is_valid_name(name):
        return name
    text = name.replace("@", "_at_")
    text = _BRACKETED.sub(lambda m: f"_{m.group(1)}_" if m.group(1) else "_", text)
    text = _INVALID_CHARS.sub("_", text)
    segments = (seg.strip().strip("_") for seg in text.split("/") if seg)
    text = "/".join(seg if seg not in ("", ".", "..") else "_" for seg in segments) or "_"
    if len(text) > MAX_ENTITY_KEY_LENGTH:
        text = text[: MAX_ENTITY_KEY_LENGTH - _SUFFIX_CHARS].rstrip("/") + "_" + name_digest(name)
    return text


class NameRegistry:
    """Sanitises names for one run and keeps ``sanitised -> original`` for the mapping artifact.

    Two different originals that sanitise alike (``a(b)`` and ``a[b]``) would silently merge
    into one chart; the second one seen gets a digest suffix instead, so the mapping stays 1:1.
    """

    def __init__(self) -> None:
        self._by_original: dict[str, str] = {}
        self._original_by_name: dict[str, str] = {}
        self.changed = False  # whether any name differs from its original (mapping worth uploading)

    def __call__(self, original: str) -> str:
        known = self._by_original.get(original)
        if known is not None:
            return known
        original = str(original)
        name = sanitize_metric_name(original)
        if self._original_by_name.get(name, original) != original:
            name = name[: MAX_ENTITY_KEY_LENGTH - _SUFFIX_CHARS].rstrip("/") + "_" + name_digest(original)
        self._by_original[original] = name
        self._original_by_name[name] = original
        if name != original:
            self.changed = True
        return name

    def mapping(self) -> dict[str, str]:
        """``{sanitised: original}`` for every name that was rewritten."""
        return {name: original for name, original in self._original_by_name.items() if name != original}
