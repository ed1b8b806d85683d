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
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cvops.evaluation import Detections


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
    # The detector classes live in cvops, which no package index has: the model carries the
    # package (code_paths), so any environment built from its requirements can import them.
    import cvops

    return str(Path(cvops.__file__).parent)


# What the shipped detector classes import besides the framework (cvops.evaluation and this
# module: numpy, pandas for the output frame, Pillow for encoded images), and MLflow's unpickler.
_DETECTOR_RUNTIME = (("numpy",), ("pandas",), ("pillow",), ("cloudpickle",))


class ModelEnvironmentError(RuntimeError):
    pass


def pinned_requirement(*distributions: str) -> str:
    """The first of ``distributions`` installed here, pinned as this environment has it: a VCS
    install (PEP 610 ``direct_url.json``) as ``name @ git+URL@commit``, the way detectron2's users
    install it; anything else as ``name==version``, which a site's wheelhouse (``--find-links``)
    or a package index resolves. Local version labels (``+cpu``) are dropped: they name a build,
    not a release, and no index serves them by that name."""
    from importlib import metadata

    for name in distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
        vcs = direct_url.get("vcs_info", {})
        if vcs.get("vcs") == "git" and vcs.get("commit_id"):
            return f"{name} @ git+{direct_url['url']}@{vcs['commit_id']}"
        return f"{name}=={dist.version.split('+', 1)[0]}"
    raise ModelEnvironmentError(
        f"none of {', '.join(distributions)} is installed here, so the model's environment cannot name it; "
        f"log the model from the environment that trained it"
    )


def pinned_requirements(*entries: tuple[str, ...]) -> list[str]:
    """requirements.txt of a logged model: each entry pinned as this environment has it (an entry
    lists alternatives, first installed wins, e.g. ``("tensorflow", "tensorflow-cpu")``: MLflow's
    own inference lists both when the CPU build is installed, and unpinned where it guesses).
    MLflow adds its own pin; cvops itself travels in a detector's code_paths."""
    return [pinned_requirement(*alternatives) for alternatives in entries]


TENSORFLOW = ("tensorflow", "tensorflow-cpu")


CANDIDATE = "candidate"


def announce(version) -> None:
    # Printed, not logged: a training script's user needs the version for the promotion gate
    # and rarely configures logging for cvops.
    print(
        f"cvops: registered {version.name} version {version.version} as @{CANDIDATE} "
        f"(models:/{version.name}@{CANDIDATE})",
        file=sys.stderr,
        flush=True,
    )


def log_detector(
    run: Any,
    python_model: Any,
    *,
    artifacts: dict[str, str],
    registered_model_name: str,
    framework_requirements: Sequence[tuple[str, ...]],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
):
    """Log a detector PythonModel with its files, register it with its ``class_names`` (the
    classes it answers, by id) and point ``@candidate`` at the new version (cvops.registry);
    returns the RegisteredVersion."""
    from cvops import registry

    version = registry.log_model_and_register(
        run,
        python_model,
        "pyfunc",
        registered_model_name=registered_model_name,
        artifacts=artifacts,
        code_paths=[_cvops_code_path()],
        pip_requirements=pinned_requirements(*framework_requirements, *_DETECTOR_RUNTIME),
        aliases=(CANDIDATE,),
        class_names=class_names,
    )
    announce(version)
    return version


def log_keras_model(run: Any, model: Any, *, input_example: Any, registered_model_name: str | None,
                    class_names: Sequence[str] = ()):
    """Log a Keras model (``mlflow.tensorflow`` on the TensorFlow backend, Keras 2 and 3;
    ``mlflow.keras`` on other Keras 3 backends) with a signature inferred from ``input_example`` and the model's output on it,
    and register it with its ``class_names`` (index = class id; cvops.registry) unless ``registered_model_name`` is None."""
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
    options = {"signature": signature, "input_example": example,
               "pip_requirements": pinned_requirements(TENSORFLOW, ("keras",), ("numpy",), ("cloudpickle",))}
    if registered_model_name is None:
        registry.log_model(run, model, flavor, class_names=class_names, **options)
        return None
    version = registry.log_model_and_register(
        run, model, flavor, registered_model_name=registered_model_name, aliases=(CANDIDATE,),
        class_names=class_names, **options
    )
    announce(version)
    return version
