"""Deployment formats for a registered model, with a parity check (issue 17, "Export").

    result = cvops.export.export_keras_onnx(model, version, samples)   # after log_model_and_register
    print(result.summary())

One core for every framework: a *converter* writes one format's files into a folder and returns
the exported model as a function of one sample (:class:`Exported`); :func:`export_version` runs
it and the original model on the same samples (evaluation images), takes the largest absolute
difference over every output as the parity figure, times both, and records on the version:

- the files and an ``export.json`` (tool versions, opset, tolerance, verdict) in the run's
  ``export/<format>/``;
- the metrics ``export/<format>_max_abs_diff``, ``export/<format>_latency_ms`` and
  ``export/native_latency_ms`` on the version's logged model (MLflow 3 model metrics, shown on
  the version);
- the version tag ``cvops.export.<format>``: ``passed`` or ``failed: <why>``.

The converters are thin and live beside their framework: Keras → ONNX (tf2onnx) here,
Detectron2 → TorchScript and ONNX in :mod:`cvops.integrations.detectron2`, TF OD API SavedModel
→ ONNX in :mod:`cvops.integrations.tfod`. With ``CVOPS_EXPORT=register`` the adapters (the
Detectron2 hook, the Keras callback, the OD API bridge) export each model they register; with
``CVOPS_EXPORT=promote`` :func:`cvops.registry.promote` exports the version it promotes
(:func:`export_registered_version`, which loads it back from the registry). A failed export or
parity check warns and is recorded; it never raises, so registration and promotion are never
blocked and never silently left without a verdict.
"""
from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

TAG_PREFIX = "cvops.export."
EXPORT_DIR = "export"
DEFAULT_OPSET = 17
# float32 through another runtime: kernels sum in another order. Boxes in pixels and scores in
# 0-1 agree far better than this on the models tested; a real divergence is orders larger.
DEFAULT_TOLERANCE = 1e-3
ONNX_EXTRA = "pip install 'cvops[onnx]'"
# An export is checked and timed on this many evaluation images.
CHECK_SAMPLES = 4


def tag(format_name: str) -> str:
    return TAG_PREFIX + format_name


def artifact_dir(format_name: str) -> str:
    return f"{EXPORT_DIR}/{format_name}"


@dataclass(frozen=True)
class Exported:
    """What a converter made: the main file's name in its folder, the exported model as a
    function of one sample (named outputs), and what produced it (tool versions, opset)."""

    file: str
    predict: Callable[[Any], Mapping[str, Any]]
    versions: Mapping[str, Any] = field(default_factory=dict)


Converter = Callable[[Path], Exported]


class ExportUnavailable(RuntimeError):
    """A converter cannot run here (a missing package); the message says what to install."""


@dataclass(frozen=True)
class ExportResult:
    format: str
    passed: bool
    reason: str
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    native_latency_ms: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    versions: Mapping[str, Any] = field(default_factory=dict)
    artifact_uri: str | None = None

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.format} export {verdict}: {self.reason}"


def parity(reference: dict[str, np.ndarray], exported: dict[str, np.ndarray], tolerance: float) -> tuple[bool, float, str]:
    """(passed, max |difference| over every output, reason)."""
    if not reference:
        return False, float("inf"), "no outputs to compare"
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


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def named_outputs(value: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A model's output as {name: array}: a dict keeps its keys, a sequence (or one tensor) is
    named in order by ``names`` (the exported model's)."""
    if isinstance(value, Mapping):
        return {name: _array(item) for name, item in value.items()}
    values = value if isinstance(value, (list, tuple)) else [value]
    return {name: _array(item) for name, item in zip(names, values)}


def _parity_over(reference: list[Any], exported: list[Mapping[str, Any]], tolerance: float) -> tuple[bool, float, str]:
    worst = 0.0
    for index, (expected, found) in enumerate(zip(reference, exported)):
        if not isinstance(found, Mapping):
            raise TypeError(f"an exported model's predict must answer {{output name: array}}, not {type(found).__name__}")
        found = named_outputs(found, ())
        passed, difference, reason = parity(named_outputs(expected, list(found)), found, tolerance)
        if not passed:
            return False, difference, f"sample {index}: {reason}"
        worst = max(worst, difference)
    return True, worst, f"max |difference| {worst:.3g} <= tolerance {tolerance:g} over {len(reference)} samples"


def median_ms(predict: Callable[[Any], Any], samples: Sequence[Any], repeats: int = 3) -> float:
    """Median milliseconds of one call, over ``repeats`` passes of the samples after a warm-up
    pass (graph tracing, session allocation)."""
    for sample in samples:
        predict(sample)
    timings = []
    for _ in range(repeats):
        for sample in samples:
            started = time.perf_counter()
            predict(sample)
            timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings))


