"""Runs: start or resume, log without blocking, end with the right status whatever happens.

A :class:`Run` turns every ``log_*`` call into a record for the process-wide
:class:`~cvops.tracking.worker.Worker` and returns at once. It ends FINISHED when its ``with``
block (or the script) completes, FAILED when an exception leaves the block, KILLED on SIGTERM.
When tracking is off or unconfigured, :func:`start_run` returns a :class:`DisabledRun` with the
same methods doing nothing, after saying once why.
"""
from __future__ import annotations

import atexit
import errno
import json
import logging
import math
import operator
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from cvops.config import Settings, load_settings
from cvops.tracking import lineage, schema
from cvops.tracking.names import NameRegistry
from cvops.tracking.replay import PARAM_CONFLICT_TAG_PREFIX, RUN_NAME_TAG
from cvops.tracking.transport import Transient, TransportError
from cvops.tracking.worker import Worker
from cvops.ui_links import run_ui_url

log = logging.getLogger("cvops")

NAME_MAPPING_ARTIFACT = "cvops/name_mapping.json"
LONG_PARAMS_DIR = "cvops/params"
NONFINITE_COUNT_TAG = "cvops.nonfinite_metric_points"
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"


def _now_ms() -> int:
    return int(time.time() * 1000)


_INT64 = range(-2**63, 2**63)


def whole_number(field: str, value: Any) -> int:
    """A metric point's step or timestamp as MLflow stores it, a 64-bit integer: ints and the
    frameworks' integer scalars, or floats with nothing after the point. Anything else is a
    ValueError naming the field, at the call: ``int()`` cut 3.7 to 3 without a word, and a value
    beyond 64 bits was refused by the server later, taking the call's other metrics with it."""
    number = None
    if not isinstance(value, (str, bytes)):
        try:
            number = operator.index(value)
        except TypeError:
            try:
                as_float = float(value)
            except (TypeError, ValueError, OverflowError):
                as_float = math.nan
            if as_float.is_integer() and int(as_float) == value:  # a Decimal float() rounded is not taken
                number = int(as_float)
    if number is None or number not in _INT64:
        raise ValueError(f"cvops: a metric's {field} must be a whole number from -2**63 to 2**63-1; "
                         f"got {value!r} ({type(value).__name__})")
    return number


# --------------------------------------------------------------------------- process-wide state


