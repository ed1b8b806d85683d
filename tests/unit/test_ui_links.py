"""Run links printed by the SDK and `cvops submit` open MLflow's UI in the Model training view."""
import pytest

from cvops.ui_links import run_ui_url


@pytest.mark.parametrize("tracking_uri", ["http://localhost:5000", "http://localhost:5000/"])
def test_run_links_open_in_the_model_training_view(tracking_uri):
    assert run_ui_url(tracking_uri, "3", "abc") == \
        "http://localhost:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


@pytest.mark.parametrize("tracking_uri", ["https://ml.example/mlflow", "https://ml.example/mlflow/"])
def test_run_links_keep_a_path_prefix(tracking_uri):
    assert run_ui_url(tracking_uri, "3", "abc") == \
        "https://ml.example/mlflow/#/experiments/3/runs/abc?workflowType=machine_learning"
