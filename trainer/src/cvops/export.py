"""Deployment formats for a registered model, with a parity check (issue 17, "Export").

    result = cvops.export.export_keras_onnx(model, version, samples)   # after log_model_and_register
    print(result.summary())

Keras → ONNX with tf2onnx (extra ``onnx``). The exported model and the Keras model predict the
same ``samples`` (evaluation images); the largest absolute difference over every output is the
parity figure, recorded with ONNX Runtime's and Keras' latency as metrics of the version's logged
model (MLflow 3 model metrics, shown on the version), next to the ``.onnx`` file and an
``export.json`` (opset, tool versions, tolerance) in the run's ``export/onnx/``. The tag
``cvops.export.onnx`` on the version says ``passed`` or ``failed: <why>``. A failed export or
parity check warns and is recorded; it never raises, so registration is never blocked and never
silently left without a verdict.
"""
from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXPORT_TAG = "cvops.export.onnx"
ARTIFACT_DIR = "export/onnx"
DEFAULT_OPSET = 17
# float32 through another runtime: kernels sum in another order. Boxes in pixels and scores in
# 0-1 agree far better than this on the models tested; a real divergence is orders larger.
DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportResult:
    passed: bool
    reason: str
    max_abs_diff: float | None = None
    onnx_latency_ms: float | None = None
    native_latency_ms: float | None = None
    opset: int = DEFAULT_OPSET
    tolerance: float = DEFAULT_TOLERANCE
    artifact_uri: str | None = None

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"ONNX export {verdict}: {self.reason}"


def parity(reference: dict[str, np.ndarray], exported: dict[str, np.ndarray], tolerance: float) -> tuple[bool, float, str]:
    """(passed, max |difference| over every output, reason)."""
    missing = sorted(set(reference) - set(exported))
    if missing:
        return False, float("inf"), f"the exported model lacks outputs {missing}"
    worst, worst_output = 0.0, None
    for name, expected in reference.items():
        found = np.asarray(exported[name], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if found.shape != expected.shape:
            return False, float("inf"), f"output {name!r}: shape {found.shape} vs {expected.shape}"
        difference = float(np.max(np.abs(found - expected))) if expected.size else 0.0
        if not difference <= worst:  # also catches NaN
            worst, worst_output = difference, name
    if not worst <= tolerance:
        return False, worst, f"max |difference| {worst:.3g} on {worst_output!r} > tolerance {tolerance:g}"
    return True, worst, f"max |difference| {worst:.3g} <= tolerance {tolerance:g}"


def _outputs(value: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        return {name: np.asarray(item) for name, item in value.items()}
    values = value if isinstance(value, (list, tuple)) else [value]
    return {name: np.asarray(item) for name, item in zip(names, values)}


def _median_ms(call, repeats: int = 10) -> float:
    call()  # warm-up: graph tracing, session allocation
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings))


def _convert_and_check(model, samples: np.ndarray, opset: int, tolerance: float, directory: Path):
    try:
        import onnxruntime
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        return ExportResult(False, f"{exc.name} is not installed: pip install 'cvops[onnx]'", opset=opset, tolerance=tolerance), None
    samples = np.asarray(samples, dtype=np.float32)
    signature = (tf.TensorSpec((None, *samples.shape[1:]), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x, training=False)),
                                             input_signature=signature, opset=opset)
    onnx_file = directory / "model.onnx"
    onnx_file.write_bytes(proto.SerializeToString())
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [output.name for output in session.get_outputs()]
    reference = _outputs(model(samples, training=False), output_names)
    exported = dict(zip(output_names, session.run(None, {input_name: samples})))
    passed, difference, reason = parity(reference, exported, tolerance)
    result = ExportResult(
        passed, reason, difference,
        onnx_latency_ms=_median_ms(lambda: session.run(None, {input_name: samples})),
        native_latency_ms=_median_ms(lambda: model(samples, training=False)),
        opset=opset, tolerance=tolerance,
    )
    (directory / "export.json").write_text(json.dumps({
        **asdict(result), "samples": list(samples.shape), "tf2onnx": tf2onnx.__version__,
        "onnxruntime": onnxruntime.__version__, "tensorflow": tf.__version__,
    }, indent=2))
    return result, directory


def _logged_model_id(version) -> str | None:
    # MLflow 3 logs a model as a LoggedModel (models:/m-<id>); the registry's ModelVersion leaves
    # model_id empty and names it only in its source. Without one the metrics land on the run.
    prefix = "models:/m-"
    return version.model_uri[len("models:/"):] if version.model_uri.startswith(prefix) else None


def export_keras_onnx(model, version, samples, *, client=None, opset: int = DEFAULT_OPSET,
                      tolerance: float = DEFAULT_TOLERANCE) -> ExportResult:
    """Export a Keras ``model`` registered as ``version`` (a cvops.registry.RegisteredVersion) to
    ONNX, check it on ``samples`` and record everything on the version (see the module's doc)."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    with tempfile.TemporaryDirectory(prefix="cvops-onnx-") as scratch:
        try:
            result, files = _convert_and_check(model, samples, opset, tolerance, Path(scratch))
        except Exception as exc:  # a conversion failure is the export's verdict, not the training's
            result, files = ExportResult(False, f"conversion failed: {type(exc).__name__}: {exc}"[:500],
                                         opset=opset, tolerance=tolerance), None
        if files is not None:
            client.log_artifacts(version.run_id, str(files), ARTIFACT_DIR)
            result = ExportResult(**{**asdict(result), "artifact_uri": f"runs:/{version.run_id}/{ARTIFACT_DIR}/model.onnx"})
    model_id = _logged_model_id(version)
    metrics = {"export/onnx_max_abs_diff": result.max_abs_diff, "export/onnx_latency_ms": result.onnx_latency_ms,
               "export/native_latency_ms": result.native_latency_ms}
    for key, value in metrics.items():
        if value is not None and np.isfinite(value):
            client.log_metric(version.run_id, key, value, model_id=model_id)
    client.set_model_version_tag(version.name, version.version, EXPORT_TAG,
                                 "passed" if result.passed else f"failed: {result.reason}"[:5000])
    if not result.passed:
        warnings.warn(f"{version.name} v{version.version}: {result.summary()}", stacklevel=2)
    return result