class _Session:
    """The worker and the runs still open in this process; ends them at exit or on SIGTERM."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.worker = Worker(settings)
        self.open_runs: list[Run] = []
        self.lock = threading.RLock()
        self._previous_sigterm = None
        self._install_exit_handlers()

    def _install_exit_handlers(self) -> None:
        atexit.register(self.shutdown, FINISHED)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            self._previous_sigterm = None

    def _on_sigterm(self, signum, frame) -> None:
        for run in list(self.open_runs):
            run.end(KILLED, flush=False)
        previous = self._previous_sigterm
        if callable(previous):
            # The framework (or user) has its own graceful shutdown: let it run; our runs are
            # already marked KILLED and later logging still reaches them.
            self.worker.flush(self.settings.exit_flush_timeout_s)
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        self.shutdown(KILLED)
        # Die of SIGTERM as the process would have without us (exit status 128+15 for the caller).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def shutdown(self, status: str) -> None:
        global _session
        with self.lock:
            for run in reversed(list(self.open_runs)):
                run.end(status, flush=False)
            if _session is self:
                _session = None
            self.worker.close(self.settings.exit_flush_timeout_s)
        atexit.unregister(self.shutdown)
        self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is None or threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        except (ValueError, OSError):
            pass
        self._previous_sigterm = None


_session: _Session | None = None
_session_lock = threading.Lock()
_warned_disabled = False


def _get_session(settings: Settings) -> _Session:
    global _session
    with _session_lock:
        if _session is None or _session.settings != settings:
            if _session is not None:
                _session.shutdown(FINISHED)
            _session = _Session(settings)
        return _session


# --------------------------------------------------------------------------- runs


class DisabledRun:
    """What :func:`start_run` returns when tracking is off: same surface, does nothing."""

    enabled = False
    run_id = None
    experiment_id = None
    ui_url = None
    tracking_uri = None
    status = None
    export_on = "off"

    @property
    def tags(self) -> dict[str, str]:
        return {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> DisabledRun:
        return self

    def flush(self, timeout_s: float = 30) -> bool:
        return True

    def end(self, status: str = FINISHED, flush: bool = True) -> None:
        return None

    def _ignore(self, *args, **kwargs) -> None:
        return None

    log_metric = log_metrics = log_param = log_params = set_tag = set_tags = _ignore
    log_artifact = log_artifacts = log_text = log_dict = log_figure = log_image = _ignore
    log_dataset = log_config_file = leave_open = _ignore


class Run:
    enabled = True

    def __init__(self, session: _Session, key: str, experiment_id: str | None, existing_params: dict[str, str],
                 parent: Run | None = None, experiment_name: str | None = None,
                 tags: Mapping[str, str] | None = None):
        self._session = session
        self._worker = session.worker
        self._key = key
        self._experiment_id = experiment_id
        self._experiment_name = experiment_name  # lets children of an offline run find its experiment
        self._parent = parent
        self._names = parent._names if parent else NameRegistry()
        self._params: dict[str, str] = dict(existing_params)
        self._tags: dict[str, str] = dict(tags or {})
        self._nonfinite_points = 0
        self._status: str | None = None
        self._lock = threading.RLock()  # reentrant: the SIGTERM handler may run on a thread holding it
        with session.lock:
            session.open_runs.append(self)

    # ----------------------------------------------------------------- identity
    @property
    def run_id(self) -> str | None:
        """The server's run id; None while a run started offline has not reached the server."""
        return self._worker.replayer.run_id(self._key)

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def ui_url(self) -> str | None:
        run_id = self.run_id
        if not run_id or not self._experiment_id:
            return None
        return run_ui_url(self._session.settings.tracking_uri, self._experiment_id, run_id)

    @property
    def tracking_uri(self) -> str:
        return self._session.settings.tracking_uri

    @property
    def export_on(self) -> str:
        """``CVOPS_EXPORT``: whether the adapters export what they register (cvops.export)."""
        return self._session.settings.export_on

    @property
    def tags(self) -> dict[str, str]:
        """The tags this process gave the run (``start_run(tags=...)``, ``CVOPS_TAG_*``, the
        standard ones, ``set_tags``), so an adapter can leave the user's own tags alone."""
        with self._lock:
            return dict(self._tags)

    @property
    def status(self) -> str | None:
        """FINISHED/FAILED/KILLED once ended, else None."""
        return self._status

    def _submit(self, op: str, **fields) -> None:
        self._worker.submit({"op": op, "run": self._key, **fields})

    # ----------------------------------------------------------------- metrics
    def log_metric(self, name: str, value: float, step: int | None = None, timestamp_ms: int | None = None) -> None:
        self.log_metrics({name: value}, step=step, timestamp_ms=timestamp_ms)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None,
                    timestamp_ms: int | None = None) -> None:
        """Enqueue metric points; returns immediately. NaN/Inf are logged as such (and counted), a
        value that is not a number is skipped with a warning; a ``step`` or ``timestamp_ms`` that
        is not a whole 64-bit number raises ValueError (:func:`whole_number`)."""
        timestamp = whole_number("timestamp_ms", timestamp_ms) if timestamp_ms is not None else _now_ms()
        step = whole_number("step", step) if step is not None else 0
        points = []
        for name, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
                log.warning("cvops: metric %r has a non-numeric value %r; skipped", name, value)
                continue
            if not math.isfinite(value):
                self._nonfinite_points += 1
            points.append((self._names(name), value, timestamp, step))
        for start in range(0, len(points), MAX_METRICS_PER_BATCH):
            self._submit("metrics", metrics=points[start:start + MAX_METRICS_PER_BATCH])

    # ----------------------------------------------------------------- params and tags
    def log_param(self, name: str, value: Any) -> None:
        self.log_params({name: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Enqueue params. Over 6000 characters: whole value as an artifact, truncated param.

        A param that this run already has with a different value (typical on resume) is kept
        as the tag ``param_conflict.<name>`` with a warning, since MLflow params are immutable.
        """
        accepted: dict[str, str] = {}
        conflicts: dict[str, str] = {}
        for original, raw in params.items():
            name = self._names(original)
            value = self._param_value(name, raw)
            with self._lock:
                previous = self._params.get(name)
                if previous is None:
                    self._params[name] = value
                    accepted[name] = value
                elif previous != value:
                    conflicts[PARAM_CONFLICT_TAG_PREFIX + name] = value
        if conflicts:
            log.warning("cvops: run %s already has different values for params %s; the new values are "
                        "kept as tags %s*", self.run_id or self._key,
                        sorted(c[len(PARAM_CONFLICT_TAG_PREFIX):] for c in conflicts), PARAM_CONFLICT_TAG_PREFIX)
            self.set_tags(conflicts)
        items = list(accepted.items())
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._submit("params", params=dict(items[start:start + MAX_PARAMS_TAGS_PER_BATCH]))

    def _param_value(self, name: str, raw: Any) -> str:
        value = raw if isinstance(raw, str) else json.dumps(raw, default=str) if isinstance(raw, (dict, list)) \
            else str(raw)
        if len(value) <= MAX_PARAM_VAL_LENGTH:
            return value
        artifact_file = f"{LONG_PARAMS_DIR}/{name}.txt"
        self.log_text(value, artifact_file)
        marker = f"... [truncated, {len(value)} chars; full value in artifact {artifact_file}]"
        return value[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker

    def set_tag(self, name: str, value: Any) -> None:
        self.set_tags({name: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [(self._names(name), str(value)) for name, value in tags.items() if value is not None]
        with self._lock:
            self._tags.update((name, str(value)) for name, value in tags.items() if value is not None)
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._submit("tags", tags=dict(items[start:start + MAX_PARAMS_TAGS_PER_BATCH]))

    # ----------------------------------------------------------------- artifacts
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file in the background; it is snapshotted (hard link or copy) within one interval."""
        source = Path(path).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"log_artifact: {source} is not a file")
        self._submit("artifact", source=str(source), artifact_path=artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a directory's contents under ``artifact_path`` in the background."""
        source = Path(directory).resolve()
        if not source.is_dir():
            raise NotADirectoryError(f"log_artifacts: {source} is not a directory")
        self._submit("artifact", source=str(source), artifact_path=artifact_path)

    def _log_staged(self, artifact_file: str, write) -> None:
        artifact_file = artifact_file.strip("/")
        staged = self._worker.spool.staging_path(Path(artifact_file).name)
        try:
            write(staged)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            shutil.rmtree(staged.parent, ignore_errors=True)  # a torn file only holds space
            self._worker.artifact_not_logged(artifact_file, exc)  # a full disk must not stop training
            return
        directory = os.path.dirname(artifact_file) or None
        self._submit("artifact", source=str(staged), move=True, artifact_path=directory)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log_staged(artifact_file, lambda path: path.write_text(text, encoding="utf-8"))

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """JSON, or YAML when ``artifact_file`` ends in .yaml/.yml."""
        if artifact_file.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(dict(dictionary), sort_keys=False, default_flow_style=False)
        else:
            text = json.dumps(dictionary, indent=2, default=str)
        self.log_text(text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure (rendered by its own ``savefig``) or a plotly figure (HTML)."""
        if hasattr(figure, "savefig"):
            self._log_staged(artifact_file, lambda path: figure.savefig(path, bbox_inches="tight"))
        elif hasattr(figure, "write_html"):
            self._log_staged(artifact_file, lambda path: figure.write_html(str(path)))
        else:
            raise TypeError(f"log_figure: unsupported figure type {type(figure).__name__}")

    def log_image(self, image, artifact_file: str) -> None:
        """A PIL image or an HxW / HxWx{1,3,4} numpy array (uint8, or floats in [0, 1])."""
        try:
            from PIL import Image
        except ImportError:
            raise ImportError("log_image needs Pillow: pip install 'cvops[keras]' or pillow") from None
        if not isinstance(image, Image.Image):
            import numpy as np

            array = np.asarray(image)
            if array.dtype != np.uint8:
                array = (np.clip(array.astype("float64"), 0.0, 1.0) * 255).round().astype(np.uint8)
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            image = Image.fromarray(array)
        self._log_staged(artifact_file, lambda path: image.save(path))

    def log_config_file(self, path: str | os.PathLike) -> None:
        """The training config file as an artifact under ``config/``."""
        self.log_artifact(path, artifact_path="config")

    # ----------------------------------------------------------------- lineage
    def log_dataset(self, path_or_uri: str | os.PathLike, name: str, context: str = "training",
                    files: Sequence[str | os.PathLike] | None = None) -> str:
        """Record the dataset (name, source, content digest) as a run input; hashes on this thread.
        Returns the digest.

        Local paths are hashed file by file (cached by path, mtime and size under the cvops
        cache directory, so only changed files are read again); remote URIs are identified by URI.
        ``files`` (under the local path) limits the digest to them, e.g. one split of a folder.
        """
        dataset_input = lineage.dataset_input(path_or_uri, name, context, self._session.settings.cache_dir,
                                              None if files is None else [Path(file) for file in files])
        self._submit("inputs", datasets=[dataset_input])
        return dataset_input["dataset"]["digest"]

    # ----------------------------------------------------------------- structure and lifecycle
    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Run:
        """A nested run (a pipeline stage); ``with run.child("evaluate") as stage: ...``."""
        return _create_run(self._session, experiment=self._experiment_name, experiment_id=self._experiment_id,
                           run_name=run_name, tags=tags, parent=self)

    def flush(self, timeout_s: float = 30) -> bool:
        """Wait until everything logged so far is on the server (True) or ``timeout_s`` passes
        (False; the data is safe in the spool and keeps being retried)."""
        return self._worker.flush(timeout_s)

    def end(self, status: str = FINISHED, flush: bool = True) -> None:
        """End the run once; later calls do nothing. Children still open end with the same status."""
        with self._lock:
            if self._status is not None:
                return
            self._status = status
        for run in list(self._session.open_runs):
            if run._parent is self:
                run.end(status, flush=False)
        if self._names.changed and self._parent is None:
            self.log_dict(self._names.mapping(), NAME_MAPPING_ARTIFACT)
        if self._nonfinite_points:
            self.set_tags({NONFINITE_COUNT_TAG: self._nonfinite_points})
        self._submit("status", status=status, end_ms=_now_ms())
        with self._session.lock:
            if self in self._session.open_runs:
                self._session.open_runs.remove(self)
        if flush and self._parent is None:
            self.flush(self._session.settings.exit_flush_timeout_s)

    def leave_open(self) -> None:
        """Keep logging to the run, but do not end it when this process exits or is stopped:
        another process ends it (a sweep's parent run, shared by the sweep's pods)."""
        with self._session.lock:
            if self in self._session.open_runs:
                self._session.open_runs.remove(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            self.end(FINISHED)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end(KILLED)
        else:
            self.end(FAILED)
        return False


# --------------------------------------------------------------------------- starting runs


def start_run(experiment: str | None = None, run_name: str | None = None, tags: Mapping[str, Any] | None = None,
              resume_run_id: str | None = None, parent: Run | None = None, seed: int | None = None,
              settings: Settings | None = None) -> Run | DisabledRun:
    """Start (or resume) a tracked run; a :class:`DisabledRun` when tracking is off.

    Configuration comes from the environment through :mod:`cvops.config` unless ``settings`` is
    given: ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME`` (default for ``experiment``),
    ``MLFLOW_RUN_ID`` (resume), ``CVOPS_RUN_NAME``, ``CVOPS_TAG_*``, ``CVOPS_SEED``...
    If the server cannot be reached, the run is created when it comes back (``run_id`` is None
    until then) and training is never held up.
    """
    global _warned_disabled
    if parent is not None:
        return parent.child(run_name or "child", tags=tags)
    settings = settings or load_settings()
    if not settings.enabled:
        if not _warned_disabled:
            _warned_disabled = True
            log.warning("cvops: this run is NOT tracked (%s)", settings.not_tracked_reason)
        return DisabledRun()
    session = _get_session(settings)
    run = _create_run(session, experiment=experiment or settings.experiment_name, experiment_id=None,
                      run_name=run_name or settings.run_name, tags=tags,
                      resume_run_id=resume_run_id or settings.resume_run_id)
    _log_environment(run, settings, seed if seed is not None else settings.seed)
    if settings.system_metrics:
        from cvops.tracking.system import start_system_metrics

        start_system_metrics(run)
    return run


def _create_run(session: _Session, experiment: str | None, experiment_id: str | None, run_name: str | None,
                tags: Mapping[str, Any] | None, parent: Run | None = None,
                resume_run_id: str | None = None) -> Run:
    transport = session.worker.transport
    settings = session.settings
    all_tags = {**(schema.standard_tags(settings) if parent is None else {}),
                **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    if run_name:
        all_tags[RUN_NAME_TAG] = run_name
    if resume_run_id:
        return _resume_run(session, resume_run_id, all_tags)
    start_ms = _now_ms()
    parent_id = parent.run_id if parent else None
    try:
        if parent is not None and parent_id is None:
            raise Transient("the parent run has not reached the server yet")
        if experiment_id is None:
            experiment_id = transport.experiment_id(experiment) if experiment else "0"
        create_tags = dict(all_tags)
        if parent_id:
            create_tags["mlflow.parentRunId"] = parent_id
        info = transport.create_run(experiment_id, start_ms, run_name, create_tags)
        key = info["run_id"]
    except TransportError as exc:
        key = f"local:{uuid.uuid4().hex}"
        log.warning("cvops: could not create the run on %s now (%s); it will be created when the "
                    "server is reachable", settings.tracking_uri, exc)
        session.worker.submit({"op": "create_run", "run": key, "experiment": experiment,
                               "experiment_id": experiment_id, "run_name": run_name, "tags": all_tags,
                               "start_ms": start_ms, "parent": parent._key if parent else None})
    return Run(session, key, experiment_id, existing_params={}, parent=parent, experiment_name=experiment,
               tags=all_tags)


def _resume_run(session: _Session, run_id: str, tags: dict[str, str]) -> Run:
    transport = session.worker.transport
    experiment_id = None
    existing: dict[str, str] = {}
    try:
        found = transport.get_run(run_id)
        experiment_id = found["info"]["experiment_id"]
        existing = {p["key"]: p.get("value", "") for p in found.get("data", {}).get("params", [])}
    except Transient as exc:
        log.warning("cvops: could not reach the server to resume run %s (%s); logging to it when it returns",
                    run_id, exc)
    except TransportError as exc:
        raise ValueError(f"cannot resume run {run_id!r} (MLFLOW_RUN_ID or resume_run_id): {exc}") from None
    run = Run(session, run_id, experiment_id, existing_params=existing)
    run._submit("status", status=RUNNING)
    run.set_tags(tags)
    return run


def _log_environment(run: Run, settings: Settings, seed: int | None) -> None:
    run.log_params(schema.environment_params(seed))
    run.log_text(schema.pip_freeze(), "environment/requirements.txt")
