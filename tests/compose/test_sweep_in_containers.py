"""`cvops sweep` with `trials_in: docker`: every trial a container of the template job's image, as
`cvops submit` runs a job, against the harness tracking server and a study in the harness
PostgreSQL (both on this host's loopback, so the trials run on the host network).

Three enqueued trials, parallelism 2: trial 1 hangs and its container is killed with `docker
kill` (a worker dying) while trial 0 completes; trial 2 then runs in the freed slot. The study and
the runs must agree, and no trial container may be left behind."""
from __future__ import annotations

import os
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.compose

optuna = pytest.importorskip("optuna")

from tests.harness.sweeps import OBJECTIVE, cvops, sweep_env  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRIAL_IMAGE = "cvops-compose-test/sweep-trial:local"
ENQUEUED = [{"lr": 0.1, "behaviour": "good"}, {"lr": 0.01, "behaviour": "hang"}, {"lr": 0.003, "behaviour": "good"}]


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trial_image():
    """Python and the cvops under test (tests/data/sweep/Dockerfile), on the stand-in base."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine reachable (`docker info` fails); trials in containers need one")
    base = os.environ.get("BASE_IMAGE", "offline/python:3.11-slim")
    if docker("image", "inspect", base).returncode != 0:
        pytest.skip(f"BASE_IMAGE={base} is not present locally (build the stand-ins with "
                    "../shared/docker-offline/setup.sh, or set BASE_IMAGE to an image you have)")
    started = time.monotonic()
    built = docker("build", "-q", "-f", str(REPO / "tests/data/sweep/Dockerfile"), "--build-arg",
                   f"BASE_IMAGE={base}", "-t", TRIAL_IMAGE, str(REPO / "trainer"), timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    print(f"\n[sweep] {TRIAL_IMAGE} built in {time.monotonic() - started:.0f} s")
    return TRIAL_IMAGE


def trial_containers(study: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label=cvops.sweep={study}").stdout.split()


def write_container_sweep(tmp_path: Path, study: str, image: str) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "objective.py").write_text(OBJECTIVE.read_text())
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(f"""
        job:
          framework: keras
          image: {image}
          code: {code}
          command: [python, objective.py]
          experiment: sweep-{study}
        study: {study}
        search_space:
          lr: {{type: float, low: 0.0001, high: 0.5, log: true}}
          behaviour: {{type: categorical, choices: [good, bad, crash, hang]}}
        objective: {{metric: val_loss, direction: min}}
        trials: 3
        parallelism: 2
        trials_in: docker
        enqueue: {ENQUEUED!r}
    """))
    return path


def test_trials_run_as_containers_and_a_killed_container_fails_its_trial(
    trial_image, tracking_server, postgres, optuna_storage, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    study_name = f"containers-{uuid.uuid4().hex[:6]}"
    spec = write_container_sweep(tmp_path, study_name, trial_image)
    env = sweep_env(tracking_server, tmp_path, optuna_storage)
    sweep = cvops("sweep", str(spec), env=env, cwd=tmp_path)
    try:
        seen = []
        for line in sweep.stdout:  # the trial's own output, streamed from its container
            seen.append(line)
            if line.startswith("[trial 1] hanging"):
                break
        else:
            pytest.fail("trial 1 never said it hangs:\n" + "".join(seen))
        hanging = docker("ps", "-q", "--filter", f"label=cvops.sweep={study_name}",
                         "--filter", "label=cvops.trial=1").stdout.split()
        assert len(hanging) == 1, seen
        assert docker("kill", hanging[0]).returncode == 0
        rest, _ = sweep.communicate(timeout=180)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        leftovers = trial_containers(study_name)
        if leftovers:
            docker("rm", "-f", *leftovers)
    output = "".join(seen) + rest
    assert sweep.returncode == 0, output
    assert not leftovers, f"trial containers left behind: {leftovers}"
    assert "[trial 0] trial done" in output and "[trial 2] trial done" in output, output
    assert postgres.password not in output

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    trials = {trial.number: trial for trial in study.get_trials()}
    assert {number: trial.state.name for number, trial in trials.items()} == {
        0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}, output

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_server.url)
    parent_id = study.user_attrs["cvops.parent_run_id"]
    runs = {number: client.get_run(trial.user_attrs["run_id"]) for number, trial in trials.items()}
    for number, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["trial"] == str(number)
        # Recorded as `cvops submit` records a job's image: its name and this host's image id.
        assert run.data.tags["image"] == trial_image and run.data.tags["image_id"].startswith("sha256:")
    for number in (0, 2):
        assert runs[number].info.status == "FINISHED", output
        assert trials[number].value == pytest.approx(runs[number].data.metrics["val_loss"])
    assert runs[1].info.status == "FAILED"
    assert runs[1].data.tags["cvops.exit_code"] == "137"  # SIGKILL, as docker reports it
    assert client.get_run(parent_id).data.tags["best_trial"] == "2"  # lr 0.003: nearer 0.01 than lr 0.1
