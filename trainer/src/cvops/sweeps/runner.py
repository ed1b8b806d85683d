"""`cvops sweep`: runs a study's trials as local processes or containers, each a child run of the sweep's run.

One Optuna study in RDB storage (the stack's PostgreSQL) is the only coordination: every
``cvops sweep`` process on the same study asks it for the next trial, so two processes never
get the same trial number. Per trial: ``study.ask()`` -> a child run (tags
``mlflow.parentRunId``, ``trial``; the parameters as params) -> the template job's command in
its code folder with the job's environment (the run to continue in ``MLFLOW_RUN_ID``, the trial
in ``CVOPS_TRIAL_*``, see :mod:`cvops.sweeps.trial`) -> ``study.tell()`` from how the run ended:
the objective's last value (FINISHED), PRUNED (tag ``pruned``), FAIL (non-zero exit, killed, or
the objective never logged).

A sweep process records a heartbeat for its running trials every ``heartbeat_s``; the next
``cvops sweep`` on the study fails the trials of a process that stopped beating for
``STALE_AFTER_HEARTBEATS`` intervals (a dead host or a SIGKILL) and their runs, so they neither
stay RUNNING nor hold the budget.

On a cluster (``cvops sweep --render k8s``, :mod:`cvops.sweeps.kubernetes`) the same code runs
split in two: :func:`setup_sweep` creates or loads the study and its parent run (each pod's init
container), :func:`run_worker` runs exactly one trial in place, inside the pod.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, TextIO

from cvops.jobs.plan import Provenance, Tracking, git_provenance, job_env
from cvops.jobs.runtime import close_run_if_open, final_status
from cvops.jobs.spec import JobSpec, check_host_paths
from cvops.sweeps import trial as trial_env
from cvops.sweeps.spec import STORAGE_ENV, SweepSpec, template_job

PARENT_RUN_ATTR = "cvops.parent_run_id"
EXPERIMENT_ATTR = "cvops.experiment_id"
RUN_ID_ATTR = "run_id"
TRIAL_TAG = "trial"
SWEEP_TAG = "sweep"
BEST_VALUE_METRIC = "sweep/best_value"
SWEEP_ERROR_TAG = "cvops.sweep_error"
REGISTERED_TRIAL_TAG = "registered_trial"
STALE_AFTER_HEARTBEATS = 4


class SweepError(RuntimeError):
    """The sweep cannot start; the message says what to change."""


def fail_run(tracking_uri: str, run_id: str, reason: str) -> None:
    """End a trial's run FAILED with the reason as a tag, unless it already ended otherwise."""
    from cvops.tracking.transport import Transport

    transport = Transport(tracking_uri)
    transport.log_batch(run_id, tags=[(SWEEP_ERROR_TAG, reason)])
    if transport.get_run(run_id)["info"]["status"] in ("RUNNING", "FINISHED"):
        transport.update_run(run_id, "FAILED", end_ms=int(time.time() * 1000))


def fail_stale_trial_run(tracking_uri: str, _study, trial) -> None:
    """Optuna failed ``trial``: its sweep process stopped beating. Its run fails too."""
    print(f"[sweep] trial {trial.number} failed: the sweep process running it stopped", file=sys.stderr)
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        fail_run(tracking_uri, run_id, "the sweep process running this trial stopped (no heartbeat)")


