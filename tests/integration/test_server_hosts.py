"""A team host name and browser origins, set in .env, reach MLflow's security middleware.

The server runs behind gunicorn, where `mlflow server` refuses --allowed-hosts and
--cors-allowed-origins; entrypoint.sh hands them over as MLflow's own variables instead.
"""

import pytest
import requests

pytestmark = pytest.mark.integration

TEAM_HOST = "mlflow.team.example"
TEAM_ORIGIN = "https://notebooks.team.example"


@pytest.fixture(scope="module")
def team_server(tracking_server_factory):
    server = tracking_server_factory(MLFLOW_ALLOWED_HOSTS=f"{TEAM_HOST},{TEAM_HOST}:443",
                                     MLFLOW_CORS_ALLOWED_ORIGINS=TEAM_ORIGIN)
    yield server
    server.stop()


def _search_experiments(server, **headers) -> requests.Response:
    return requests.post(f"{server.url}/api/2.0/mlflow/experiments/search", json={"max_results": 1},
                         auth=server.admin_auth, headers=headers, timeout=30)


@pytest.mark.parametrize("host", [
    TEAM_HOST, f"{TEAM_HOST}:443",
    "mlflow:5000",  # a trainer container on the compose network
    "localhost:5000", "127.0.0.1:5000", "[::1]:5000",  # MLflow's defaults still hold
    "10.1.2.3:5000", "172.20.0.3:5000", "192.168.1.20:5000",
])
def test_the_team_host_the_service_name_and_private_addresses_are_served(team_server, host):
    response = _search_experiments(team_server, Host=host)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", ["evil.example", "mlflow.team.example.evil.example:5000", "8.8.8.8:5000"])
def test_other_hosts_are_refused(team_server, host):
    response = _search_experiments(team_server, Host=host)

    assert response.status_code == 403
    assert "Invalid Host header" in response.text


def test_the_team_origin_may_write_and_another_origin_may_not(team_server):
    allowed = _search_experiments(team_server, Origin=TEAM_ORIGIN)
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers.get("Access-Control-Allow-Origin") == TEAM_ORIGIN

    blocked = _search_experiments(team_server, Origin="https://attacker.example")
    assert blocked.status_code == 403
