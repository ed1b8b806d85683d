"""Input and output conventions shared by the detection models cvops logs as MLflow pyfuncs
(Detectron2's model_final.pth, the OD API's exported SavedModel), so a served detector from
any framework takes the same images and answers in the same shape.

Input: an (N, H, W, 3) uint8 RGB array, a list of (H, W, 3) arrays, or a pandas DataFrame with
an ``image`` column holding arrays or encoded PNG/JPEG bytes.
Output: a DataFrame, one row per image, columns ``boxes`` (list of [x1, y1, x2, y2] in pixels),
``scores`` and ``classes`` (lists, class indices as the training data numbered them).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvops.evaluation import Detections

log = logging.getLogger(__name__)


def images_from_model_input(model_input: Any) -> list[np.ndarray]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise ValueError(f"model input DataFrame needs an 'image' column; it has {list(model_input.columns)}")
        items = list(model_input["image"])
    elif isinstance(model_input, np.ndarray) and model_input.ndim == 3:
        items = [model_input]
    else:
        items = list(model_input)
    return [_as_rgb_array(item, index) for index, item in enumerate(items)]


def _as_rgb_array(item: Any, index: int) -> np.ndarray:
    if isinstance(item, (bytes, bytearray)):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(item)).convert("RGB"))
    array = np.asarray(item)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image {index}: expected an (H, W, 3) RGB array, got shape {array.shape}")
    return array.astype(np.uint8, copy=False)


def detections_frame(detections: Sequence[Detections]):
    import pandas as pd

    return pd.DataFrame(
        {
            "boxes": [d.boxes.tolist() for d in detections],
            "scores": [d.scores.tolist() if d.scores is not None else [] for d in detections],
            "classes": [d.classes.tolist() for d in detections],
        }
    )


def _cvops_code_path() -> str:
    # The detector classes live in cvops: shipping the package with the model lets any
    # environment that loads it (mlflow models serve, a notebook) import them without cvops.
    import cvops

    return str(Path(cvops.__file__).parent)


def log_detector(
    run: Any,
    python_model: Any,
    *,
    artifacts: dict[str, str],
    registered_model_name: str,
    extra_pip_requirements: Sequence[str] = (),
):
    """Log a detector PythonModel with its files and register it (cvops.registry)."""
    from cvops import registry

    version = registry.log_model_and_register(
        run,
        python_model,
        "pyfunc",
        registered_model_name=registered_model_name,
        artifacts=artifacts,
        code_paths=[_cvops_code_path()],
        extra_pip_requirements=list(extra_pip_requirements),
    )
    log.info("cvops: registered %s version %s", version.name, version.version)
    return version


def log_keras_model(run: Any, model: Any, *, input_example: Any, registered_model_name: str):
    """Log a Keras model (``mlflow.tensorflow`` on the TensorFlow backend, Keras 2 and 3;
    ``mlflow.keras`` on other Keras 3 backends) with a signature inferred from ``input_example`` and the model's output on it,
    and register it (cvops.registry)."""
    import keras
    from mlflow.models import infer_signature

    from cvops import registry

    signature = None
    if input_example is not None:
        output = model(input_example, training=False)
        output = {k: np.asarray(v) for k, v in output.items()} if isinstance(output, dict) else np.asarray(output)
        signature = infer_signature(np.asarray(input_example), output)
    if keras.backend.backend() == "tensorflow":  # Keras 2 (tf.keras) or Keras 3 on TensorFlow
        flavor, example = "tensorflow", input_example
    else:
        # MLflow 3.17's mlflow.keras.save_model writes the input example before it creates the
        # model directory, so logging one fails; the signature still describes the input.
        flavor, example = "keras", None
    version = registry.log_model_and_register(
        run, model, flavor, registered_model_name=registered_model_name, signature=signature, input_example=example
    )
    log.info("cvops: registered %s version %s", version.name, version.version)
    return version