def _quiet_optuna() -> None:
    """For the `cvops sweep` process: heartbeats and the matplotlib plots are experimental, and
    heartbeats outside ``study.optimize`` (our ask/tell loop beats itself) get a warning: noise at
    every sweep. Process-wide, since ``warnings.catch_warnings`` is not safe across the workers."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")


def open_study(spec: SweepSpec, storage_url: str, *, create: bool, load: bool, on_stale_trial=None):
    """The spec's study in ``storage_url``: created (``create``), loaded (``load``) or either;
    ``on_stale_trial(study, trial)`` runs for each trial ``optuna.storages.fail_stale_trials`` fails."""
    import optuna

    _quiet_optuna()
    sampler = (
        optuna.samplers.RandomSampler(seed=spec.seed)
        if spec.sampler == "random"
        else optuna.samplers.TPESampler(seed=spec.seed)
    )
    storage = optuna.storages.RDBStorage(
        storage_url, heartbeat_interval=spec.heartbeat_s, grace_period=spec.heartbeat_s * STALE_AFTER_HEARTBEATS,
        heartbeat_stale_trial_callback=on_stale_trial,
    )
    options = {"study_name": spec.study, "storage": storage, "sampler": sampler, "pruner": spec.pruner.build()}
    if create:
        # Creating is the test of existence: of two processes starting at once, exactly one creates.
        try:
            return optuna.create_study(direction=spec.objective.direction, **options), True
        except optuna.exceptions.DuplicatedStudyError:
            if not load:
                raise SweepError(f"study {spec.study!r} already exists in the storage; continue it with --resume") from None
    try:
        return optuna.load_study(**options), False
    except KeyError:
        raise SweepError(f"no study {spec.study!r} in the storage; start it with `cvops sweep` first") from None


def _parent_run_id(study, timeout_s: float = 60) -> str:
    """The sweep's run, which the process that created the study records just after creating it."""
    deadline = time.monotonic() + timeout_s
    while (run_id := study.user_attrs.get(PARENT_RUN_ATTR)) is None:
        if time.monotonic() > deadline:
            raise SweepError(f"study {study.study_name!r} has no sweep run recorded; was its first `cvops sweep` "
                             "stopped while starting? Start the sweep under a new study name")
        time.sleep(0.5)
    return run_id


