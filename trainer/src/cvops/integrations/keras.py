"""Keras adapter: one callback for ``model.fit`` (Keras 3, and tf.keras / Keras 2).

    from cvops.integrations.keras import CvopsCallback
    with cvops.start_run(tags={"task": "detection"}) as run:
        model.fit(x, y, epochs=10, callbacks=[CvopsCallback(run, registered_model_name="boxes")])

The callback decides *when* (Keras' hooks) and *what*; the Run decides *where* (batching,
spool). It logs: fit and optimizer config as params, the model summary, epoch metrics (step =
epoch index, as Keras' History and MLflow autolog do), ``batch/<metric>`` every
``log_every_n_steps`` optimizer steps (step = the true global step, continuing across fits and
resumed optimizers), per-epoch sample predictions drawn with boxes for detection models, an
optional end-of-training evaluation (COCO-style AP, PR curves, confusion matrix, latency) and
the trained model with signature and input example, registered. As a trial of ``cvops sweep``
it reports the sweep's objective (a validation metric) every epoch and stops training when the
trial is pruned, and logs the model without registering it: the sweep registers its best
trial's model (``register:`` in the sweep spec), so a sweep does not add a version per trial.

MLflow autolog coexistence: ``mlflow.tensorflow.autolog``/``mlflow.keras.autolog`` inject their
own callback into ``fit``. With ``autolog="disable"`` (default) the callback turns those
integrations off when it is created, so each value is logged once, by cvops. If autolog is
still on when ``fit`` starts (``autolog="defer"``, or enabled later), cvops leaves epoch
metrics, params and the model to autolog and logs only what autolog does not.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Literal, Sequence

import numpy as np

from cvops import evaluation, export
from cvops.evaluation import Detections
from cvops.integrations import _pyfunc
from cvops.integrations._common import never_raises, require
from cvops.sweeps.trial import in_trial, report_intermediate

keras = require("keras", extra="keras")
log = logging.getLogger(__name__)

AUTOLOG_FLAVORS = ("tensorflow", "keras")
SUMMARY_ARTIFACT = "model_summary.txt"


def autolog_active() -> bool:
    from mlflow.utils.autologging_utils import autologging_is_disabled

    return any(not autologging_is_disabled(flavor) for flavor in AUTOLOG_FLAVORS)


def disable_autolog() -> None:
    import mlflow

    for flavor in AUTOLOG_FLAVORS:
        getattr(mlflow, flavor).autolog(disable=True)


def decode_box_dict(outputs: Any) -> list[Detections]:
    """The documented output convention for detection models without a custom decoder: a
    dict with batch-first ``boxes`` (N, K, 4 as x1, y1, x2, y2 pixels), ``scores`` (N, K) and
    ``classes`` (N, K)."""
    if not isinstance(outputs, dict) or not {"boxes", "scores", "classes"} <= set(outputs):
        raise ValueError(
            "sample predictions: the model output is not a dict with 'boxes', 'scores' and 'classes'; "
            "pass decode_predictions= to turn its output into cvops.evaluation.Detections"
        )
    boxes, scores, classes = (np.asarray(outputs[key]) for key in ("boxes", "scores", "classes"))
    return [Detections(boxes[i], classes[i], scores[i]) for i in range(len(boxes))]


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(f"{prefix}.{key}", item))
        return flat
    return {prefix: value}


def _as_float(value: Any) -> float | None:
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


class CvopsCallback(keras.callbacks.Callback):
    """See the module docstring. ``sample_images`` (a small batch) with ``decode_predictions``
    (model output -> list of Detections; default :func:`decode_box_dict`) and ``class_names``
    turns on per-epoch drawn predictions; ``evaluation_data=(images, ground_truth)`` turns on
    the end-of-training evaluation; ``input_example`` (defaults to the first sample images)
    gives the logged model its signature. The trained model is logged and registered when
    ``registered_model_name`` is given."""

    def __init__(
        self,
        run: Any,
        *,
        log_every_n_steps: int = 50,
        registered_model_name: str | None = None,
        input_example: Any = None,
        sample_images: np.ndarray | None = None,
        decode_predictions: Callable[[Any], Sequence[Detections]] = decode_box_dict,
        class_names: Sequence[str] = (),
        evaluation_data: tuple[np.ndarray, Sequence[Detections]] | None = None,
        evaluation_batch_size: int = 8,
        autolog: Literal["disable", "defer"] = "disable",
    ) -> None:
        super().__init__()
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        if autolog not in ("disable", "defer"):
            raise ValueError(f"autolog must be 'disable' or 'defer', got {autolog!r}")
        self.run = run
        self.log_every_n_steps = log_every_n_steps
        self.registered_model_name = registered_model_name
        self.sample_images = sample_images
        self.input_example = input_example if input_example is not None else (
            sample_images[:2] if sample_images is not None else None
        )
        self.decode_predictions = decode_predictions
        self.class_names = list(class_names)
        self.evaluation_data = evaluation_data
        self.evaluation_batch_size = evaluation_batch_size
        if autolog == "disable" and autolog_active():
            disable_autolog()
            log.warning("cvops: MLflow autolog for Keras/TensorFlow turned off so metrics are not logged twice")
        self._defer_to_autolog = False
        self._global_step = 0
        self._steps_before_epoch = 0
        self._last_batch = -1
        self._pruned = False  # by the sweep this fit is a trial of

    @never_raises
    def on_train_begin(self, logs=None) -> None:
        self._defer_to_autolog = autolog_active()
        if self._defer_to_autolog:
            log.warning(
                "cvops: MLflow autolog is on for Keras: it logs epoch metrics, params and the model; "
                "cvops adds batch metrics, samples and evaluation"
            )
        self._global_step = int(np.asarray(self.model.optimizer.iterations))
        self._steps_before_epoch = self._global_step
        self.run.set_tags({"framework": "keras", "keras_version": keras.__version__})
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        # Not under "model/": that is the logged model's own directory.
        self.run.log_text("\n".join(lines) + "\n", SUMMARY_ARTIFACT)
        if self._defer_to_autolog:
            return
        params = {f"fit.{key}": value for key, value in (self.params or {}).items()}
        optimizer_config = self.model.optimizer.get_config()
        params.update(_flatten("optimizer", optimizer_config))
        params["optimizer.class"] = type(self.model.optimizer).__name__
        self.run.log_params(params)

    @never_raises
    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._last_batch = -1

    @never_raises
    def on_train_batch_end(self, batch, logs=None) -> None:
        # With steps_per_execution > 1 Keras reports only the last batch of each execution, so
        # the step comes from the batch index, not from counting calls.
        previous = self._global_step
        self._last_batch = batch
        self._global_step = self._steps_before_epoch + batch + 1
        if self._global_step // self.log_every_n_steps == previous // self.log_every_n_steps:
            return
        metrics = {f"batch/{key}": _as_float(value) for key, value in (logs or {}).items()}
        self.run.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=self._global_step)

    @never_raises
    def on_epoch_end(self, epoch, logs=None) -> None:
        self._steps_before_epoch += self._last_batch + 1
        if not self._defer_to_autolog:
            metrics = {key: _as_float(value) for key, value in (logs or {}).items()}
            learning_rate = _as_float(getattr(self.model.optimizer, "learning_rate", None))
            if learning_rate is not None:
                metrics["learning_rate"] = learning_rate
            self.run.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=epoch)
        if self.sample_images is not None:
            self._log_samples(epoch)
        if report_intermediate(self.run, {key: _as_float(value) for key, value in (logs or {}).items()}, epoch):
            self._pruned = True
            self.model.stop_training = True  # the run has ended KILLED

    def _predict(self, images: np.ndarray) -> Any:
        outputs = self.model(images, training=False)
        if isinstance(outputs, dict):
            return {key: np.asarray(value) for key, value in outputs.items()}
        return np.asarray(outputs) if not isinstance(outputs, (list, tuple)) else [np.asarray(o) for o in outputs]

    def _log_samples(self, epoch: int) -> None:
        detections = self.decode_predictions(self._predict(self.sample_images))
        for index, (image, found) in enumerate(zip(self.sample_images, detections)):
            drawn = evaluation.draw_detections(image, found, self.class_names)
            self.run.log_image(drawn, f"samples/epoch_{epoch:03d}/{index:02d}.png")

    @never_raises
    def on_train_end(self, logs=None) -> None:
        if self._pruned:
            return  # a pruned trial's model is not worth evaluating or registering
        if self.evaluation_data is not None:
            self._evaluate()
        if self.registered_model_name and not self._defer_to_autolog:
            version = _pyfunc.log_keras_model(
                self.run, self.model, input_example=self.input_example,
                registered_model_name=None if in_trial() else self.registered_model_name,
                class_names=self.class_names,
            )
            if version is not None and self.run.export_on == "register":
                self._export(version)

    @never_raises
    def _export(self, version) -> None:
        """CVOPS_EXPORT=register: ONNX of the registered model, checked on the first evaluation
        images (else the sample images; cvops.export)."""
        images = self.evaluation_data[0] if self.evaluation_data is not None else self.sample_images
        if images is None or not len(images):
            log.warning("cvops: no evaluation_data or sample_images to check the exported model on: not exported")
            return
        log.info("cvops: %s", export.export_keras_onnx(self.model, version, images[:export.CHECK_SAMPLES]).summary())

    @never_raises  # a failed evaluation (say, class_names not matching the model) must not cost the model
    def _evaluate(self) -> None:
        images, ground_truth = self.evaluation_data
        evaluation.evaluate_detector(
            self.run, lambda batch: self.decode_predictions(self._predict(batch)), images, ground_truth,
            self.class_names, batch_size=self.evaluation_batch_size, step=self._global_step,
        )
