"""`cvops sweep` end to end: a real study in the harness PostgreSQL (its own database, as the
stack keeps Optuna's beside MLflow's), trials as processes tracked on the harness MLflow server.

Six enqueued trials, parallelism 2, a median pruner: two good trials complete first, the `bad`
one is pruned, the `crash` one kills itself mid-run. Then two `cvops sweep --resume` processes at
once continue the same study without running a trial twice."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

optuna = pytest.importorskip("optuna")

from tests.integration.sdk_env import sweep_env  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OBJECTIVE = REPO / "tests" / "data" / "sweep" / "objective.py"
ENQUEUED = [
    {"lr": 0.1, "behaviour": "good"},
    {"lr": 0.001, "behaviour": "good"},
    {"lr": 0.01, "behaviour": "good"},
    {"lr": 0.05, "behaviour": "bad"},
    {"lr": 0.02, "behaviour": "crash"},
    {"lr": 0.03, "behaviour": "good"},
]


def write_sweep(tmp_path, study: str, enqueued=ENQUEUED, heartbeat_s: int = 30) -> Path:
    (tmp_path / "objective.py").write_text(OBJECTIVE.read_text())
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(f"""
        job:
          framework: keras
          image: not-used-by-local-trials
          command: [{sys.executable}, objective.py]
          experiment: sweep-{study}
        study: {study}
        search_space:
          lr: {{type: float, low: 0.0001, high: 0.5, log: true}}
          behaviour: {{type: categorical, choices: [good, bad, crash, hang]}}
        objective: {{metric: val_loss, direction: min}}
        sampler: random
        seed: 0
        pruner: {{type: median, startup_trials: 2}}
        trials: 6
        parallelism: 2
        enqueue: {enqueued!r}
        heartbeat_s: {heartbeat_s}
    """))
    return path


def cvops(*args: str, env: dict[str, str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvops", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def finished(process: subprocess.Popen, timeout_s: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, output
    return output


def test_a_sweep_tracks_every_trial_as_a_child_run_and_resumes_from_two_processes(
    tracking_server, optuna_storage, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    study_name = f"sweep-{uuid.uuid4().hex[:6]}"
    spec = write_sweep(tmp_path, study_name)
    env = sweep_env(tracking_server, tmp_path, optuna_storage)
    output = finished(cvops("sweep", str(spec), env=env, cwd=tmp_path))

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    trials = {trial.number: trial for trial in study.get_trials()}
    states = {number: trial.state.name for number, trial in trials.items()}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "PRUNED", 4: "FAIL", 5: "COMPLETE"}, output

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_server.url)
    parent_id = study.user_attrs["cvops.parent_run_id"]
    parent = client.get_run(parent_id)
    runs = {trial.number: client.get_run(trial.user_attrs["run_id"]) for trial in trials.values()}
    expected_status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for number, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["trial"] == str(number)
        assert run.info.status == expected_status[states[number]], (number, run.info.status, output)
        assert run.data.params["behaviour"] == ENQUEUED[number]["behaviour"]
        assert float(run.data.params["lr"]) == pytest.approx(ENQUEUED[number]["lr"])
    assert runs[3].data.tags["pruned"] == "true" and int(runs[3].data.tags["pruned_at_step"]) < 5
    assert "pruned" not in runs[0].data.tags
    for number in (0, 1, 2, 5):
        assert trials[number].value == pytest.approx(runs[number].data.metrics["val_loss"])

    assert study.best_trial.number == 2  # lr 0.01: the smallest curve
    assert parent.data.tags["best_trial"] == "2"
    assert parent.data.tags["best_run_id"] == runs[2].info.run_id
    assert parent.data.tags["best_params.behaviour"] == "good"
    best_history = client.get_metric_history(parent_id, "sweep/best_value")
    assert best_history[-1].value == pytest.approx(study.best_value) and best_history[-1].step == 6
    assert parent.info.status == "FINISHED"
    artifacts = {item.path for item in client.list_artifacts(parent_id, "sweep")}
    assert {"sweep/optimization_history.png", "sweep/param_importances.png", "sweep/sweep.yaml"} <= artifacts

    status = subprocess.run([sys.executable, "-m", "cvops", "sweep", "status", str(spec)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "6 of 6 trials: 4 complete, 1 fail, 1 pruned" in status.stdout
    assert f"/runs/{runs[3].info.run_id}" in status.stdout and "best: trial 2" in status.stdout

    again = subprocess.run([sys.executable, "-m", "cvops", "sweep", str(spec)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr

    # Two processes continue the same study at once: each asks the shared study for its trials.
    resumed = [cvops("sweep", "--resume", "--trials", "10", str(spec), env=env, cwd=tmp_path) for _ in range(2)]
    outputs = [finished(process) for process in resumed]
    trials = optuna.load_study(study_name=study_name, storage=optuna_storage).get_trials()
    numbers = sorted(trial.number for trial in trials)
    # The budget is checked before asking, so the four workers may overshoot it by up to three.
    assert numbers == list(range(len(numbers))) and 10 <= len(numbers) <= 13, outputs
    child_runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    trial_tags = sorted(int(run.data.tags["trial"]) for run in child_runs)
    assert trial_tags == numbers, outputs
    assert all(trial.state.is_finished() for trial in trials)


def test_the_trials_of_a_dead_sweep_process_fail_when_the_next_one_starts(
    tracking_server, optuna_storage, tmp_path, monkeypatch
):
    """A host dies mid-trial (sweep process and trial killed at once): its trial stops beating, and
    the next `cvops sweep --resume` fails it in the study and its run, then carries on."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    study_name = f"dead-{uuid.uuid4().hex[:6]}"
    spec = write_sweep(tmp_path, study_name, enqueued=[{"lr": 0.01, "behaviour": "hang"}], heartbeat_s=1)
    env = sweep_env(tracking_server, tmp_path, optuna_storage)
    dying = cvops("sweep", str(spec), env=env, cwd=tmp_path)
    pid_file = tmp_path / "hang.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert time.monotonic() < deadline and dying.poll() is None, dying.communicate()[0]
        time.sleep(0.2)
    dying.kill()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    dying.communicate()
    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    assert study.trials[0].state.name == "RUNNING"

    time.sleep(5)  # past 4 missed heartbeats
    output = finished(cvops("sweep", "--resume", "--trials", "2", str(spec), env=env, cwd=tmp_path))
    trials = optuna.load_study(study_name=study_name, storage=optuna_storage).get_trials()
    assert [trial.state.name for trial in trials][:1] == ["FAIL"] and len(trials) == 2, output
    assert trials[1].state.is_finished()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    dead_run = MlflowClient(tracking_server.url).get_run(trials[0].user_attrs["run_id"])
    assert dead_run.info.status == "FAILED"
    assert "stopped" in dead_run.data.tags["cvops.sweep_error"]


