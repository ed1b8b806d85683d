"""cvops.doctor.checks facts that restate MLflow's, held to MLflow's own values."""
import pytest

from cvops.doctor.checks import INVALID_HOST_MSG_START


def test_the_host_rejection_text_is_mlflow_s():
    # The doctor cannot import it: mlflow.server needs Flask, which the SDK's mlflow-skinny lacks.
    security_utils = pytest.importorskip("mlflow.server.security_utils", reason="needs the full mlflow (Flask)")
    assert security_utils.INVALID_HOST_MSG.startswith(INVALID_HOST_MSG_START)
