"""Hostile input through the SDK (issue 16): values a training script may hand it never stop
training, and what a tracked run records (params, tags, artifacts, log output) never holds the
tracking password that `cvops submit` puts in a job's environment."""
from __future__ import annotations

import logging
from pathlib import Path

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
