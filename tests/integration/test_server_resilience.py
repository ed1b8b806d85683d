"""The server rides out a PostgreSQL restart and its own restart without anyone touching it."""

import contextlib
import uuid

import pytest
import requests

pytestmark = pytest.mark.integration


def search(server, auth=None):
    return requests.get(f"{server.url}/api/2.0/mlflow/experiments/search", auth=auth or server.admin_auth,
                        params={"max_results": 5}, timeout=30)


@pytest.fixture(scope="module")
def member(tracking_server):
    """A user who is not an admin: MLflow reads their grants from the auth database on every call."""
    account = (f"member-{uuid.uuid4().hex[:6]}", f"member-pw-{uuid.uuid4().hex}")
    tracking_server.create_user(*account)
    return account


def fill_pools_then_expect_every_call_to_succeed(server, member, close_connections):
    # Fill every worker's connection pools first (the tracking and the auth database's), so that
    # closing the connections leaves them holding dead ones.
    for _ in range(8):
        assert search(server).status_code == search(server, member).status_code == 200

    close_connections()

    # Pooled connections are checked before use (server_patches.py) and dead ones replaced:
    # the first calls already succeed.
    for auth in [None, member] * 8:
        response = search(server, auth)
        assert response.status_code == 200, f"{response.status_code} {response.text[:500]}\n{server.log()}"


def test_server_survives_postgres_restart(tracking_server, postgres, member):
    fill_pools_then_expect_every_call_to_succeed(tracking_server, member, postgres.restart)
    created = requests.post(f"{tracking_server.url}/api/2.0/mlflow/experiments/create",
                            auth=tracking_server.admin_auth,
                            json={"name": f"after-pg-restart-{uuid.uuid4().hex[:8]}"}, timeout=30)
    assert created.status_code == 200, created.text


def test_server_replaces_connections_postgres_ended(tracking_server, postgres, member):
    """What idle_session_timeout, a pooler or an operator's pg_terminate_backend do to idle sessions."""
    def end_the_server_s_sessions():
        with contextlib.closing(postgres.connect()) as maintenance, maintenance.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = ANY(%s)",
                        ([tracking_server.backend_db, tracking_server.auth_db],))
            assert cur.fetchone()[0] > 0

    fill_pools_then_expect_every_call_to_succeed(tracking_server, member, end_the_server_s_sessions)


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
