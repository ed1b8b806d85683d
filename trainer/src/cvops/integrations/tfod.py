"""TF Object Detection API bridge: run the user's unmodified OD API scripts and mirror what they
write into a cvops Run.

The OD API has no callback to attach to; what it does have is a stable on-disk interface:
``model_dir/train`` and ``model_dir/eval*`` event files, ``ckpt-N`` checkpoints listed in
``model_dir/checkpoint``, ``pipeline.config`` and the exporter's ``saved_model/``. The bridge
starts ``model_main_tf2.py`` (training, plus evaluation as a second process watching the
checkpoints via ``--checkpoint_dir``), follows those files while the processes run, catches up
when they end, and runs ``exporter_main_v2.py`` to log and register the detector.

Two properties of the unmodified ``model_main_tf2.py`` shape the bridge:

- it saves a checkpoint at step 0 and then only when ``--checkpoint_every_n`` steps have passed
  since the last save, checking once per iteration of 100 steps, never at the end of training.
  The bridge picks (or checks the user's) ``--checkpoint_every_n`` so that the final step is saved
  and refuses, before starting anything, a plan that would not save it;
- its evaluator sleeps 300 s between evaluations, so the final checkpoint may still be waiting
  when training ends. The bridge then replaces it with an evaluator that starts on the final
  checkpoint at once, and fails the run if that evaluation does not arrive.

As a trial of ``cvops sweep`` the bridge reports the sweep's objective from each evaluation of a
checkpoint before the final step (e.g. ``eval/DetectionBoxes_Precision/mAP``, at the evaluated
checkpoint's step), as it arrives during training or as training ends; when the trial is pruned
it stops training and evaluation, skips the final evaluation and export, and its run has ended
KILLED. The evaluator's 300 s sleep
between evaluations sets how often that can happen.

Only the ``tensorboard`` package (protos) is needed in the bridge process; TensorFlow, when it
is importable, reads the training step stored in a checkpoint and evaluates the exported model
on the evaluation records (PR curves, confusion matrix, per-class AP, samples, latency).

    with cvops.start_run(tags={"task": "detection"}) as run:
        bridge = TFODBridge(run, pipeline_config_path="pipeline.config", model_dir="out/")
        bridge.train()
        bridge.export("out/exported", registered_model_name="vehicles-frcnn")
"""
from __future__ import annotations

import importlib.util
import logging
import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow.pyfunc

from cvops import evaluation, export
from cvops.evaluation import Detections
from cvops.integrations import _pyfunc
from cvops.integrations._common import never_raises
from cvops.integrations.pipeline_config import (
    PipelineConfigError,
    flatten,
    parse_text_proto,
    read_pipeline_config,
    summarize,
)
from cvops.integrations.tfevents import EventDirectoryTailer, Image, Scalar
from cvops.sweeps.trial import report_intermediate

log = logging.getLogger(__name__)

CHECKPOINT_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"  # model_lib_v2: Checkpoint(step=global_step, ...)
# model_lib_v2.NUM_STEPS_PER_ITERATION: train_loop runs 100 steps per iteration and only checks for
# a save (and the end) between iterations, so --num_train_steps=20 trains 100 steps.
STEPS_PER_ITERATION = 100
DEFAULT_CHECKPOINT_EVERY_N = 1000  # model_main_tf2.py's default, the ceiling of a derived interval
# A derived interval may not save more than twice as often as the default would (at least 50 saves
# allowed): each checkpoint is written, rotated and uploaded to the run.
MIN_ALLOWED_SAVES = 50


class FinalEvaluationError(RuntimeError):
    """Training finished but its final checkpoint was not evaluated."""


@dataclass(frozen=True)
class TrainingPlan:
    """How many steps model_main_tf2.py will train and how often it saves, chosen so that the
    final step is saved; ``extra_args`` are the flags the bridge adds to the user's."""

    num_steps: int
    checkpoint_every_n: int
    extra_args: tuple[str, ...]


def flag_value(args: Sequence[str], name: str) -> str | None:
    """The value absl would give flag ``name`` in ``args`` (``--name=v``, ``--name v``, one dash
    too); the last occurrence wins, as in absl."""
    value = None
    for index, arg in enumerate(args):
        for spelling in (f"--{name}", f"-{name}"):
            if arg == spelling and index + 1 < len(args):
                value = args[index + 1]
            elif arg.startswith(spelling + "="):
                value = arg[len(spelling) + 1:]
    return value


