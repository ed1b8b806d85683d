"""TF Object Detection API bridge: run the user's unmodified OD API scripts and mirror what they
write into a cvops Run.

The OD API has no callback to attach to; what it does have is a stable on-disk interface:
``model_dir/train`` and ``model_dir/eval*`` event files, ``ckpt-N`` checkpoints listed in
``model_dir/checkpoint``, ``pipeline.config`` and the exporter's ``saved_model/``. The bridge
starts ``model_main_tf2.py`` (training, plus evaluation as a second process watching the
checkpoints via ``--checkpoint_dir``), follows those files while the processes run, catches up
when they end, and runs ``exporter_main_v2.py`` to log and register the detector.

Only the ``tensorboard`` package (protos) is needed in the bridge process; TensorFlow, when it
is importable, is used for one thing: reading the training step stored in a checkpoint.

    with cvops.start_run(tags={"task": "detection"}) as run:
        bridge = TFODBridge(run, pipeline_config_path="pipeline.config", model_dir="out/")
        bridge.train()
        bridge.export("out/exported", registered_model_name="vehicles-frcnn")
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc

from cvops.evaluation import Detections
from cvops.integrations import _pyfunc
from cvops.integrations._common import never_raises
from cvops.integrations.pipeline_config import flatten, parse_text_proto, read_pipeline_config, summarize
from cvops.integrations.tfevents import EventDirectoryTailer, Image, Scalar

log = logging.getLogger(__name__)

CHECKPOINT_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"  # model_lib_v2: Checkpoint(step=global_step, ...)


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

    @never_raises
    def poll(self) -> None:
        scalars, images = self._events.poll()
        self._log_scalars(scalars)
        for image in images:
            self._log_image(image)
        if self.log_checkpoints:
            self._log_new_checkpoints()

    def _log_scalars(self, scalars: Sequence[Scalar]) -> None:
        by_step: dict[tuple[int, float], dict[str, float]] = {}
        for scalar in scalars:
            by_step.setdefault((scalar.step, scalar.wall_time), {})[metric_name(scalar.source, scalar.tag)] = scalar.value
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
    package). ``python`` is the interpreter that has the OD API (e.g. TF 2.15.1)."""

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
        self.mirror = ModelDirMirror(run, self.model_dir, log_checkpoints=log_checkpoints)
        read_pipeline_config(self.pipeline_config_path)  # fail before starting anything

    def _model_main_command(self, *extra: str) -> list[str]:
        return [
            self.python,
            self.model_main,
            f"--model_dir={self.model_dir}",
            f"--pipeline_config_path={self.pipeline_config_path}",
            *extra,
        ]

    def train(self) -> None:
        """Train (and evaluate alongside), mirroring as it goes; raises CalledProcessError if
        training fails, after everything written so far has been logged."""
        log_pipeline_config(self.run, self.pipeline_config_path)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        trainer = subprocess.Popen(self._model_main_command(*self.train_args))
        evaluator = None
        try:
            if self.run_eval:
                evaluator = subprocess.Popen(
                    self._model_main_command(
                        f"--checkpoint_dir={self.model_dir}", f"--eval_timeout={self.eval_timeout_s}"
                    )
                )
            self._follow(trainer, deadline=None)
            if evaluator is not None and trainer.returncode == 0:
                # The evaluator exits on its own eval_timeout_s after the last checkpoint it saw.
                self._follow(evaluator, deadline=time.monotonic() + self.eval_timeout_s + 60)
        finally:
            for process in (trainer, evaluator):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait()
            self.mirror.poll()  # catch up with whatever was written last
            self.mirror.close()
        if trainer.returncode != 0:
            raise subprocess.CalledProcessError(trainer.returncode, trainer.args)

    def _follow(self, process: subprocess.Popen, deadline: float | None) -> None:
        while True:
            try:
                process.wait(timeout=self.poll_interval_s)
                return
            except subprocess.TimeoutExpired:
                pass
            finally:
                self.mirror.poll()
            if deadline is not None and time.monotonic() > deadline:
                return

    def export(
        self,
        output_directory: str | Path,
        *,
        registered_model_name: str | None = None,
        input_type: str = "image_tensor",
    ) -> Path:
        """Run ``exporter_main_v2.py`` on the latest checkpoint; with ``registered_model_name``,
        log ``saved_model/`` as an MLflow pyfunc detector and register it."""
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
            log_saved_model_detector(self.run, saved_model, registered_model_name=registered_model_name)
        return saved_model


def _od_api_script(name: str) -> Path:
    spec = importlib.util.find_spec("object_detection")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name}: the TF Object Detection API (package 'object_detection') is not importable here; "
            f"pass the script's path (model_main= / exporter=; on the command line --model_main / --exporter)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / name


class SavedModelDetector(mlflow.pyfunc.PythonModel):
    """An OD API exported SavedModel served as a pyfunc: RGB images in, boxes in pixels
    (x1, y1, x2, y2), scores and label-map class ids out (see cvops.integrations._pyfunc)."""

    def load_context(self, context) -> None:
        import tensorflow as tf

        self._tf = tf
        signature = tf.saved_model.load(context.artifacts["saved_model"]).signatures["serving_default"]
        self._detect = signature
        self._input_name = next(iter(signature.structured_input_signature[1]))

    def predict(self, context, model_input, params=None):
        detections = []
        for image in _pyfunc.images_from_model_input(model_input):
            outputs = self._detect(**{self._input_name: self._tf.constant(image[None])})
            height, width = image.shape[:2]
            count = int(outputs["num_detections"][0])
            # OD API boxes are normalised (ymin, xmin, ymax, xmax).
            boxes = outputs["detection_boxes"][0][:count].numpy()[:, [1, 0, 3, 2]] * [width, height, width, height]
            detections.append(
                Detections(
                    boxes=boxes,
                    classes=outputs["detection_classes"][0][:count].numpy().astype(int),
                    scores=outputs["detection_scores"][0][:count].numpy(),
                )
            )
        return _pyfunc.detections_frame(detections)


def log_saved_model_detector(run: Any, saved_model: str | Path, *, registered_model_name: str):
    return _pyfunc.log_detector(
        run,
        SavedModelDetector(),
        artifacts={"saved_model": str(saved_model)},
        registered_model_name=registered_model_name,
        framework_requirements=[_pyfunc.TENSORFLOW],
    )
