"""`cvops sweep` end to end: a real study in the harness PostgreSQL (its own database, as the
stack keeps Optuna's beside MLflow's), trials as processes tracked on the harness MLflow server.

Six enqueued trials, parallelism 2, a median pruner: two good trials complete first, the `bad`
one is pruned, the `crash` one kills itself mid-run. Then two `cvops sweep --resume` processes at
once continue the same study without running a trial twice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.integration

optuna = pytest.importorskip("optuna")

from tests.harness.sweeps import ENQUEUED, REPO, cvops, finished, sweep_env, write_sweep  # noqa: E402


def test_a_sweep_tracks_every_trial_as_a_child_run_and_resumes_from_two_processes(
    tracking_server, optuna_storage, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    study_name = f"sweep-{uuid.uuid4().hex[:6]}"
    # These trials log no model: the registration the spec asks for is noted as impossible.
    spec = write_sweep(tmp_path, study_name, extra=f"register: {{name: never-{study_name}}}\n")
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
    assert "logged no model named 'model'" in parent.data.tags["cvops.sweep_error"], output
    assert "registered_version" not in parent.data.tags
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


def test_setup_then_two_workers_run_one_trial_each_and_the_last_registers_the_best_model(
    tracking_server, optuna_storage, tmp_path, monkeypatch
):
    """The pods of `cvops sweep --render k8s`, as local processes: `--setup` (the init container)
    creates the study and leaves the parent run open; two `--worker`s at once each run one trial of
    the shared study in place; the sweep closes once (one model version, though the workers end
    together) and a worker arriving after the budget is spent runs nothing."""
    import re

    from mlflow.tracking import MlflowClient

    study_name = f"workers-{uuid.uuid4().hex[:6]}"
    model_name = f"best-{study_name}"
    spec = write_sweep(
        tmp_path, study_name, enqueued=[{"lr": 0.1, "behaviour": "good"}, {"lr": 0.01, "behaviour": "good"}],
        trials=2, extra=f"register: {{name: {model_name}, alias: challenger}}\n",
    )
    env = {**sweep_env(tracking_server, tmp_path, optuna_storage), "OBJECTIVE_LOGS_MODEL": "1"}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_server.url)

    finished(cvops("sweep", "--setup", str(spec), env=env, cwd=tmp_path))
    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    parent_id = study.user_attrs["cvops.parent_run_id"]
    assert client.get_run(parent_id).info.status == "RUNNING"
    assert [trial.state.name for trial in study.trials] == ["WAITING", "WAITING"]  # enqueued, none started

    outputs = [finished(worker) for worker in
               [cvops("sweep", "--worker", str(spec), env=env, cwd=tmp_path) for _ in range(2)]]
    asked = [re.findall(r"\[sweep\] trial (\d+) \{", output) for output in outputs]
    assert sorted(asked) == [["0"], ["1"]], outputs
    trials = optuna.load_study(study_name=study_name, storage=optuna_storage).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE"]
    runs = [client.get_run(trial.user_attrs["run_id"]) for trial in trials]
    for number, run in enumerate(runs):
        assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["trial"] == str(number)
        assert run.info.status == "FINISHED"
    assert [float(run.data.params["lr"]) for run in runs] == [pytest.approx(0.1), pytest.approx(0.01)]

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED", outputs
    assert parent.data.tags["best_trial"] == "1"
    [version] = client.search_model_versions(f"name = '{model_name}'")
    assert version.run_id == runs[1].info.run_id
    assert client.get_model_version_by_alias(model_name, "challenger").version == version.version
    assert parent.data.tags["registered_version"] == version.version
    assert parent.data.tags["registered_model"] == model_name and parent.data.tags["registered_trial"] == "1"

    # A pod started after the budget is spent (replaced at the end): its setup and worker do nothing.
    for mode in ("--setup", "--worker"):
        assert "nothing to run" in finished(cvops("sweep", mode, str(spec), env=env, cwd=tmp_path))
    assert len(optuna.load_study(study_name=study_name, storage=optuna_storage).trials) == 2
    assert client.get_run(parent_id).info.status == "FINISHED"



def test_a_worker_pod_stopped_with_sigterm_fails_its_trial_and_leaves_the_sweep_open(
    tracking_server, optuna_storage, tmp_path, monkeypatch
):
    """`kubectl delete` of a pod sends its worker SIGTERM: the trial is stopped (run KILLED, study
    FAIL) and the parent run stays RUNNING for the other pods."""
    import contextlib
    import signal
    import time

    from mlflow.tracking import MlflowClient

    study_name = f"stopped-{uuid.uuid4().hex[:6]}"
    spec = write_sweep(tmp_path, study_name, enqueued=[{"lr": 0.01, "behaviour": "hang"}], trials=2)
    env = sweep_env(tracking_server, tmp_path, optuna_storage)
    finished(cvops("sweep", "--setup", str(spec), env=env, cwd=tmp_path))
    worker = cvops("sweep", "--worker", str(spec), env=env, cwd=tmp_path)
    pid_file = tmp_path / "hang.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert time.monotonic() < deadline and worker.poll() is None, worker.communicate()[0]
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    try:
        output, _ = worker.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the trial, had the worker not stopped it
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert worker.returncode == 130, output

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_server.url)
    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    [trial] = study.trials
    assert trial.state.name == "FAIL", output
    assert client.get_run(trial.user_attrs["run_id"]).info.status == "KILLED"
    assert client.get_run(study.user_attrs["cvops.parent_run_id"]).info.status == "RUNNING"


def _trial_process(study_name: str, number: int) -> int | None:
    """The process id of trial `number` of this study (its environment says which), if running."""
    wanted = {f"CVOPS_SWEEP_STUDY={study_name}".encode(), f"CVOPS_TRIAL_NUMBER={number}".encode()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if wanted <= set(environ.read().split(b"\0")):
                    return int(pid)
        except OSError:
            continue  # gone, or not ours to read
    return None


def test_the_keras_example_sweep_prunes_fails_and_registers_its_best_trial(
    tracking_server, optuna_storage, tmp_path, monkeypatch
):
    """The Keras example's sweep.yaml, shrunk (64 images, 4 epochs), with enqueued trials that fix
    the outcome: 0 and 1 learn; 2 is killed mid-run (a worker dying); 3 has a learning rate too
    small to learn, so the median pruner stops it; 4 and 5 come from the sampler."""
    import signal

    import yaml

    pytest.importorskip("keras")
    from mlflow.tracking import MlflowClient

    example = REPO / "trainer" / "examples" / "keras"
    data = tmp_path / "shapes"
    subprocess.run([sys.executable, str(REPO / "trainer" / "examples" / "make_shapes.py"), str(data),
                    "--train", "64", "--val", "32", "--size", "64", "--tfrecord", "off"], check=True, timeout=120)
    study_name = f"keras-{uuid.uuid4().hex[:6]}"
    model_name = f"shapes-{study_name}"
    spec = yaml.safe_load((example / "sweep.yaml").read_text())
    spec["job"].update(code=str(example), experiment=f"sweep-{study_name}", command=[
        sys.executable, "train.py", "--data", str(data), "--epochs", "4", "--model-name", model_name,
    ])
    spec["search_space"]["learning_rate"]["low"] = 1e-7
    spec.update(
        study=study_name, trials=6, parallelism=2, sampler="random", seed=0,
        pruner={"type": "median", "startup_trials": 2, "warmup_steps": 0},
        register={"name": model_name, "alias": "challenger"},
        enqueue=[{"learning_rate": lr, "batch_size": 16} for lr in (0.01, 0.003, 0.001, 1e-7)],
    )
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    # Unbuffered: trial 2's epoch line must arrive while it runs, not when it exits.
    env = {**sweep_env(tracking_server, tmp_path, optuna_storage), "PYTHONUNBUFFERED": "1"}

    sweep = cvops("sweep", str(spec_file), env=env, cwd=tmp_path)
    lines = []
    for line in sweep.stdout:  # trial 2 has logged an epoch (keras prints val_loss): kill it
        lines.append(line)
        if line.startswith("[trial 2]") and "val_loss" in line:
            break
    pid = _trial_process(study_name, 2)
    assert pid is not None, "".join(lines)
    os.kill(pid, signal.SIGKILL)
    output = "".join(lines) + finished(sweep)

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    trials = {trial.number: trial for trial in study.get_trials()}
    states = {number: trial.state.name for number, trial in trials.items()}
    assert [states[number] for number in range(4)] == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"], output
    assert sorted(states) == list(range(6)) and all(trials[n].state.is_finished() for n in (4, 5)), output

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_server.url)
    parent_id = study.user_attrs["cvops.parent_run_id"]
    runs = {number: client.get_run(trial.user_attrs["run_id"]) for number, trial in trials.items()}
    expected_status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for number, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["trial"] == str(number)
        assert run.info.status == expected_status[states[number]], (number, run.info.status, output)
        assert float(run.data.params["learning_rate"]) == pytest.approx(trials[number].params["learning_rate"])
        assert run.data.params["batch_size"] == str(trials[number].params["batch_size"])
    assert runs[3].data.tags["pruned"] == "true" and 0 <= int(runs[3].data.tags["pruned_at_step"]) < 4
    assert "pruned" not in runs[0].data.tags and "pruned" not in runs[2].data.tags

    parent = client.get_run(parent_id)
    best_run_id = runs[study.best_trial.number].info.run_id
    assert parent.info.status == "FINISHED", output
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    assert parent.data.tags["best_run_id"] == best_run_id
    assert client.get_metric_history(parent_id, "sweep/best_value")[-1].value == pytest.approx(study.best_value)
    challenger = client.get_model_version_by_alias(model_name, "challenger")
    assert challenger.run_id == best_run_id, output
    # The trial's class names reach the version the sweep registers: serving and `cvops evaluate` need them.
    assert json.loads(challenger.tags["cvops.class_names"]) == ["circle", "square", "triangle"], challenger.tags
