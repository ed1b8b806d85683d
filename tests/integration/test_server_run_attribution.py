"""A run says who created it from the login, whatever the client sends.

Before, the server stored the client's claim: a job by team account member1 in a container whose
user is `trainer` showed "Created by: trainer", and anyone could create a run in someone else's name.
"""

import uuid

import cvops
import pytest
import requests
from mlflow import MlflowClient

from tests.integration.sdk_env import use_sdk_env

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow"
CONTAINER_USER = "trainer"


@pytest.fixture(scope="module")
def members(tracking_server):
    return tracking_server.create_users("member1", "member2")


def call(server, auth, path, **body):
    response = requests.post(f"{server.url}{API}{path}", json=body, auth=auth, timeout=30)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:500]}"
    return response.json()


def attribution(server, run_id):
    """(RunInfo.user_id, the mlflow.user tag) as anyone reading the run sees them."""
    run = requests.get(f"{server.url}{API}/runs/get", params={"run_id": run_id}, auth=server.admin_auth,
                       timeout=30).json()["run"]
    tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
    return run["info"].get("user_id"), tags.get("mlflow.user")


def new_experiment(server, auth):
    return call(server, auth, "/experiments/create", name=f"attribution-{uuid.uuid4().hex[:8]}")["experiment_id"]


def act_as_container_user_logged_in_as(monkeypatch, account):
    """What a trainer container looks like: its OS user is `trainer`, the login is the team member's."""
    for variable in ("USER", "LOGNAME", "USERNAME"):
        monkeypatch.setenv(variable, CONTAINER_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", account[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", account[1])


def test_cvops_sdk_run_is_the_login_s(tracking_server, members, monkeypatch, tmp_path):
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    member1 = members["member1"]
    act_as_container_user_logged_in_as(monkeypatch, member1)

    with cvops.start_run(experiment=f"attribution-sdk-{uuid.uuid4().hex[:8]}",
                         tags={"mlflow.user": CONTAINER_USER}) as run:
        run.log_metric("total_loss", 0.5, step=1)

    assert run.run_id is not None
    assert attribution(tracking_server, run.run_id) == (member1[0], member1[0])


def test_mlflow_client_run_is_the_login_s(tracking_server, members, monkeypatch):
    member1 = members["member1"]
    act_as_container_user_logged_in_as(monkeypatch, member1)
    client = MlflowClient(tracking_uri=tracking_server.url)

    run = client.create_run(new_experiment(tracking_server, member1))

    assert attribution(tracking_server, run.info.run_id) == (member1[0], member1[0])


def test_a_member_cannot_create_a_run_in_another_member_s_name(tracking_server, members):
    member1, member2 = members["member1"], members["member2"]
    run_id = call(tracking_server, member2, "/runs/create", experiment_id=new_experiment(tracking_server, member2),
                  user_id=member1[0], tags=[{"key": "mlflow.user", "value": member1[0]}])["run"]["info"]["run_id"]

    assert attribution(tracking_server, run_id) == (member2[0], member2[0])


def test_later_tag_writes_do_not_change_attribution(tracking_server, members):
    """They are ignored, not refused: a refused log-batch would lose the metrics and tags beside it."""
    member1, member2 = members["member1"], members["member2"]
    run_id = call(tracking_server, member2, "/runs/create",
                  experiment_id=new_experiment(tracking_server, member2))["run"]["info"]["run_id"]

    call(tracking_server, member2, "/runs/set-tag", run_id=run_id, key="mlflow.user", value=member1[0])
    call(tracking_server, member2, "/runs/log-batch", run_id=run_id,
         tags=[{"key": "mlflow.user", "value": member1[0]}, {"key": "dataset", "value": "shapes"}],
         metrics=[{"key": "total_loss", "value": 0.25, "timestamp": 0, "step": 1}])
    call(tracking_server, member2, "/runs/delete-tag", run_id=run_id, key="mlflow.user")

    assert attribution(tracking_server, run_id) == (member2[0], member2[0])
    run = requests.get(f"{tracking_server.url}{API}/runs/get", params={"run_id": run_id},
                       auth=tracking_server.admin_auth, timeout=30).json()["run"]
    assert {"key": "dataset", "value": "shapes"} in run["data"]["tags"]
    assert [metric["value"] for metric in run["data"]["metrics"]] == [0.25]