@dataclass
class _Sweep:
    spec: SweepSpec
    job: JobSpec
    study: Any
    storage_url: str
    tracking_uri: str
    parent: Any
    provenance: Provenance
    budget: int
    out: TextIO
    # A `--worker` process: it is the trial's container (a Kubernetes pod), so the trial runs in its
    # working directory with its environment, and it runs this many trials, then exits.
    in_place: bool = False
    trials_per_worker: int | None = None
    ask_lock: threading.Lock = field(default_factory=threading.Lock)
    parent_lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    processes: set = field(default_factory=set)
    trials_run: int = 0
    running_trial_ids: set = field(default_factory=set)
    containers: Any = None  # cvops.sweeps.containers.TrialContainers with `trials_in: docker`

    # ------------------------------------------------------------------ trials
    def next_trial(self):
        with self.ask_lock:
            if self.stopping.is_set():
                return None
            if _started_count(self.study) >= self.budget:
                return None
            trial = self.spec.ask(self.study)
            self.trials_run += 1
            self.study._storage.record_heartbeat(trial._trial_id)
            self.running_trial_ids.add(trial._trial_id)
            return trial

    def beat(self, done: threading.Event) -> None:
        while not done.wait(self.spec.heartbeat_s):
            for trial_id in list(self.running_trial_ids):
                try:
                    self.study._storage.record_heartbeat(trial_id)
                except Exception as error:  # a database blip: the next beat retries
                    print(f"[sweep] heartbeat not recorded: {error}", file=sys.stderr)

    def budget_spent(self) -> bool:
        """Every trial of the budget has started and none is still running."""
        from optuna.trial import TrialState

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return _started_count(self.study) >= self.budget and not running

    def work(self, gpu_uuids: tuple[str, ...]) -> None:
        ran = 0
        while ran != self.trials_per_worker and (trial := self.next_trial()) is not None:
            ran += 1
            try:
                self.run_trial(trial, gpu_uuids)
            except Exception as error:  # one broken trial must not end the others
                print(f"[sweep] trial {trial.number} could not run: {error}", file=sys.stderr)
                self.tell(trial.number, state="FAIL")
            finally:
                self.running_trial_ids.discard(trial._trial_id)

    def run_trial(self, trial, gpu_uuids: tuple[str, ...]) -> None:
        from cvops.jobs.docker_backend import precreate_run
        from cvops.tracking.transport import Transport

        name = f"{self.spec.study}-trial-{trial.number}"
        _, run_id = precreate_run(self.tracking_uri, self.job.model_copy(update={"run_name": name}), self.provenance)
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        transport = Transport(self.tracking_uri)
        transport.log_batch(
            run_id,
            params=[(key, _param_text(value)) for key, value in trial.params.items()],
            tags=[("mlflow.parentRunId", self.parent.run_id), (TRIAL_TAG, str(trial.number)),
                  (SWEEP_TAG, self.spec.study)],
        )
        print(f"[sweep] trial {trial.number} {json.dumps(trial.params)} -> run {run_id}", file=self.out, flush=True)
        exit_code = self.run_command(trial, run_id, gpu_uuids)
        close_run_if_open(self.tracking_uri, run_id, final_status(exit_code, self.stopping.is_set()), exit_code)
        self.tell_from_run(trial.number, transport, run_id, exit_code)

    def trial_environment(self, trial) -> dict[str, str]:
        return {
            trial_env.PARAMS_ENV: json.dumps(trial.params),
            trial_env.NUMBER_ENV: str(trial.number),
            trial_env.STUDY_ENV: self.spec.study,
            STORAGE_ENV: self.storage_url,
            trial_env.OBJECTIVE_ENV: self.spec.objective.metric,
            trial_env.PRUNER_ENV: self.spec.pruner.model_dump_json(),
        }

    def run_command(self, trial, run_id: str, gpu_uuids: tuple[str, ...]) -> int:
        if self.containers is not None:
            return self.containers.run(trial.number, run_id, self.parent.experiment_id, self.trial_environment(trial),
                                       gpu_uuids, functools.partial(self.trial_log, trial.number))
        if self.in_place:
            # The pod already has the job's environment, working directory and GPUs.
            env, cwd = {**os.environ, "MLFLOW_RUN_ID": run_id}, None
        else:
            env = {**os.environ, **job_env(self.job, self.provenance, Tracking(uri=self.tracking_uri, run_id=run_id))}
            # A local process, not a container (the SDK's container defaults do not apply).
            env.update({"CVOPS_IN_CONTAINER": "0", "CUDA_VISIBLE_DEVICES": ",".join(gpu_uuids)})
            cwd = self.job.job_dir
        env.update(self.trial_environment(trial))
        try:
            process = subprocess.Popen(
                list(self.job.command), cwd=cwd, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
            )
        except OSError as error:
            print(f"[trial {trial.number}] cannot start {self.job.command[0]!r}: {error.strerror}", file=self.out)
            return 127
        self.processes.add(process)
        try:
            for line in process.stdout:
                self.trial_log(trial.number, line)
            returncode = process.wait()
        finally:
            self.processes.discard(process)
        # A process killed by signal N reports -N; shells report 128+N, and so do we.
        return 128 - returncode if returncode < 0 else returncode

    def trial_log(self, number: int, line: str) -> None:
        # Flushed per line: a piped `cvops sweep` (tee, CI) shows its trials live.
        self.out.write(f"[trial {number}] {line}")
        self.out.flush()

    def tell_from_run(self, number: int, transport, run_id: str, exit_code: int) -> None:
        from cvops.tracking.names import sanitize_metric_name

        run = transport.get_run(run_id)
        status = run["info"]["status"]
        tags = {tag["key"]: tag.get("value") for tag in run.get("data", {}).get("tags", [])}
        metrics = {metric["key"]: metric["value"] for metric in run.get("data", {}).get("metrics", [])}
        objective = sanitize_metric_name(self.spec.objective.metric)  # as the trial's SDK logged it
        if tags.get(trial_env.PRUNED_TAG) == "true":
            self.tell(number, state="PRUNED")
        elif exit_code != 0 or status != "FINISHED":
            self.tell(number, state="FAIL")
        elif objective not in metrics:
            message = f"the run ended without logging the objective metric {objective!r}"
            fail_run(self.tracking_uri, run_id, message)
            print(f"[sweep] trial {number}: {message}; counted as failed", file=self.out)
            self.tell(number, state="FAIL")
        else:
            self.tell(number, value=float(metrics[objective]))

    def tell(self, number: int, *, value: float | None = None, state: str | None = None) -> None:
        from optuna.trial import TrialState

        frozen = self.study.tell(number, value, state=TrialState[state] if state else None, skip_if_finished=True)
        shown = f"{frozen.value:g}" if frozen.value is not None and state is None else frozen.state.name
        print(f"[sweep] trial {number} {shown}", file=self.out, flush=True)
        self.log_best()

    # ------------------------------------------------------------------ the parent run
    def log_best(self) -> None:
        from optuna.trial import TrialState

        with self.parent_lock:
            trials = self.study.get_trials(deepcopy=False)
            finished = sum(trial.state.is_finished() for trial in trials)
            if not any(trial.state == TrialState.COMPLETE for trial in trials):
                return
            best = self.study.best_trial
            self.parent.log_metric(BEST_VALUE_METRIC, best.value, step=finished)
            self.parent.set_tags({
                "best_trial": best.number,
                "best_run_id": best.user_attrs.get(RUN_ID_ATTR),
                **{f"best_params.{name}": _param_text(value) for name, value in best.params.items()},
            })

    def stop(self) -> None:
        """Ctrl-C: ask no more trials and stop the running ones (their runs end KILLED)."""
        self.stopping.set()
        for process in list(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.containers is not None:
            self.containers.stop()


def _started_count(study) -> int:
    """Trials that count against the budget: all but the enqueued ones not yet asked for."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING)))


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _log_plots(study, parent) -> None:
    """Optuna's optimisation history and parameter importances as PNG artifacts of the parent."""
    import matplotlib
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    for name, plot in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances)):
        try:
            axes = plot(study)
        except Exception as error:  # e.g. importances need two completed trials
            print(f"[sweep] no {name} plot: {error}", file=sys.stderr)
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        parent.log_figure(figure, f"sweep/{name}.png")
        plt.close(figure)


