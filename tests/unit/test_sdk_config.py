"""cvops.config: the one reader of the environment, with errors that name the variable."""
from __future__ import annotations

import pytest

from cvops.config import ConfigError, load_settings


def test_unconfigured_means_not_tracked_with_the_reason():
    settings = load_settings({})
    assert not settings.enabled
    assert "MLFLOW_TRACKING_URI" in settings.not_tracked_reason


def test_disabled_wins_over_a_configured_server():
    settings = load_settings({"MLFLOW_TRACKING_URI": "http://mlflow:5000", "CVOPS_DISABLED": "1"})
    assert not settings.enabled and "CVOPS_DISABLED" in settings.not_tracked_reason


def test_full_environment_is_read():
    settings = load_settings({
        "MLFLOW_TRACKING_URI": "https://mlflow.example.org",
        "MLFLOW_EXPERIMENT_NAME": "detector",
        "MLFLOW_RUN_ID": "abc123",
        "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret",
        "CVOPS_SPOOL_DIR": "/data/spool", "CVOPS_SPOOL_MAX_BYTES": "20G",
        "CVOPS_FLUSH_INTERVAL_S": "0.5", "CVOPS_EXIT_FLUSH_TIMEOUT_S": "10",
        "CVOPS_TAG_TEAM": "vision", "CVOPS_TAG_TASK": "detection",
        "CVOPS_IMAGE": "registry/cvops-detectron2:1.0", "CVOPS_IMAGE_DIGEST": "sha256:abc",
        "CVOPS_SYSTEM_METRICS": "off", "CVOPS_SEED": "42",
    })
    assert settings.enabled
    assert settings.experiment_name == "detector" and settings.resume_run_id == "abc123"
    assert str(settings.spool_dir) == "/data/spool" and settings.spool_max_bytes == 20 * 1024**3
    assert settings.flush_interval_s == 0.5 and settings.exit_flush_timeout_s == 10
    assert settings.tags == {"team": "vision", "task": "detection"}
    assert not settings.system_metrics and settings.seed == 42


def test_system_metrics_default_on_in_containers():
    assert load_settings({"CVOPS_IN_CONTAINER": "1"}).system_metrics
    assert not load_settings({"CVOPS_IN_CONTAINER": "0"}).system_metrics


def test_export_on_registration_is_opt_in():
    assert load_settings({}).export_on == "off"
    assert load_settings({"CVOPS_EXPORT": "Register"}).export_on == "register"
    assert load_settings({"CVOPS_EXPORT": "promote"}).export_on == "promote"


@pytest.mark.parametrize("environ, variable", [
    ({"CVOPS_SPOOL_MAX_BYTES": "lots"}, "CVOPS_SPOOL_MAX_BYTES"),
    ({"CVOPS_SPOOL_MAX_BYTES": "10"}, "CVOPS_SPOOL_MAX_BYTES"),
    ({"CVOPS_FLUSH_INTERVAL_S": "-1"}, "CVOPS_FLUSH_INTERVAL_S"),
    ({"CVOPS_EXIT_FLUSH_TIMEOUT_S": "soon"}, "CVOPS_EXIT_FLUSH_TIMEOUT_S"),
    ({"CVOPS_DISABLED": "maybe"}, "CVOPS_DISABLED"),
    ({"MLFLOW_TRACKING_URI": "mlflow:5000"}, "MLFLOW_TRACKING_URI"),
    ({"MLFLOW_TRACKING_USERNAME": "alice"}, "MLFLOW_TRACKING_PASSWORD"),
    ({"CVOPS_SEED": "x"}, "CVOPS_SEED"),
    ({"CVOPS_EXPORT": "on-train"}, "CVOPS_EXPORT"),
])
def test_bad_values_name_the_variable(environ, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ)
