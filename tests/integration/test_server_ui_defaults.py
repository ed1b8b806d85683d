"""services/mlflow/ui_defaults.py: the UI page seeds the Model training view for new browsers.

The server is the real one (entrypoint.sh serve, gunicorn, basic-auth); what the seeded script
does in a browser is checked in tests/browser/test_first_run_in_ui.py.
"""

import pytest
import requests

pytestmark = pytest.mark.integration

SEED = 'localStorage.setItem("mlflow.workflowType_v1","\\"machine_learning\\"")'


def _ui_page(server) -> str:
    response = requests.get(f"{server.url}/", auth=server.admin_auth, timeout=30)
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/html")
    return response.text


def test_ui_page_seeds_model_training_only_where_the_browser_has_not_chosen(tracking_server):
    page = _ui_page(tracking_server)

    assert SEED in page
    assert 'if(localStorage.getItem("mlflow.workflowType_v1")===null)' in page
    # Before MLflow's own bundle, which reads the entry when it starts.
    assert page.index(SEED) < page.index("static/js/main.")


def test_ui_page_is_mlflow_s_own_when_the_default_is_turned_off(tracking_server_factory):
    server = tracking_server_factory(CVOPS_UI_DEFAULT_WORKFLOW="mlflow")
    try:
        page = _ui_page(server)
    finally:
        server.stop()

    assert "mlflow.workflowType_v1" not in page
    assert "static/js/main." in page