def _gpu_groups(spec: SweepSpec) -> list[tuple[str, ...]]:
    """One group of free GPUs per parallel worker (``gpus_per_trial`` each), or CPU only."""
    if spec.gpus_per_trial == 0:
        return [()] * spec.parallelism
    from cvops.jobs.gpus import choose_gpus, probe_gpus

    gpus = probe_gpus()
    held: set[int] = set()
    groups = []
    for _ in range(spec.parallelism):
        choice = choose_gpus(spec.gpus_per_trial, gpus, held)
        held.update(choice.indices)
        groups.append(choice.uuids)
    return groups


def _tracking_settings():
    from cvops.config import load_settings

    settings = load_settings()
    if not settings.enabled:
        raise SweepError(f"a sweep tracks every trial, and tracking is off: {settings.not_tracked_reason}")
    return settings


@dataclass
class _OpenedSweep:
    study: Any
    storage_url: str
    parent: Any
    created: bool


def _open_sweep(spec: SweepSpec, settings, *, create: bool, load: bool, unless_spent: bool = False) -> _OpenedSweep | None:
    """The study (stale trials failed) and the sweep's parent run, created with the study; None
    with ``unless_spent`` when every trial of the budget has started (the parent is left alone)."""
    import optuna

    import cvops

    storage_url = spec.storage_url(os.environ)
    study, created = open_study(
        spec, storage_url, create=create, load=load,
        on_stale_trial=functools.partial(fail_stale_trial_run, settings.tracking_uri),
    )
    optuna.storages.fail_stale_trials(study)
    if unless_spent and _started_count(study) >= spec.trials:
        return None
    parent_run_id = None if created else _parent_run_id(study)
    parent = cvops.start_run(
        experiment=template_job(spec).experiment, run_name=f"sweep-{spec.study}", tags={SWEEP_TAG: spec.study},
        resume_run_id=parent_run_id, settings=settings,
    )
    if parent.run_id is None:
        raise SweepError(f"could not create the sweep's run on {settings.tracking_uri}; check `cvops doctor`")
    if created:
        study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
        study.set_user_attr(EXPERIMENT_ATTR, parent.experiment_id)
        for params in spec.enqueue:
            study.enqueue_trial(params)
    return _OpenedSweep(study, storage_url, parent, created)


