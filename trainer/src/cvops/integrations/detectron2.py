"""Detectron2 adapter: a trainer hook and an event writer.

Hook (recommended; logs config, scalars, images, evaluation, outcome and the model)::

    class Trainer(DefaultTrainer):
        def build_hooks(self):
            hooks = super().build_hooks()
            # Before the PeriodicWriter (the last default hook): it must see storage images
            # before TensorBoard's writer clears them; after EvalHook: it sees the final eval.
            hooks.insert(-1, CvopsHook(run, registered_model_name="vehicles-frcnn"))
            return hooks

Writer (scalars and images only, on PeriodicWriter's schedule)::

        def build_writers(self):
            return [CvopsWriter(run), *super().build_writers()]   # first: sees images before TB

Both read ``EventStorage.latest_with_smoothing_hint()`` like detectron2's JSONWriter and forward
only iterations not sent before (step = the trainer iteration). Both subclass detectron2's
``HookBase``/``EventWriter`` when detectron2 is importable (``register_hooks`` and
``PeriodicWriter`` check that); without detectron2 the hook works with any trainer that has
HookBase's interface (``iter``, ``max_iter``, ``storage``, ``cfg``). Only the main process logs.

As a trial of ``cvops sweep`` the hook reports the sweep's objective (e.g. ``bbox/AP``) whenever
the storage gets it at the current iteration, i.e. after each periodic evaluation of EvalHook
(``TEST.EVAL_PERIOD``), which runs before the hook. A pruned trial's run ends KILLED and the hook
raises :class:`cvops.sweeps.TrialPruned`, a ``SystemExit`` that ends training (after the
hooks' ``after_train``) and the process with status 0 and no traceback.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import mlflow.pyfunc
import numpy as np

from cvops import evaluation, export
from cvops.evaluation import Detections
from cvops.integrations import _pyfunc
from cvops.integrations._common import never_raises, require
from cvops.sweeps.trial import TrialPruned, objective_value, report_intermediate

log = logging.getLogger(__name__)

EXPORT_OUTPUTS = ("boxes", "scores", "classes")

_HAVE_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
if _HAVE_DETECTRON2:
    from detectron2.engine.train_loop import HookBase as _HookBase
    from detectron2.utils.events import EventWriter as _EventWriter
else:

    class _HookBase:  # detectron2.engine.HookBase's interface: every call a trainer makes
        trainer = None

        def before_train(self): ...
        def after_train(self): ...
        def before_step(self): ...
        def after_backward(self): ...
        def after_step(self): ...
        def state_dict(self):
            return {}

    _EventWriter = object


def _is_main_process() -> bool:
    if not _HAVE_DETECTRON2:
        return True
    from detectron2.utils import comm

    return comm.is_main_process()


def _world_size() -> int:
    if not _HAVE_DETECTRON2:
        return 1
    from detectron2.utils import comm

    return comm.get_world_size()


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A yacs ``CfgNode`` (a dict) as ``SOLVER.BASE_LR``-style params. Tuples become lists, so
    ``DATASETS.TRAIN = ("a",)`` and ``SOLVER.STEPS = [30]`` are both logged as JSON, not one of
    them as a Python repr."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def describe_backbone(cfg: Mapping[str, Any]) -> str | None:
    """The backbone as detectron2's model zoo names it (``R-50-FPN``, ``R-101-C4``, ``R-50-DC5``)
    rather than its builder function (``build_resnet_fpn_backbone``), which is the same for every
    ResNet depth; other builders by their name without ``build_``/``_backbone``."""
    model = cfg.get("MODEL", {})
    builder = str(model.get("BACKBONE", {}).get("NAME") or "")
    if not builder:
        return None
    resnets = model.get("RESNETS", {})
    if "resnet" in builder and resnets.get("DEPTH"):
        if "fpn" in builder:
            layout = "FPN"
        else:
            layout = "DC5" if resnets.get("RES5_DILATION", 1) == 2 else "C4"
        return f"R-{resnets['DEPTH']}-{layout}"
    return re.sub(r"^build_|_backbone$", "", builder) or builder


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``trainer.test()`` results ``{"bbox": {"AP": 41.2, "AP-car": nan}}`` as ``bbox/AP``
    metrics, the names EvalHook puts into the storage (0-100 scale; NaN kept)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, f"{name}/"))
        elif isinstance(value, (int, float, np.floating, np.integer)):
            flat[name] = float(value)
    return flat


def _image_array(image: Any) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    return np.asarray(image)


def _artifact_slug(name: str) -> str:
    # visualize_training names images "Left: GT bounding boxes;  Right: Predicted proposals".
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "image"


class StorageForwarder:
    """Forwards what an ``EventStorage`` holds to a Run, once: scalars of iterations not yet
    sent (per name: evaluation scalars arrive at other iterations than losses) and images."""

    def __init__(self, run: Any, window_size: int = 20) -> None:
        self.run = run
        self.window_size = window_size
        self._last_iter: dict[str, int] = {}
        self._images_sent: set[tuple[str, int]] = set()

    def forward(self, storage: Any) -> None:
        by_iter: dict[int, dict[str, float]] = {}
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self.window_size).items():
            if iteration <= self._last_iter.get(name, -1):
                continue
            self._last_iter[name] = iteration
            by_iter.setdefault(int(iteration), {})[name] = float(value)
        for iteration, metrics in sorted(by_iter.items()):
            self.run.log_metrics(metrics, step=iteration)
        self._forward_images(storage)

    def _forward_images(self, storage: Any) -> None:
        latest = -1
        for name, image, iteration in list(getattr(storage, "_vis_data", ())):
            latest = max(latest, iteration)
            if (name, iteration) in self._images_sent:
                continue  # no TensorBoard writer cleared it since the last forward
            self._images_sent.add((name, iteration))
            # put_image takes CHW RGB, floats in [0, 1] or uint8.
            self.run.log_image(evaluation.to_pil_rgb(_image_array(image)), f"images/{_artifact_slug(name)}/iter_{iteration:07d}.png")
        self._images_sent = {key for key in self._images_sent if key[1] >= latest}


class CvopsWriter(_EventWriter):
    """An ``EventWriter`` for ``build_writers``: scalars and images on PeriodicWriter's schedule."""

    def __init__(self, run: Any, window_size: int = 20) -> None:
        self._forwarder = StorageForwarder(run, window_size) if _is_main_process() else None

    @never_raises
    def write(self) -> None:
        if self._forwarder is None:
            return
        events = require("detectron2.utils.events", extra="detectron2")
        self._forwarder.forward(events.get_event_storage())

    def close(self) -> None:
        if self._forwarder is not None:
            self._forwarder.run.flush()