def test_the_keras_callback_prunes_a_trial_worse_than_the_completed_ones(tracking_env, optuna_storage, monkeypatch):
    """In a trial's environment (as `cvops sweep` sets it), a real model.fit reports val_loss each
    epoch; against a completed trial far better at every step, the median pruner stops it at once."""
    keras = pytest.importorskip("keras")
    import numpy as np

    import cvops
    from cvops.integrations.keras import CvopsCallback
    from cvops.sweeps import trial as trial_module
    from cvops.sweeps.spec import PrunerSpec

    pruner = PrunerSpec(type="median", startup_trials=1)
    study_name = f"keras-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(study_name=study_name, storage=optuna_storage, pruner=pruner.build())
    lr = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": lr}, value=1e-6, intermediate_values={step: 1e-6 for step in range(5)}
    ))
    trial = study.ask({"lr": lr})
    monkeypatch.setattr(trial_module, "_reporter", None)
    monkeypatch.setenv("CVOPS_TRIAL_NUMBER", str(trial.number))
    monkeypatch.setenv("CVOPS_TRIAL_PARAMS", f'{{"lr": {trial.params["lr"]}}}')
    monkeypatch.setenv("CVOPS_SWEEP_STUDY", study_name)
    monkeypatch.setenv("CVOPS_SWEEP_STORAGE", optuna_storage)
    monkeypatch.setenv("CVOPS_SWEEP_OBJECTIVE", "val_loss")
    monkeypatch.setenv("CVOPS_SWEEP_PRUNER", pruner.model_dump_json())

    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(64, 4)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(cvops.sweeps.trial_params()["lr"]), loss="mse")
    with cvops.start_run(experiment="sweep-keras") as run:
        history = model.fit(features, targets, validation_split=0.25, epochs=5, verbose=0,
                            callbacks=[CvopsCallback(run)])
    assert len(history.history["val_loss"]) == 1
    assert run.status == "KILLED"
    from mlflow.tracking import MlflowClient

    tracked = MlflowClient(tracking_env.url).get_run(run.run_id)
    assert tracked.info.status == "KILLED"
    assert tracked.data.tags["pruned"] == "true" and tracked.data.tags["pruned_at_step"] == "0"
    assert study.trials[trial.number].intermediate_values == {0: pytest.approx(history.history["val_loss"][0])}
    assert optuna.load_study(study_name=study_name, storage=optuna_storage).trials[trial.number].state.name == "RUNNING"
