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
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

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


def save_detector(path: Path, python_model: Any, artifacts: dict[str, str], extra_pip_requirements: Sequence[str]) -> None:
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(
        str(path),
        python_model=python_model,
        artifacts=artifacts,
        code_paths=[_cvops_code_path()],
        extra_pip_requirements=list(extra_pip_requirements),
    )


def save_keras_model(path: Path, model: Any, input_example: Any) -> None:
    import keras
    from mlflow.models import infer_signature

    signature = None
    if input_example is not None:
        output = model(input_example, training=False)
        output = {k: np.asarray(v) for k, v in output.items()} if isinstance(output, dict) else np.asarray(output)
        signature = infer_signature(np.asarray(input_example), output)
    if int(keras.__version__.split(".")[0]) >= 3:
        import mlflow.keras as flavor

        path.mkdir(parents=True)  # mlflow.keras.save_model writes into an existing directory
    else:  # Keras 2 is tf.keras: the tensorflow flavor
        import mlflow.tensorflow as flavor
    flavor.save_model(model, str(path), signature=signature, input_example=input_example)


def log_model(
    run: Any,
    save: Callable[[Path], None],
    *,
    registered_model_name: str | None = None,
    artifact_path: str = "model",
) -> None:
    """Save an MLflow model locally with ``save(path)``, log the directory as the run's
    ``artifact_path`` and register it. The staging directory is left for the Run's worker to
    snapshot (it uploads in the background)."""
    staging = Path(tempfile.mkdtemp(prefix="cvops-model-")) / artifact_path
    save(staging)
    run.log_artifacts(str(staging), artifact_path=artifact_path)
    if registered_model_name:
        register_logged_model(run, artifact_path, registered_model_name)


def register_logged_model(run: Any, artifact_path: str, registered_model_name: str) -> None:
    import mlflow

    if not run.enabled:
        return
    if not run.flush() or run.run_id is None:
        log.warning(
            "cvops: the server did not take the model yet; %r is not registered (run `cvops sync`, then register "
            "runs:/<run_id>/%s)", registered_model_name, artifact_path,
        )
        return
    version = mlflow.register_model(f"runs:/{run.run_id}/{artifact_path}", registered_model_name)
    log.info("cvops: registered %s version %s", registered_model_name, version.version)


def log_detector(
    run: Any,
    python_model: Any,
    *,
    artifacts: dict[str, str],
    registered_model_name: str | None = None,
    extra_pip_requirements: Sequence[str] = (),
) -> None:
    log_model(
        run,
        lambda path: save_detector(path, python_model, artifacts, extra_pip_requirements),
        registered_model_name=registered_model_name,
    )