def _record_spec(spec: SweepSpec, parent) -> None:
    parent.log_params({
        "objective": spec.objective.metric, "direction": spec.objective.direction, "sampler": spec.sampler,
        "pruner": spec.pruner.type, "study": spec.study,
    })
    if spec.source_file:
        parent.log_artifact(spec.source_file, "sweep")


def _run_workers(sweep: _Sweep, gpu_groups: list[tuple[str, ...]]) -> str:
    """Run ``sweep.work`` once per GPU group until the budget is spent; KILLED on Ctrl-C.

    The main thread waits on events, not ``Thread.join``: a KeyboardInterrupt that lands in a
    join makes CPython report the thread finished, and the stopped trials would never be told."""

    def work(group: tuple[str, ...], done: threading.Event) -> None:
        try:
            sweep.work(group)
        finally:
            done.set()

    workers_done = [threading.Event() for _ in gpu_groups]
    done_beating = threading.Event()
    threading.Thread(target=sweep.beat, args=(done_beating,), daemon=True).start()
    status = "FINISHED"
    try:
        for group, done in zip(gpu_groups, workers_done):
            threading.Thread(target=work, args=(group, done), daemon=True).start()
            time.sleep(0.05)  # staggered, so the first asks do not all hit the database at once
        for done in workers_done:
            while not done.wait(0.5):
                pass
    except KeyboardInterrupt:
        print("[sweep] stopping: no new trials; running ones are stopped", file=sweep.out, flush=True)
        sweep.stop()
        for done in workers_done:
            done.wait()
        status = "KILLED"
    done_beating.set()
    return status