class CvopsHook(_HookBase):
    """A ``HookBase`` for ``DefaultTrainer``: config as params and ``config.yaml``; scalars and
    images every ``period`` iterations and at the end; then the outcome, evaluator JSON files,
    the trained weights as a pyfunc detector registered as ``registered_model_name`` (when
    given; the version is kept in ``registered_version``), the evaluation artifacts of
    ``cvops.evaluation`` and inference latency on ``cfg.DATASETS.TEST[0]`` (at most
    ``evaluation_max_images`` images), and drawn sample predictions.

    Evaluator JSON files are collected from ``OUTPUT_DIR``, ``OUTPUT_DIR/inference`` (where
    detectron2's ``tools/train_net.py`` puts them) and any ``evaluator_output_dirs``.
    ``log_checkpoint=True`` also logs ``model_final.pth`` with its optimizer and scheduler state
    (to resume elsewhere; twice the weights with SGD momentum)."""

    def __init__(
        self,
        run: Any,
        *,
        period: int = 20,
        window_size: int = 20,
        registered_model_name: str | None = None,
        sample_images: Sequence[np.ndarray] = (),
        class_names: Sequence[str] = (),
        evaluator_output_dirs: Sequence[str | Path] = (),
        evaluation_max_images: int = 300,
        log_checkpoint: bool = False,
    ) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.run = run
        self.period = period
        self.registered_model_name = registered_model_name
        self.sample_images = list(sample_images)
        self.class_names = list(class_names)
        self.evaluator_output_dirs = [Path(d) for d in evaluator_output_dirs]
        self.evaluation_max_images = evaluation_max_images
        self.log_checkpoint = log_checkpoint
        self.registered_version = None
        # A disabled run (tracking off) can take metrics but not a registered model: do nothing.
        self._active = _is_main_process() and getattr(run, "enabled", True)
        self._forwarder = StorageForwarder(run, window_size)
        self._pruned = False  # by the sweep this training is a trial of

    @never_raises
    def before_train(self) -> None:
        if not self._active:
            return
        self.run.set_tags({"framework": "detectron2"})
        cfg = getattr(self.trainer, "cfg", None)
        if cfg is not None:
            self.run.log_params(flatten_config(cfg))
            self.run.log_text(_dump_config(cfg), "config.yaml")
            backbone = describe_backbone(cfg)
            if backbone and "backbone" not in self.run.tags:  # CVOPS_TAG_BACKBONE or tags= win
                self.run.set_tags({"backbone": backbone})
        self._warn_if_after_periodic_writer()

    def _warn_if_after_periodic_writer(self) -> None:
        hooks = list(getattr(self.trainer, "_hooks", ()))
        names = [type(hook).__name__ for hook in hooks]
        if self in hooks and "PeriodicWriter" in names[: hooks.index(self)]:
            log.warning(
                "cvops: CvopsHook runs after PeriodicWriter, whose TensorBoard writer clears storage images "
                "first: register it with hooks.insert(-1, hook) in build_hooks to log images"
            )

    def after_step(self) -> None:
        self._forward_on_schedule()
        if self._report_evaluation():
            self._pruned = True
            raise TrialPruned(self.trainer.iter)

    @never_raises
    def _forward_on_schedule(self) -> None:
        iteration = self.trainer.iter
        if self._active and ((iteration + 1) % self.period == 0 or iteration == self.trainer.max_iter - 1):
            self._forwarder.forward(self.trainer.storage)

    @never_raises
    def _report_evaluation(self) -> bool:
        """As a sweep trial: the objective that EvalHook has just put into the storage goes to
        the run (at this iteration) and to the trial; True when the trial is pruned."""
        if not self._active:
            return False
        iteration = self.trainer.iter
        current = {name: value for name, (value, at) in self.trainer.storage.latest().items() if at == iteration}
        if objective_value(current) is None:
            return False
        if _world_size() > 1:
            # The other processes would wait for this one in their next all-reduce forever.
            log.warning("cvops: not reporting to the sweep: pruning stops one process of a multi-process training")
            return False
        self._forwarder.forward(self.trainer.storage)  # the evaluated value, logged before the run ends
        return report_intermediate(self.run, current, iteration)

    @never_raises
    def after_train(self) -> None:
        if not self._active or self._pruned:
            return  # a pruned trial's run has ended: nothing to evaluate or register
        self._forwarder.forward(self.trainer.storage)  # includes EvalHook's final evaluation
        # TrainerBase.train: "self.iter == max_iter can be used by after_train to tell whether
        # the training successfully finished or failed due to exceptions".
        finished = self.trainer.iter >= self.trainer.max_iter
        self.run.set_tags({"training_outcome": "finished" if finished else f"failed at iteration {self.trainer.iter}"})
        if not finished:
            return
        output_dir = self._output_dir()
        if output_dir is not None:
            for path in self._evaluator_files(output_dir):
                self.run.log_artifact(str(path), artifact_path="evaluation")
            checkpoint = output_dir / "model_final.pth"
            if self.log_checkpoint and checkpoint.is_file():
                self.run.log_artifact(str(checkpoint), artifact_path="checkpoint")
            if self.registered_model_name:
                self.registered_version = log_detectron2_model(
                    self.run,
                    self._save_weights(output_dir / "model_weights.pth"),
                    _dump_config(self.trainer.cfg),
                    registered_model_name=self.registered_model_name,
                    class_names=self._trained_classes(),
                )
                if self.run.export_on == "register":
                    self._export(self.registered_version)
        self._log_final_evaluation()
        if self.sample_images:
            self._log_samples()
        self.run.flush()

    def _evaluator_files(self, output_dir: Path) -> list[Path]:
        found: list[Path] = []
        for directory in [output_dir, output_dir / "inference", *self.evaluator_output_dirs]:
            found += [path for path in sorted(directory.glob("*.json")) if path not in found]
        return found

    def _save_weights(self, path: Path) -> Path:
        """The model's weights alone, as DetectionCheckpointer (and so DefaultPredictor) loads
        them; model_final.pth also holds optimizer and scheduler state, which serving never reads."""
        torch = require("torch", extra="detectron2")
        torch.save({"model": _unwrapped(self.trainer.model).state_dict()}, path)
        return path

    def _trained_classes(self) -> list[str]:
        """The names of the classes the model predicts (pred_classes indexes them): the first
        training dataset's ``thing_classes``, as DatasetCatalog's contiguous ids number them."""
        from detectron2.data import MetadataCatalog

        train_sets = list(self.trainer.cfg.get("DATASETS", {}).get("TRAIN", ()))
        return list(MetadataCatalog.get(train_sets[0]).get("thing_classes", [])) if train_sets else []

    @never_raises
    def _log_final_evaluation(self) -> None:
        """cvops.evaluation's artifacts (PR curves, confusion matrix, per-class AP, samples) and
        latency for the trained model on the first test dataset, at the final evaluation's step."""
        if self.evaluation_max_images < 1:
            return
        records, class_names, images = _test_images(self.trainer.cfg, self.evaluation_max_images)
        if not records:
            return
        from detectron2.structures import BoxMode

        ground_truth = []
        for record in records:
            annotations = record.get("annotations", [])
            ground_truth.append(Detections(
                boxes=[BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
                classes=[a["category_id"] for a in annotations],  # contiguous 0.. as DatasetCatalog maps them
            ))
        step = self.trainer.iter  # where EvalHook's final evaluation puts bbox/AP: max_iter
        with self._inference_mode() as predict:
            evaluation.evaluate_detector(
                self.run, lambda batch: [predict(image) for image in batch], images, ground_truth, class_names, step=step
            )

    @never_raises
    def _export(self, version) -> None:
        """CVOPS_EXPORT=register: TorchScript and ONNX of the trained model, checked on the first
        test images (cvops.export)."""
        images = _test_images(self.trainer.cfg, export.CHECK_SAMPLES)[2]
        if not images:
            log.warning("cvops: no test dataset (cfg.DATASETS.TEST) to check the exported model on: not exported")
            return
        results = export_detectron2_model(self.trainer.model, self.trainer.cfg, version, images)
        for result in results.values():
            log.info("cvops: %s", result.summary())

    def log_evaluation(self, results: Mapping[str, Any], step: int | None = None) -> None:
        """For results of ``trainer.test(cfg, model)`` run outside EvalHook."""
        step = self.trainer.iter if step is None else step
        self.run.log_metrics(flatten_results(results), step=step)

    def _output_dir(self) -> Path | None:
        cfg = getattr(self.trainer, "cfg", None)
        output_dir = cfg.get("OUTPUT_DIR") if cfg is not None else None
        return Path(output_dir) if output_dir else None

    def _log_samples(self) -> None:
        with self._inference_mode() as predict:
            for index, image in enumerate(self.sample_images):
                drawn = evaluation.draw_detections(image, predict(image), self.class_names)
                self.run.log_image(drawn, f"samples/{index:02d}.png")

    @contextlib.contextmanager
    def _inference_mode(self) -> Iterator[Callable[[np.ndarray], Detections]]:
        """``predict(rgb_image) -> Detections`` with the model the trainer holds, through
        detectron2's documented model I/O (list of {"image": CHW tensor in cfg.INPUT.FORMAT,
        resized as for testing, "height", "width"} -> "instances" at that height and width);
        the model's training mode is restored afterwards."""
        torch = require("torch", extra="detectron2")
        model = self.trainer.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield lambda image: _instances_to_detections(model([_model_input(image, self.trainer.cfg, torch)])[0])
        finally:
            model.train(was_training)


def _test_images(cfg: Any, limit: int) -> tuple[list[dict], list[str], list[np.ndarray]]:
    """The first ``limit`` records of cfg.DATASETS.TEST[0], its class names and the records'
    images (RGB); nothing without a test dataset."""
    test_sets = list(cfg.get("DATASETS", {}).get("TEST", ()))
    if not test_sets:
        return [], [], []
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image

    records = DatasetCatalog.get(test_sets[0])[:limit]
    class_names = list(MetadataCatalog.get(test_sets[0]).thing_classes)
    return records, class_names, [read_image(record["file_name"], format="RGB") for record in records]


def _unwrapped(model: Any) -> Any:
    # DistributedDataParallel (DefaultTrainer with several GPUs) holds the model as .module.
    return getattr(model, "module", model)


def _model_input(image: np.ndarray, cfg: Any, torch: Any) -> dict[str, Any]:
    """An RGB image as DefaultPredictor feeds the model: channels in cfg.INPUT.FORMAT, resized
    to the test size (ResizeShortestEdge to MIN_SIZE_TEST, at most MAX_SIZE_TEST)."""
    from detectron2.data import transforms

    inputs = cfg.get("INPUT", {})
    pixels = image[:, :, ::-1] if inputs.get("FORMAT", "BGR") == "BGR" else image
    if inputs.get("MIN_SIZE_TEST"):
        resize = transforms.ResizeShortestEdge([inputs["MIN_SIZE_TEST"]] * 2, inputs.get("MAX_SIZE_TEST", 1333))
        pixels = resize.get_transform(pixels).apply_image(np.ascontiguousarray(pixels))
    tensor = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype("float32"))
    return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}