def _failed(format_name: str, exc: BaseException, tolerance: float) -> ExportResult:
    why = str(exc) if isinstance(exc, ExportUnavailable) else f"conversion failed: {type(exc).__name__}: {exc}"
    return ExportResult(format_name, False, why[:500], tolerance=tolerance)


def _convert_and_check(format_name: str, convert: Converter, samples: list, reference: list, native_ms: float | None,
                       tolerance: float, directory: Path) -> ExportResult:
    exported = convert(directory)
    outputs = [exported.predict(sample) for sample in samples]
    passed, difference, reason = _parity_over(reference, outputs, tolerance)
    result = ExportResult(format_name, passed, reason, difference, median_ms(exported.predict, samples), native_ms,
                          tolerance, dict(exported.versions))
    (directory / "export.json").write_text(json.dumps({**asdict(result), "file": exported.file,
                                                       "samples": len(samples)}, indent=2, default=str))
    return result


def _logged_model_id(version) -> str | None:
    # MLflow 3 logs a model as a LoggedModel (models:/m-<id>); the registry's ModelVersion leaves
    # model_id empty and names it only in its source. Without one the metrics land on the run.
    prefix = "models:/m-"
    return version.model_uri[len("models:/"):] if version.model_uri.startswith(prefix) else None


def _record(client, version, result: ExportResult, native_ms: float | None, files: Path | None) -> ExportResult:
    if files is not None:
        client.log_artifacts(version.run_id, str(files), artifact_dir(result.format))
        main_file = json.loads((files / "export.json").read_text())["file"]
        result = ExportResult(**{**asdict(result), "artifact_uri": f"runs:/{version.run_id}/{artifact_dir(result.format)}/{main_file}"})
    metrics = {f"export/{result.format}_max_abs_diff": result.max_abs_diff,
               f"export/{result.format}_latency_ms": result.latency_ms, "export/native_latency_ms": native_ms}
    for key, value in metrics.items():
        if value is not None and np.isfinite(value):
            client.log_metric(version.run_id, key, value, model_id=_logged_model_id(version))
    client.set_model_version_tag(version.name, version.version, tag(result.format),
                                 "passed" if result.passed else f"failed: {result.reason}"[:5000])
    if not result.passed:
        warnings.warn(f"{version.name} v{version.version}: {result.summary()}", stacklevel=3)
    return result


def export_version(version, native: Callable[[Any], Any], samples: Sequence[Any], converters: Mapping[str, Converter], *,
                   client=None, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, ExportResult]:
    """Export the model registered as ``version`` (a cvops.registry.RegisteredVersion) to each of
    ``converters`` ({format: converter}), check each against ``native`` (the original model as a
    function of one sample) on ``samples`` and record everything (see the module's doc)."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    samples = list(samples)
    if not samples:
        raise ValueError("export_version needs at least one sample to check the exported models against")
    try:
        reference = [native(sample) for sample in samples]
        native_ms, native_error = median_ms(native, samples), None
    except Exception as exc:  # the original cannot be compared against: every format says so
        reference, native_ms, native_error = None, None, exc
    results = {}
    for format_name, convert in converters.items():
        with tempfile.TemporaryDirectory(prefix=f"cvops-{format_name}-") as scratch:
            files = None
            if native_error is not None:
                result = ExportResult(format_name, False, f"the original model failed on the samples: "
                                      f"{type(native_error).__name__}: {native_error}"[:500], tolerance=tolerance)
            else:
                try:
                    result = _convert_and_check(format_name, convert, samples, reference, native_ms, tolerance, Path(scratch))
                    files = Path(scratch)
                except Exception as exc:  # a conversion failure is the export's verdict, not the training's
                    result = _failed(format_name, exc, tolerance)
            results[format_name] = _record(client, version, result, native_ms, files)
    return results


def keras_onnx_converter(model, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET) -> Converter:
    def convert(directory: Path) -> Exported:
        try:
            import onnxruntime  # noqa: F401  (run by onnx_runtime_model)
            import tensorflow as tf
            import tf2onnx
        except ImportError as exc:
            raise ExportUnavailable(f"{exc.name} is not installed: {ONNX_EXTRA}") from None
        signature = (tf.TensorSpec((None, *input_shape), tf.float32, name="image"),)
        proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x, training=False)),
                                                 input_signature=signature, opset=opset)
        (directory / "model.onnx").write_bytes(proto.SerializeToString())
        return onnx_runtime_model(directory / "model.onnx", {
            "opset": opset, "tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__})

    return convert


def onnx_runtime_model(onnx_file: Path, versions: Mapping[str, Any]) -> Exported:
    """An ONNX file run in ONNX Runtime (CPU) on one sample: an array for a one-input model, or
    {input name: array}."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    input_names = [item.name for item in session.get_inputs()]
    output_names = [item.name for item in session.get_outputs()]

    def predict(sample) -> dict[str, np.ndarray]:
        feed = sample if isinstance(sample, Mapping) else {input_names[0]: sample}
        return dict(zip(output_names, session.run(None, {name: _array(value) for name, value in feed.items()})))

    return Exported(onnx_file.name, predict, {**versions, "onnxruntime": onnxruntime.__version__})