@contextlib.contextmanager
def _closing_lock(storage_url: str, study_name: str):
    """One process at a time closes the sweep (two workers may end its last trials together): a
    PostgreSQL advisory lock keyed by the study, in the study's database. Other databases: none."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url)
    try:
        if engine.dialect.name != "postgresql":
            yield
            return
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                               {"key": f"cvops-sweep:{study_name}"})
            yield
    finally:
        engine.dispose()


def _finish(sweep: _Sweep, status: str) -> None:
    """The sweep's closing entries on its parent run: plots, the best model registered, the end
    (flushed before the lock is released, so the next closer sees the registration)."""
    with _closing_lock(sweep.storage_url, sweep.spec.study):
        _log_plots(sweep.study, sweep.parent)
        # A stopped sweep has not found its best yet: `--resume` registers it when it ends.
        if sweep.spec.registration is not None and status == "FINISHED":
            _register_best(sweep)
        sweep.parent.end(status)


def run_sweep(spec: SweepSpec, *, resume: bool, out: TextIO = sys.stdout) -> int:
    settings = _tracking_settings()
    job = template_job(spec)
    check_host_paths(job)
    gpu_groups = _gpu_groups(spec)
    commit, dirty = git_provenance(job.job_dir)
    provenance, containers = Provenance(git_commit=commit, git_dirty=dirty), None
    # Before the study and the parent run exist: a sweep that cannot start containers leaves neither.
    if spec.trials_in == "docker":
        from cvops.sweeps.containers import TrialContainers

        containers = TrialContainers.prepare(job, spec.study, settings.tracking_uri, spec.storage_url(os.environ),
                                             provenance, spec.gpus_per_trial)
        provenance = containers.provenance
    opened = _open_sweep(spec, settings, create=True, load=resume)
    _record_spec(spec, opened.parent)
    print(f"[sweep] study {spec.study!r}, parent run {opened.parent.ui_url or opened.parent.run_id}", file=out, flush=True)
    sweep = _Sweep(spec, job, opened.study, opened.storage_url, settings.tracking_uri, opened.parent,
                   provenance, spec.trials, out, containers=containers)
    status = _run_workers(sweep, gpu_groups)
    _finish(sweep, status)
    return 0 if status == "FINISHED" else 130


def setup_sweep(spec: SweepSpec, out: TextIO = sys.stdout) -> int:
    """Create the study and its parent run, or find them: of several processes starting at once,
    exactly one creates them and the others wait for the parent run. Leaves the parent open, or
    alone when the budget is spent (a pod replaced at the end must not reopen a closed sweep)."""
    opened = _open_sweep(spec, _tracking_settings(), create=True, load=True, unless_spent=True)
    if opened is None:
        print(_SPENT.format(study=spec.study), file=out, flush=True)
        return 0
    if opened.created:
        _record_spec(spec, opened.parent)
    opened.parent.leave_open()
    state = "created" if opened.created else "found"
    print(f"[sweep] study {spec.study!r} {state}, parent run {opened.parent.ui_url or opened.parent.run_id}",
          file=out, flush=True)
    return 0


_SPENT = "[sweep] every trial of study {study!r}'s budget has started: nothing to run"


def _interrupt_on_sigterm() -> None:
    """A pod is stopped with SIGTERM: stop the trial as Ctrl-C stops a local sweep."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_worker(spec: SweepSpec, out: TextIO = sys.stdout) -> int:
    """Run one trial of an existing study in this process's place (a pod of ``--render k8s``):
    ask, run the template job's command here, tell, exit. The worker that ends the budget's last
    trial closes the sweep (plots, registration, the parent run FINISHED)."""
    _interrupt_on_sigterm()  # before the SDK's own handler, which calls it after ending its runs
    settings = _tracking_settings()
    opened = _open_sweep(spec, settings, create=False, load=True, unless_spent=True)
    if opened is None:
        print(_SPENT.format(study=spec.study), file=out, flush=True)
        return 0
    opened.parent.leave_open()  # the other workers still log to it
    sweep = _Sweep(spec, template_job(spec), opened.study, opened.storage_url, settings.tracking_uri, opened.parent,
                   Provenance(git_commit=settings.git_commit, image_digest=settings.image_digest), spec.trials, out,
                   in_place=True, trials_per_worker=1)
    status = _run_workers(sweep, [()])
    if status == "KILLED":
        return 130
    if sweep.trials_run and sweep.budget_spent():
        _finish(sweep, "FINISHED")
    return 0


def _register_best(sweep: _Sweep) -> None:
    """Register the best complete trial's model, once: another process of the sweep may have
    registered the same trial already (the parent's ``registered_trial`` tag says)."""
    from mlflow.exceptions import MlflowException
    from optuna.trial import TrialState

    from cvops import registry
    from cvops.tracking.transport import Transport

    register = sweep.spec.registration
    if not sweep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print("[sweep] no trial completed: no model to register", file=sweep.out, flush=True)
        return
    best = sweep.study.best_trial
    parent_tags = {tag["key"]: tag.get("value") for tag in
                   Transport(sweep.tracking_uri).get_run(sweep.parent.run_id).get("data", {}).get("tags", [])}
    if parent_tags.get(REGISTERED_TRIAL_TAG) == str(best.number):
        return
    try:
        version = registry.register_logged_model(
            sweep.tracking_uri, best.user_attrs[RUN_ID_ATTR], register.name, name=register.model,
            aliases=[register.alias] if register.alias else [],
        )
    except (LookupError, MlflowException) as error:  # the sweep still ends; its parent says why
        message = f"best trial {best.number}: {error}; nothing registered"
        print(f"[sweep] {message}", file=sweep.out, flush=True)
        sweep.parent.set_tags({SWEEP_ERROR_TAG: message})
        return
    sweep.parent.set_tags({
        "registered_model": version.name, "registered_version": version.version, REGISTERED_TRIAL_TAG: best.number,
    })
    alias = f" as @{register.alias}" if register.alias else ""
    print(f"[sweep] registered trial {best.number}'s model: {version.registry_uri}{alias}", file=sweep.out, flush=True)
