"""A sweep as the tests run it: an Optuna database beside MLflow's in the harness PostgreSQL, the
`cvops sweep` command with a user's environment, and a sweep spec over tests/data/sweep/objective.py
(a deterministic val_loss curve per trial, no framework)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import cvops as cvops_package

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


def create_optuna_database(postgres) -> str:
    """A fresh database for Optuna's tables, as `migrate` creates beside MLflow's; its URL."""
    name = f"optuna_{uuid.uuid4().hex[:8]}"
    connection = postgres.connect()
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return postgres.url(name)


@pytest.fixture
def optuna_storage(postgres):
    return create_optuna_database(postgres)


def sweep_env(server, tmp_path, storage_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MLFLOW_", "CVOPS_", "AWS_"))}
    env.update({
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": server.admin_username,
        "MLFLOW_TRACKING_PASSWORD": server.admin_password,
        "CVOPS_SWEEP_STORAGE": storage_url,
        "CVOPS_SPOOL_DIR": str(tmp_path / "spool"),
        "CVOPS_CACHE_DIR": str(tmp_path / "cache"),
        "CVOPS_FLUSH_INTERVAL_S": "0.2",
        "PYTHONPATH": str(Path(cvops_package.__file__).parents[1]),  # the cvops under test
    })
    return env


def write_sweep(tmp_path, study: str, enqueued=ENQUEUED, heartbeat_s: int = 30, trials: int = 6,
                extra: str = "") -> Path:
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
        trials: {trials}
        parallelism: 2
        enqueue: {enqueued!r}
        heartbeat_s: {heartbeat_s}
    """) + extra)
    return path


def cvops(*args: str, env: dict[str, str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvops", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def finished(process: subprocess.Popen, timeout_s: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, output
    return output