def _instances_to_detections(output: Mapping[str, Any]) -> Detections:
    instances = output["instances"].to("cpu")
    return Detections(
        boxes=instances.pred_boxes.tensor.numpy(),
        classes=instances.pred_classes.numpy(),
        scores=instances.scores.numpy(),
    )


def _dump_config(cfg: Any) -> str:
    if hasattr(cfg, "dump"):
        return cfg.dump()
    import yaml

    return yaml.safe_dump(dict(cfg), sort_keys=False)


class Detectron2Detector(mlflow.pyfunc.PythonModel):
    """The model's weights + ``config.yaml`` served as a pyfunc: RGB images in, boxes in pixels
    (x1, y1, x2, y2), scores and classes out (see cvops.integrations._pyfunc). Preprocessing
    (resize, channel order) and postprocessing (rescale to the input size) are detectron2's
    ``DefaultPredictor``."""

    def load_context(self, context) -> None:
        require("detectron2", extra="detectron2")
        import torch
        from detectron2.config import get_cfg
        from detectron2.engine import DefaultPredictor

        cfg = get_cfg()
        cfg.set_new_allowed(True)
        cfg.merge_from_file(context.artifacts["config"])
        cfg.MODEL.WEIGHTS = context.artifacts["weights"]
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        self._predictor = DefaultPredictor(cfg)

    def predict(self, context, model_input, params=None):
        images = _pyfunc.images_from_model_input(model_input)
        # DefaultPredictor takes BGR (OpenCV order) and converts to cfg.INPUT.FORMAT itself.
        return _pyfunc.detections_frame(
            [_instances_to_detections(self._predictor(image[:, :, ::-1])) for image in images]
        )

    def export(self, version, images, *, client=None):
        """The loaded model's TorchScript and ONNX (cvops.export.export_registered_version)."""
        return export_detectron2_model(self._predictor.model, self._predictor.cfg, version, images, client=client)