def _int_flag(args: Sequence[str], name: str) -> int | None:
    raw = flag_value(args, name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise PipelineConfigError(f"--{name}={raw}: not an integer") from None


def saves_final_step(num_steps: int, checkpoint_every_n: int) -> bool:
    """Whether model_main_tf2.py saves step ``num_steps`` (a multiple of 100): it saves after an
    iteration once ``checkpoint_every_n`` steps have passed since the last save."""
    iterations_between_saves = max(1, math.ceil(checkpoint_every_n / STEPS_PER_ITERATION))
    return (num_steps // STEPS_PER_ITERATION) % iterations_between_saves == 0


def plan_training(config: dict[str, Any], train_args: Sequence[str]) -> TrainingPlan:
    """The steps (``--num_train_steps``, else ``train_config.num_steps``) and the checkpoint
    interval (the user's ``--checkpoint_every_n``, else the largest one up to 1000 that saves the
    final step); raises PipelineConfigError, naming the numbers, when the final step would not be
    saved or evaluated."""
    num_steps = _int_flag(train_args, "num_train_steps")
    source = "--num_train_steps"
    if num_steps is None:
        num_steps = int(config.get("train_config", {}).get("num_steps", 0) or 0)
        source = "train_config.num_steps"
    if num_steps <= 0:
        raise PipelineConfigError(
            f"{source} is {num_steps}: set train_config.num_steps in pipeline.config or pass --num_train_steps"
        )
    if num_steps % STEPS_PER_ITERATION:
        trained = math.ceil(num_steps / STEPS_PER_ITERATION) * STEPS_PER_ITERATION
        raise PipelineConfigError(
            f"{source}={num_steps}: model_main_tf2.py trains in iterations of {STEPS_PER_ITERATION} steps, so it "
            f"would stop at step {trained}, and its evaluator waits for step {num_steps}, which never comes; "
            f"use a multiple of {STEPS_PER_ITERATION} (e.g. --num_train_steps={trained})"
        )
    iterations = num_steps // STEPS_PER_ITERATION
    given = _int_flag(train_args, "checkpoint_every_n")
    if given is not None:
        if not saves_final_step(num_steps, given):
            raise PipelineConfigError(
                f"--checkpoint_every_n={given} with {num_steps} training steps ({source}): model_main_tf2.py "
                f"would never save step {num_steps} (it checks every {STEPS_PER_ITERATION} steps and saves once "
                f"{given} steps have passed since the last save), so export and the last evaluation would use an "
                f"older checkpoint; pass a multiple of {STEPS_PER_ITERATION} that divides {num_steps}, or leave "
                f"--checkpoint_every_n out and cvops picks one"
            )
        return TrainingPlan(num_steps, given, ())
    per_save = max(n for n in range(1, DEFAULT_CHECKPOINT_EVERY_N // STEPS_PER_ITERATION + 1) if iterations % n == 0)
    every_n = per_save * STEPS_PER_ITERATION
    saves = iterations // per_save
    allowed = max(MIN_ALLOWED_SAVES, 2 * math.ceil(num_steps / DEFAULT_CHECKPOINT_EVERY_N))
    if saves > allowed:
        raise PipelineConfigError(
            f"{source}={num_steps}: the largest checkpoint interval up to {DEFAULT_CHECKPOINT_EVERY_N} that saves "
            f"the final step is {every_n}, i.e. {saves} checkpoints (more than {allowed}); pass "
            f"--checkpoint_every_n={every_n} (or ={num_steps}: only step 0 and the end) to accept that, "
            f"or choose num_steps with a divisor near {DEFAULT_CHECKPOINT_EVERY_N}"
        )
    return TrainingPlan(num_steps, every_n, (f"--checkpoint_every_n={every_n}",))


def source_prefix(source: str) -> str:
    """Training summaries keep the OD API's tag; evaluation ones are prefixed with their event
    directory (``eval/…``) because the evaluator also writes ``Loss/*`` tags."""
    return "" if source in ("train", ".", "") else f"{source}/"


def metric_name(source: str, tag: str) -> str:
    """The name as the OD API wrote it; the Run sanitises it and keeps the mapping
    (``cvops/name_mapping.json``) back to this original."""
    return source_prefix(source) + tag


class ModelDirMirror:
    """Mirrors one OD API ``model_dir`` into a Run; call :meth:`poll` as often as wanted: each
    call logs only what appeared since the previous one."""

    def __init__(self, run: Any, model_dir: str | Path, *, log_checkpoints: bool = True) -> None:
        self.run = run
        self.model_dir = Path(model_dir)
        self.log_checkpoints = log_checkpoints
        self._events = EventDirectoryTailer(self.model_dir)
        self._logged_checkpoints: set[str] = set()
        self._images_dir = Path(tempfile.mkdtemp(prefix="cvops-tfod-images-"))
        self.evaluated_step: int | None = None  # highest step of any evaluation scalar seen
        self._new_evaluations: dict[int, dict[str, float]] = {}

    @never_raises
    def poll(self) -> None:
        scalars, images = self._events.poll()
        self._log_scalars(scalars)
        for image in images:
            self._log_image(image)
        if self.log_checkpoints:
            self._log_new_checkpoints()

    def take_evaluations(self) -> dict[int, dict[str, float]]:
        """Evaluation scalars seen since the last call, by step (an evaluation read half-written
        comes in two parts)."""
        taken, self._new_evaluations = self._new_evaluations, {}
        return taken

    def _log_scalars(self, scalars: Sequence[Scalar]) -> None:
        by_step: dict[tuple[int, float], dict[str, float]] = {}
        for scalar in scalars:
            name = metric_name(scalar.source, scalar.tag)
            if source_prefix(scalar.source):
                if self.evaluated_step is None or scalar.step > self.evaluated_step:
                    self.evaluated_step = scalar.step
                self._new_evaluations.setdefault(scalar.step, {})[name] = scalar.value
            by_step.setdefault((scalar.step, scalar.wall_time), {})[name] = scalar.value
        for (step, wall_time), metrics in sorted(by_step.items()):
            self.run.log_metrics(metrics, step=step, timestamp_ms=int(wall_time * 1000))

    def _log_image(self, image: Image) -> None:
        extension = "jpg" if image.encoded[:3] == b"\xff\xd8\xff" else "png"
        directory = self._images_dir / image.source / image.tag
        directory.mkdir(parents=True, exist_ok=True)
        local = directory / f"step_{image.step:08d}_{image.index}.{extension}"
        local.write_bytes(image.encoded)
        # The Run snapshots the file in the background: it stays until close().
        self.run.log_artifact(str(local), artifact_path=f"images/{source_prefix(image.source)}{image.tag}")

    def close(self) -> None:
        self.run.flush()
        shutil.rmtree(self._images_dir, ignore_errors=True)

    def _log_new_checkpoints(self) -> None:
        state_file = self.model_dir / "checkpoint"
        if not state_file.is_file():
            return
        try:
            # CheckpointManager rewrites this small text proto after each save completes, so a
            # listed ckpt-N has all its files on disk.
            state = parse_text_proto(state_file.read_text())
        except Exception as error:  # caught mid-rewrite: the next poll reads it again
            log.debug("cvops: checkpoint state not readable yet (%s)", error)
            return
        listed = state.get("all_model_checkpoint_paths", state.get("model_checkpoint_path", []))
        for name in [listed] if isinstance(listed, str) else listed:
            name = Path(name).name
            if name in self._logged_checkpoints:
                continue
            files = sorted(self.model_dir.glob(f"{name}.*"))
            if not files:
                continue  # already rotated away by max_to_keep before we saw it
            self._logged_checkpoints.add(name)
            for path in files:
                self.run.log_artifact(str(path), artifact_path=f"checkpoints/{name}")
            step = checkpoint_step(self.model_dir / name)
            number = int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else None
            if step is not None and number is not None:
                self.run.log_metrics({"checkpoint/number": number}, step=step)


def checkpoint_step(prefix: Path) -> int | None:
    """The global step saved in an OD API checkpoint (``ckpt-N`` numbers saves, not steps);
    None when TensorFlow is not importable here or the checkpoint has no step."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    import tensorflow as tf

    try:
        return int(tf.train.load_checkpoint(str(prefix)).get_tensor(CHECKPOINT_STEP_KEY))
    except Exception as error:
        log.debug("cvops: no step in checkpoint %s (%s)", prefix, error)
        return None


def log_pipeline_config(run: Any, pipeline_config_path: str | Path) -> dict[str, Any]:
    """Params from pipeline.config (summary names plus every leaf) and the file as artifact."""
    config = read_pipeline_config(pipeline_config_path)
    summary = summarize(config)
    run.log_params({**flatten(config), **summary})
    run.log_config_file(str(pipeline_config_path))
    run.set_tags({"framework": "tfod", "task": "detection"})
    if "feature_extractor" in summary:
        run.set_tags({"backbone": str(summary["feature_extractor"])})
    return config


class TFODBridge:
    """Runs OD API scripts as subprocesses and mirrors their outputs into ``run``.

    ``model_main`` and ``exporter`` are the paths of the user's ``model_main_tf2.py`` and
    ``exporter_main_v2.py`` (by default looked up inside the installed ``object_detection``
    package). ``python`` is the interpreter that has the OD API (e.g. TF 2.15.1). ``train_args``
    are model_main_tf2.py flags, given to the trainer and the evaluator alike (as a user runs the
    one binary twice). Constructing the bridge checks the training plan (:func:`plan_training`)
    and raises PipelineConfigError before anything starts."""

    def __init__(
        self,
        run: Any,
        *,
        pipeline_config_path: str | Path,
        model_dir: str | Path,
        model_main: str | Path | None = None,
        exporter: str | Path | None = None,
        python: str = sys.executable,
        run_eval: bool = True,
        eval_timeout_s: int = 300,
        poll_interval_s: float = 10.0,
        log_checkpoints: bool = True,
        train_args: Sequence[str] = (),
    ) -> None:
        self.run = run
        self.pipeline_config_path = Path(pipeline_config_path)
        self.model_dir = Path(model_dir)
        self.model_main = str(model_main or _od_api_script("model_main_tf2.py"))
        self.exporter = exporter
        self.python = python
        self.run_eval = run_eval
        self.eval_timeout_s = eval_timeout_s
        self.poll_interval_s = poll_interval_s
        self.train_args = list(train_args)
        self.plan = plan_training(read_pipeline_config(self.pipeline_config_path), self.train_args)
        self.mirror = ModelDirMirror(run, self.model_dir, log_checkpoints=log_checkpoints)
        self.registered_version = None  # set by export(registered_model_name=...)
        self.pruned = False  # by the sweep this training is a trial of: train() stopped it

    def _model_main_command(self, *extra: str) -> list[str]:
        return [
            self.python,
            self.model_main,
            f"--model_dir={self.model_dir}",
            f"--pipeline_config_path={self.pipeline_config_path}",
            *self.train_args,
            *extra,
        ]

    def _evaluator_command(self) -> list[str]:
        return self._model_main_command(f"--checkpoint_dir={self.model_dir}", f"--eval_timeout={self.eval_timeout_s}")

    def train(self) -> None:
        """Train (and evaluate alongside), mirroring as it goes; raises CalledProcessError if
        training fails, after everything written so far has been logged, and
        FinalEvaluationError if the final checkpoint could not be evaluated. A sweep trial that
        is pruned returns early with ``pruned`` set: its processes are stopped."""
        log_pipeline_config(self.run, self.pipeline_config_path)
        self.run.log_params({"num_train_steps": self.plan.num_steps, "checkpoint_every_n": self.plan.checkpoint_every_n})
        self.model_dir.mkdir(parents=True, exist_ok=True)
        processes = [subprocess.Popen(self._model_main_command(*self.plan.extra_args))]
        trainer = processes[0]
        try:
            if self.run_eval:
                processes.append(subprocess.Popen(self._evaluator_command()))
            self._follow(trainer, until=self._pruned_by_sweep)
            # An evaluation mirrored as training ended is an intermediate result all the same.
            if trainer.returncode == 0 and not self._pruned_by_sweep() and self.run_eval:
                self._evaluate_final_step(processes)
        finally:
            for process in processes:
                _stop(process)
            self.mirror.poll()  # catch up with whatever was written last
            self.mirror.close()
        if trainer.returncode != 0 and not self.pruned:
            raise subprocess.CalledProcessError(trainer.returncode, trainer.args)

    def _pruned_by_sweep(self) -> bool:
        """As a sweep trial: each new evaluation before the final step goes to the trial at its
        step; True (and ``pruned``) once the trial is pruned, which ends its run KILLED. The
        final step's evaluation is the trial's value, not an intermediate one."""
        for step, metrics in sorted(self.mirror.take_evaluations().items()):
            if step < self.plan.num_steps and report_intermediate(self.run, metrics, step):
                self.pruned = True
                break
        return self.pruned

    def _evaluate_final_step(self, processes: list[subprocess.Popen]) -> None:
        """Make sure the final checkpoint is evaluated. The continuous evaluator sleeps 300 s after
        each evaluation (model_lib_v2.eval_continuously), so when training ends it is usually
        asleep: stop it and start one that evaluates the latest checkpoint at once and exits
        (it returns after evaluating step == num_steps). An evaluation of an older checkpoint in
        progress at that moment is dropped."""
        final = self.plan.num_steps
        self.mirror.poll()
        if self._evaluated(final):
            return
        _stop(processes[-1])
        self.mirror.poll()
        if self._evaluated(final):
            return
        evaluator = subprocess.Popen(self._evaluator_command())
        processes.append(evaluator)
        self._follow(evaluator, until=lambda: self._evaluated(final))
        if not self._evaluated(final):
            _stop(evaluator)
            raise FinalEvaluationError(
                f"the final checkpoint (step {final}) was not evaluated: the evaluator "
                f"{'exited with code ' + str(evaluator.returncode) if evaluator.returncode is not None else 'was stopped'} "
                f"and wrote no evaluation metrics at step {final} "
                f"(last evaluated step: {self.mirror.evaluated_step}); see its output above"
            )

    def _evaluated(self, step: int) -> bool:
        return self.mirror.evaluated_step is not None and self.mirror.evaluated_step >= step

    def _follow(self, process: subprocess.Popen, until=lambda: False) -> None:
        """Mirror while ``process`` runs, until it exits or ``until()`` holds."""
        while True:
            try:
                process.wait(timeout=self.poll_interval_s)
                return
            except subprocess.TimeoutExpired:
                pass
            finally:
                self.mirror.poll()
            if until():
                return

    def export(
        self,
        output_directory: str | Path,
        *,
        registered_model_name: str | None = None,
        input_type: str = "image_tensor",
    ) -> Path:
        """Run ``exporter_main_v2.py`` on the latest checkpoint (the final step's, see
        :func:`plan_training`); with ``registered_model_name``, log ``saved_model/`` as an MLflow
        pyfunc detector, register it (``self.registered_version``, alias ``candidate``). Then
        evaluate the exported model on pipeline.config's evaluation records at the final step."""
        output_directory = Path(output_directory)
        subprocess.run(
            [
                self.python,
                str(self.exporter or _od_api_script("exporter_main_v2.py")),
                f"--input_type={input_type}",
                f"--pipeline_config_path={self.pipeline_config_path}",
                f"--trained_checkpoint_dir={self.model_dir}",
                f"--output_directory={output_directory}",
            ],
            check=True,
        )
        saved_model = output_directory / "saved_model"
        if not (saved_model / "saved_model.pb").is_file():
            raise FileNotFoundError(f"exporter finished but wrote no {saved_model}/saved_model.pb")
        if registered_model_name:
            self.registered_version = log_saved_model_detector(
                self.run, saved_model, registered_model_name=registered_model_name,
                class_names=label_map_of(read_pipeline_config(self.pipeline_config_path)),
            )
            if self.run.export_on == "register":
                export_registered_saved_model(saved_model, self.registered_version, self.pipeline_config_path)
        log_exported_model_evaluation(self.run, saved_model, self.pipeline_config_path, step=self.plan.num_steps)
        return saved_model


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait()


def _od_api_script(name: str) -> Path:
    spec = importlib.util.find_spec("object_detection")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name}: the TF Object Detection API (package 'object_detection') is not importable here; "
            f"pass the script's path (model_main= / exporter=; on the command line --model_main / --exporter)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / name


class ExportedDetector:
    """Runs an OD API exported SavedModel on one RGB image: boxes in pixels (x1, y1, x2, y2),
    scores and label-map class ids."""

    def __init__(self, saved_model: str | Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
        self._input_name = next(iter(self._signature.structured_input_signature[1]))

    def __call__(self, image) -> Detections:
        outputs = self._signature(**{self._input_name: self._tf.constant(image[None])})
        height, width = image.shape[:2]
        count = int(outputs["num_detections"][0])
        # OD API boxes are normalised (ymin, xmin, ymax, xmax).
        boxes = outputs["detection_boxes"][0][:count].numpy()[:, [1, 0, 3, 2]] * [width, height, width, height]
        return Detections(
            boxes=boxes,
            classes=outputs["detection_classes"][0][:count].numpy().astype(int),
            scores=outputs["detection_scores"][0][:count].numpy(),
        )


class SavedModelDetector(mlflow.pyfunc.PythonModel):
    """An OD API exported SavedModel served as a pyfunc: RGB images in, boxes in pixels
    (x1, y1, x2, y2), scores and label-map class ids out (see cvops.integrations._pyfunc)."""

    def load_context(self, context) -> None:
        self._saved_model = context.artifacts["saved_model"]
        self._detect = ExportedDetector(self._saved_model)

    def predict(self, context, model_input, params=None):
        return _pyfunc.detections_frame([self._detect(image) for image in _pyfunc.images_from_model_input(model_input)])

    def export(self, version, images, *, client=None):
        """The loaded SavedModel's ONNX (cvops.export.export_registered_version)."""
        return {"onnx": export_saved_model_detector(self._saved_model, version, images, client=client)}


def log_saved_model_detector(run: Any, saved_model: str | Path, *, registered_model_name: str,
                             class_names: Mapping[int, str] | None = None):
    """``class_names``: label-map id -> name, the ids the detector answers (:func:`label_map_of`)."""
    return _pyfunc.log_detector(
        run,
        SavedModelDetector(),
        artifacts={"saved_model": str(saved_model)},
        registered_model_name=registered_model_name,
        framework_requirements=[_pyfunc.TENSORFLOW],
        class_names=class_names,
    )


def label_map_of(config: dict[str, Any]) -> dict[int, str]:
    """pipeline.config's label map (train_input_reader's, else the first eval_input_reader's); {}
    when neither names one."""
    for key in ("train_input_reader", "eval_input_reader"):
        reader = config.get(key)
        reader = reader[0] if isinstance(reader, list) else reader
        if reader and reader.get("label_map_path"):
            return read_label_map(reader["label_map_path"])
    return {}


def read_label_map(path: str | Path) -> dict[int, str]:
    """Label-map id -> display name (else name), in id order."""
    items = parse_text_proto(Path(path).read_text()).get("item", [])
    items = items if isinstance(items, list) else [items]
    return {int(item["id"]): str(item.get("display_name", item.get("name", item["id"]))) for item in sorted(items, key=lambda i: int(i["id"]))}


def read_eval_records(config: dict[str, Any]):
    """The images and ground truth of pipeline.config's (first) ``eval_input_reader``: RGB arrays,
    Detections with pixel boxes and label-map ids, and the label map."""
    import numpy as np
    import tensorflow as tf

    reader = config.get("eval_input_reader")
    reader = reader[0] if isinstance(reader, list) else reader
    if not reader or "tf_record_input_reader" not in reader or "label_map_path" not in reader:
        raise PipelineConfigError("eval_input_reader: needs label_map_path and tf_record_input_reader.input_path")
    patterns = reader["tf_record_input_reader"]["input_path"]
    paths = [path for pattern in ([patterns] if isinstance(patterns, str) else patterns) for path in tf.io.gfile.glob(pattern)]
    if not paths:
        raise FileNotFoundError(f"eval_input_reader: no records match {patterns}")
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        **{f"image/object/bbox/{key}": tf.io.VarLenFeature(tf.float32) for key in ("xmin", "ymin", "xmax", "ymax")},
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    }
    images, truth = [], []
    for record in tf.data.TFRecordDataset(paths):
        example = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(example["image/encoded"], channels=3, expand_animations=False).numpy()
        height, width = image.shape[:2]
        corners = [tf.sparse.to_dense(example[f"image/object/bbox/{key}"]).numpy() for key in ("xmin", "ymin", "xmax", "ymax")]
        boxes = np.stack(corners, axis=-1) * [width, height, width, height]
        images.append(image)
        truth.append(Detections(boxes=boxes, classes=tf.sparse.to_dense(example["image/object/class/label"]).numpy()))
    return images, truth, read_label_map(reader["label_map_path"])


@never_raises
def log_exported_model_evaluation(run: Any, saved_model: str | Path, pipeline_config_path: str | Path, *, step: int) -> None:
    """Run the exported model on the evaluation records and log cvops' detection evaluation
    (eval/mAP, PR curves, confusion matrix, per-class AP, samples) and inference latency at
    ``step``; needs TensorFlow in this process, else says what is skipped."""
    if importlib.util.find_spec("tensorflow") is None:
        log.warning(
            "cvops: TensorFlow is not importable in this process: the exported model is not evaluated "
            "(no PR curves, confusion matrix, per-class AP, sample images or latency in the run)"
        )
        return
    images, truth, label_map = read_eval_records(read_pipeline_config(pipeline_config_path))
    index_of = {label_id: index for index, label_id in enumerate(label_map)}

    def by_index(found: Detections) -> Detections:
        # Class ids outside the label map cannot be scored against it: they are dropped.
        known = [i for i, label_id in enumerate(found.classes) if label_id in index_of]
        return Detections(
            boxes=found.boxes[known],
            classes=[index_of[label_id] for label_id in found.classes[known]],
            scores=None if found.scores is None else found.scores[known],
        )

    detect = ExportedDetector(saved_model)
    evaluation.evaluate_detector(
        run, lambda batch: [by_index(detect(image)) for image in batch], images, [by_index(t) for t in truth],
        list(label_map.values()), step=step,
    )


# --------------------------------------------------------------------------- export


def export_saved_model_detector(saved_model: str | Path, version, images, *, client=None,
                                opset: int = export.DEFAULT_OPSET, tolerance: float = export.DEFAULT_TOLERANCE):
    """ONNX (tf2onnx from the exported SavedModel's ``serving_default``, extra ``onnx``) of a
    SavedModel registered as ``version``, every output of the signature checked against the
    SavedModel's on ``images`` (RGB uint8, one per call as ``input_type=image_tensor`` takes
    them) and recorded by :func:`cvops.export.export_version`; the ExportResult."""
    import numpy as np
    import tensorflow as tf

    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    input_name = next(iter(signature.structured_input_signature[1]))
    samples = [np.asarray(image, dtype=np.uint8)[None] for image in images]

    def onnx(directory: Path) -> export.Exported:
        if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnxruntime") is None:
            raise export.ExportUnavailable(f"tf2onnx and onnxruntime are needed: {export.ONNX_EXTRA}")
        import tf2onnx

        onnx_file = directory / "model.onnx"
        # tf2onnx's command line is its documented entry for a SavedModel (its Python API takes
        # functions and graphs); a separate process also keeps its graph rewrites out of this one.
        converted = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
                                    "--output", str(onnx_file), "--opset", str(opset)],
                                   capture_output=True, text=True)
        if converted.returncode != 0:
            raise RuntimeError(f"tf2onnx exited with {converted.returncode}: {converted.stderr[-400:]}")
        return export.onnx_runtime_model(onnx_file, {"opset": opset, "tf2onnx": tf2onnx.__version__,
                                                     "tensorflow": tf.__version__})

    return export.export_version(version, lambda image: signature(**{input_name: tf.constant(image)}), samples,
                                 {"onnx": onnx}, client=client, tolerance=tolerance)["onnx"]


@never_raises
def export_registered_saved_model(saved_model: str | Path, version, pipeline_config_path: str | Path) -> None:
    """CVOPS_EXPORT=register: the exported model to ONNX, checked on pipeline.config's first
    evaluation images; needs TensorFlow in this process."""
    if importlib.util.find_spec("tensorflow") is None:
        log.warning("cvops: TensorFlow is not importable in this process: the registered model is not exported")
        return
    images = read_eval_records(read_pipeline_config(pipeline_config_path))[0][:export.CHECK_SAMPLES]
    log.info("cvops: %s", export_saved_model_detector(saved_model, version, images).summary())
