"""Links into MLflow's UI, shared by the SDK (``Run.ui_url``) and ``cvops submit``.

Kept apart from :mod:`cvops.tracking` (whose package import loads MLflow) so that the
Docker-only commands (``cvops ps``, ``logs``, ``stop``) start without MLflow.
"""
from __future__ import annotations

# MLflow 3.17's UI opens the GenAI view unless the link (or the browser's last choice) asks for
# Model training; it ignores the experiment's mlflow.experimentKind tag (docs/onboarding.md).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def run_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI, opening in the Model training view."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