def export_keras_onnx(model, version, samples, *, client=None, opset: int = DEFAULT_OPSET,
                      tolerance: float = DEFAULT_TOLERANCE) -> ExportResult:
    """Export a Keras ``model`` registered as ``version`` to ONNX (extra ``onnx``), checked on
    ``samples`` (one batch of images, run as one call)."""
    samples = np.asarray(samples, dtype=np.float32)
    return export_version(version, lambda batch: model(batch, training=False), [samples],
                          {"onnx": keras_onnx_converter(model, samples.shape[1:], opset)},
                          client=client, tolerance=tolerance)["onnx"]


def export_registered_version(name: str, version: str | int, images: Sequence[np.ndarray] | None = None, *,
                              client=None) -> dict[str, ExportResult]:
    """Export a version already in the registry (what ``CVOPS_EXPORT=promote`` does at promotion):
    the model is loaded back with its framework, which must be importable here, and handed to
    that framework's converters; checked on ``images`` (RGB arrays), else on the input example
    logged with the model. Never raises: a model that cannot be loaded or has no exporter is
    recorded as a failed ``onnx`` export (the format every framework has); {format: result}."""
    from mlflow import MlflowClient

    from cvops.registry import RegisteredVersion, load_registered_version

    client = client or MlflowClient()
    registered = client.get_model_version(name, str(version))
    target = RegisteredVersion(name, str(registered.version), registered.source, registered.run_id)
    files = None
    try:
        pyfunc, files = load_registered_version(name, target.version)
        if images is None:
            example = pyfunc.metadata.load_input_example(files.name)
            if example is None:
                raise ExportUnavailable("no images to check the export on: the model has no input example; "
                                        "promote with a dataset (reevaluate_on, or cvops promote --reevaluate-on)")
            images = list(np.asarray(example))
        return _framework_export(pyfunc, files.name, target, list(images), client)
    except Exception as exc:
        return {"onnx": _record(client, target, _failed("onnx", exc, DEFAULT_TOLERANCE), None, None)}
    finally:
        if files is not None:
            files.cleanup()


def _framework_export(pyfunc, model_dir: str, target, images: list[np.ndarray], client) -> dict[str, ExportResult]:
    flavors = pyfunc.metadata.flavors
    if "tensorflow" in flavors or "keras" in flavors:
        import mlflow

        from cvops.detection_schema import InputFormat

        keras_model = (mlflow.tensorflow if "tensorflow" in flavors else mlflow.keras).load_model(model_dir)
        samples = InputFormat.of(pyfunc).model_input(images)
        return {"onnx": export_keras_onnx(keras_model, target, samples, client=client)}
    python_model = pyfunc.unwrap_python_model()
    exporter = getattr(python_model, "export", None)
    if exporter is None:
        raise ExportUnavailable(f"{type(python_model).__name__} has no exporter: cvops exports Keras models "
                                "and its Detectron2 and TF OD API detectors")
    return exporter(target, images, client=client)
