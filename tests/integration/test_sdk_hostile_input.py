"""Hostile input through the SDK (issue 16): values a training script may hand it never stop
training, and what a tracked run records (params, tags, artifacts, log output) never holds the
tracking password that `cvops submit` puts in a job's environment."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

import cvops
from tests.integration.sdk_env import use_sdk_env

pytestmark = [pytest.mark.integration, pytest.mark.hostile]


def test_a_job_s_run_records_no_secret_and_survives_bad_metric_values(tracking_server, tmp_path, monkeypatch,
                                                                      caplog, capfd):
    """As in a job container: the password is in the environment (docs/jobs.md). Found here: a
    metric value too large for a float (an int of 400 digits) raised OverflowError out of
    log_metrics into the training loop; it is now skipped with a warning, like a non-numeric one."""
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    monkeypatch.setenv("CVOPS_IN_CONTAINER", "1")
    password = tracking_server.admin_password
    caplog.set_level(logging.DEBUG)

    with cvops.start_run(experiment="sdk-hostile", run_name="secrets", seed=7) as run:
        run.log_params({"lr": 0.01, "note": "x" * 7000})
        run.log_metrics({"loss": 0.5, "huge": 10**400, "text": "high", "none": None, "nan": float("nan")}, step=1)
        run.log_dict({"classes": ["cat"]}, "meta/classes.json")

    client = MlflowClient(tracking_server.url)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [0.5]
    assert not client.get_metric_history(run.run_id, "huge")
    recorded = [*stored.data.params.items(), *stored.data.tags.items()]
    assert not [item for item in recorded if password in item[0] or password in item[1]]
    for item in client.list_artifacts(run.run_id, "environment") + client.list_artifacts(run.run_id, "params"):
        if not item.is_dir:
            assert password not in Path(client.download_artifacts(run.run_id, item.path, str(tmp_path))).read_text()
    output = capfd.readouterr()
    assert password not in output.out + output.err + caplog.text
    assert "huge" in caplog.text  # the skipped value is named in the warning


def test_a_step_or_timestamp_that_is_not_a_whole_64_bit_number_is_refused_at_the_call(tracking_server, tmp_path,
                                                                                     monkeypatch):
    """Found fuzzing the SDK's input (tests/unit/test_sdk_run.py): ``int()`` stored a step of 3.7
    as 3, and a step beyond 64 bits went to the server, which refused the record, the call's
    other metrics with it, long after the call had returned. Both are refused at the call now,
    naming the field; the extremes MLflow can store are stored as given."""
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    int64_min, int64_max = -2**63, 2**63 - 1
    with cvops.start_run(experiment="sdk-hostile", run_name="steps") as run:
        for step in (3.7, 2**63, "7"):
            with pytest.raises(ValueError, match="metric's step must be a whole number"):
                run.log_metrics({"loss": 1.0, "accuracy": 0.5}, step=step)
        with pytest.raises(ValueError, match="metric's timestamp_ms must be a whole number"):
            run.log_metrics({"loss": 1.0, "accuracy": 0.5}, step=1, timestamp_ms=2**64)
        run.log_metrics({"loss": 0.25}, step=int64_min, timestamp_ms=0)
        run.log_metrics({"loss": 0.5}, step=int64_max, timestamp_ms=int64_max)
        run.log_metrics({"loss": 0.75}, step=np.int64(4), timestamp_ms=np.float64(1_700_000_000_000.0))

    client = MlflowClient(tracking_server.url)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    stored = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.run_id, "loss"))
    assert stored == [(int64_min, 0, 0.25), (4, 1_700_000_000_000, 0.75), (int64_max, int64_max, 0.5)]
    assert not client.get_metric_history(run.run_id, "accuracy")