def log_detectron2_model(run: Any, weights: str | Path, config_yaml: str, *, registered_model_name: str,
                         class_names: Sequence[str] = ()):
    config_path = Path(weights).with_name("cvops_model_config.yaml")
    config_path.write_text(config_yaml)
    return _pyfunc.log_detector(
        run,
        Detectron2Detector(),
        artifacts={"weights": str(weights), "config": str(config_path)},
        registered_model_name=registered_model_name,
        framework_requirements=[("torch",), ("torchvision",), ("detectron2",),
                                ("opencv-python-headless", "opencv-python")],
        class_names=class_names,
    )


# --------------------------------------------------------------------------- export


def _traced_detections(model: Any, inputs: list[dict]):
    """What is traced: the model on one preprocessed image, detections in that image's pixels
    (detectron2's postprocessing, the rescale to the original size, stays outside the graph)."""
    instances = model.inference(inputs, do_postprocess=False)[0]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def export_detectron2_model(model: Any, cfg: Any, version, images: Sequence[np.ndarray], *, client=None,
                            opset: int = export.DEFAULT_OPSET, tolerance: float = export.DEFAULT_TOLERANCE):
    """TorchScript (``torch.jit.trace`` of detectron2's ``TracingAdapter``) and ONNX (torch's
    TorchScript-based exporter on that trace, height and width dynamic) of a trained ``model``
    registered as ``version``, each checked against the model on ``images`` (RGB, preprocessed as
    ``cfg`` tests) and recorded by :func:`cvops.export.export_version`; {format: ExportResult}."""
    torch = require("torch", extra="detectron2")
    from detectron2.export import TracingAdapter

    model = _unwrapped(model)
    was_training = model.training
    model.eval()
    samples = [_model_input(image, cfg, torch)["image"] for image in images]
    adapter = TracingAdapter(model, [{"image": samples[0]}], _traced_detections)
    traced = []  # traced once, on first use, for both formats

    def trace():
        if not traced:
            traced.append(torch.jit.trace(adapter, (samples[0],)))
        return traced[0]

    def torchscript(directory: Path) -> export.Exported:
        trace().save(str(directory / "model.ts"))
        loaded = torch.jit.load(str(directory / "model.ts"))
        return export.Exported("model.ts", lambda image: dict(zip(EXPORT_OUTPUTS, loaded(image))),
                               {"torch": torch.__version__})

    def onnx(directory: Path) -> export.Exported:
        if importlib.util.find_spec("onnxruntime") is None:
            raise export.ExportUnavailable(f"onnxruntime is not installed: {export.ONNX_EXTRA}")
        # The TorchScript-based exporter (dynamo=False) takes the trace as it is; the torch.export
        # one would re-trace detectron2's Python, which its data-dependent control flow defeats.
        torch.onnx.export(trace(), (samples[0],), str(directory / "model.onnx"), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=list(EXPORT_OUTPUTS),
                          dynamic_axes={"image": {1: "height", 2: "width"}})
        return export.onnx_runtime_model(directory / "model.onnx", {"torch": torch.__version__, "opset": opset})

    try:
        with torch.no_grad():
            return export.export_version(version, adapter, samples, {"torchscript": torchscript, "onnx": onnx},
                                         client=client, tolerance=tolerance)
    finally:
        model.train(was_training)
