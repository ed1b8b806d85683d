"""The server rides out a PostgreSQL restart and its own restart without anyone touching it."""

import uuid

import pytest
import requests

pytestmark = pytest.mark.integration


def search(server):
    return requests.get(f"{server.url}/api/2.0/mlflow/experiments/search", auth=server.admin_auth,
                        params={"max_results": 5}, timeout=30)


def test_server_survives_postgres_restart(tracking_server, postgres):
    # Fill every worker's connection pools first, so the restart leaves them holding dead connections.
    for _ in range(8):
        assert search(tracking_server).status_code == 200

    postgres.restart()

    # pool_pre_ping (MLflow's engines) replaces dead connections: the first calls already succeed.
    for _ in range(8):
        response = search(tracking_server)
        assert response.status_code == 200, f"{response.status_code} {response.text[:500]}\n{tracking_server.log()}"
    created = requests.post(f"{tracking_server.url}/api/2.0/mlflow/experiments/create",
                            auth=tracking_server.admin_auth,
                            json={"name": f"after-pg-restart-{uuid.uuid4().hex[:8]}"}, timeout=30)
    assert created.status_code == 200, created.text


def test_server_restart_keeps_data_and_port(tracking_server_factory):
    server = tracking_server_factory()
    name = f"persisted-{uuid.uuid4().hex[:8]}"
    created = requests.post(f"{server.url}/api/2.0/mlflow/experiments/create", auth=server.admin_auth,
                            json={"name": name}, timeout=30)
    assert created.status_code == 200, created.text

    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=5)
    restart_s = server.start()

    fetched = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name", auth=server.admin_auth,
                           params={"experiment_name": name}, timeout=30)
    assert fetched.status_code == 200
    assert fetched.json()["experiment"]["experiment_id"] == created.json()["experiment_id"]
    print(f"\n[measure] server restart to healthy: {restart_s:.1f} s")
