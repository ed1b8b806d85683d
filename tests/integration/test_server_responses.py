"""What the REST API sends back: compact JSON (services/mlflow/server_patches.py), the same document
MLflow's pretty-printed responses carry, in well under half the bytes."""

import json
import uuid

import pytest
import requests

pytestmark = pytest.mark.integration


def _compact(document) -> str:
    return json.dumps(document, separators=(",", ":"))


def test_runs_come_back_as_compact_json_for_admins_and_users(tracking_server):
    admin = requests.Session()
    admin.auth = tracking_server.admin_auth
    api = f"{tracking_server.url}/api/2.0/mlflow"
    experiment_id, run_id = tracking_server.create_run(f"compact-{uuid.uuid4().hex[:8]}",
                                                       start_time=1_700_000_000_000)
    admin.post(f"{api}/runs/log-batch", json={
        "run_id": run_id, "params": [{"key": f"param_{k}", "value": str(k)} for k in range(50)],
        "metrics": [{"key": "mAP", "value": 0.5, "timestamp": 1_700_000_000_001, "step": 3}]}).raise_for_status()
    username, password = f"reader-{uuid.uuid4().hex[:6]}", f"reader-pw-{uuid.uuid4().hex}"
    tracking_server.create_user(username, password)  # a plain user's searches pass MLflow's auth filter

    responses = [admin.get(f"{api}/runs/get", params={"run_id": run_id}),
                 admin.post(f"{api}/runs/search", json={"experiment_ids": [experiment_id]}),
                 requests.post(f"{api}/runs/search", json={"experiment_ids": [experiment_id]},
                               auth=(username, password), timeout=30)]
    for response in responses:
        response.raise_for_status()
        assert response.text == _compact(response.json()), response.url
    run = responses[0].json()["run"]
    assert run["info"]["start_time"] == 1_700_000_000_000  # int64 fields stay JSON numbers, as MLflow sends them
    assert run["data"]["metrics"] == [{"key": "mAP", "value": 0.5, "timestamp": 1_700_000_000_001, "step": 3}]
    assert [found["info"]["run_id"] for found in responses[2].json()["runs"]] == [run_id]
