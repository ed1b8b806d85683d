"""What the REST API sends back: compact JSON (services/mlflow/server_patches.py), the same document
MLflow's pretty-printed responses carry, in well under half the bytes."""

import importlib.util
import json
import math
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

SERVER_DIR = Path(__file__).resolve().parents[2] / "services" / "mlflow"


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


def _server_module(name: str):
    spec = importlib.util.spec_from_file_location(name, SERVER_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_and_histories_are_encoded_to_mlflow_s_bytes():
    """The answers of the experiment page, run page and chart view skip MessageToDict
    (server_patches._plain_dict): every value they can hold comes out as MLflow's own encoder
    writes it."""
    from mlflow.entities import (Dataset, DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput, Metric, Param,
                                 Run, RunData, RunInfo, RunInputs, RunOutputs, RunTag)
    from mlflow.entities.metric import MetricWithRunId
    from mlflow.protos.service_pb2 import (GetExperiment, GetMetricHistory, GetMetricHistoryBulkInterval, GetRun,
                                           SearchRuns)
    from mlflow.utils.proto_json_utils import message_to_json

    server_patches = _server_module("server_patches")
    plain = frozenset([GetMetricHistory.Response, GetMetricHistoryBulkInterval.Response, GetRun.Response,
                       SearchRuns.Response])
    encode = server_patches._compact(message_to_json, plain)
    values = [0.0, -0.0, 0.1, 1.0, 100.0, 1e16, 1e-5, 5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf]
    points = [Metric(f"loss/ü{i % 3}", value, 2 ** 63 - 1 - i, -i) for i, value in enumerate(values)]

    history = GetMetricHistory.Response(next_page_token="tok")
    history.metrics.extend([point.to_proto() for point in points])
    history.metrics.add(key="only-a-key")  # unset fields stay out, as MessageToDict leaves them
    bulk = GetMetricHistoryBulkInterval.Response()
    bulk.metrics.extend([MetricWithRunId(point, f"run{i}").to_proto() for i, point in enumerate(points)])
    runs = [Run(RunInfo(run_id=f"r{i}", experiment_id="7", user_id="ü", status=status, start_time=1_700_000_000_000,
                        end_time=None if i else 2 ** 62, lifecycle_stage="active", artifact_uri="s3://b/7/r/artifacts",
                        run_name=f"run {i}"),
                RunData(metrics=points, params=[Param("lr", "0.01"), Param("empty", "")],
                        tags=[RunTag("mlflow.note.content", "line\nbreak \"quoted\" \u2603")]),
                RunInputs([DatasetInput(Dataset("coco", "d41d", "s3", '{"uri": "s3://d"}', "{}", None),
                                        [InputTag("mlflow.data.context", "train")])],
                          [LoggedModelInput("m-1")]),
                RunOutputs([LoggedModelOutput("m-2", 3)]))
            for i, status in enumerate(["RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED"])]
    search = SearchRuns.Response(next_page_token="next")
    search.runs.extend([run.to_proto() for run in runs])
    for message in (history, bulk, search, GetRun.Response(run=runs[0].to_proto()), GetMetricHistory.Response(),
                    GetMetricHistoryBulkInterval.Response(), SearchRuns.Response(), GetRun.Response()):
        assert encode(message) == message_to_json(message, pretty=False)
    assert encode(GetExperiment.Response()) == "{}"  # anything else: MLflow's encoder, compact
    assert '"value":"NaN"' in encode(bulk) and '"timestamp":9223372036854775807' in encode(bulk)
    assert '"status":"KILLED"' in encode(search)


@pytest.mark.patches_on_and_off
def test_chart_histories_read_back_alike_on_both_servers(tracking_server):
    """What the chart view reads, over HTTP, with the patches on and off (MLflow's own store and
    encoder): the same points."""
    admin = requests.Session()
    admin.auth = tracking_server.admin_auth
    api = f"{tracking_server.url}/ajax-api/2.0/mlflow"
    run_ids = [tracking_server.create_run(f"charts-{uuid.uuid4().hex[:8]}")[1] for _ in range(2)]
    for run_id in run_ids:
        admin.post(f"{tracking_server.url}/api/2.0/mlflow/runs/log-batch", json={"run_id": run_id, "metrics": [
            {"key": "loss", "value": 1.0 / (step + 1), "timestamp": 1_700_000_000_000 + step, "step": step}
            for step in range(900)]}).raise_for_status()
    bulk = admin.get(f"{api}/metrics/get-history-bulk-interval",
                     params={"run_ids": run_ids, "metric_key": "loss", "max_results": 320})
    history = admin.get(f"{api}/metrics/get-history", params={"run_id": run_ids[0], "metric_key": "loss"})
    bulk.raise_for_status()
    history.raise_for_status()
    points = bulk.json()["metrics"]
    assert [point["run_id"] for point in points] == [run_ids[0]] * 320 + [run_ids[1]] * 320
    # NTILE(320) over 900 steps: buckets of 3 (260 of them), then of 2; the last step is added in
    # place of the last bucket's first.
    assert [point["step"] for point in points[:320]] == [*range(0, 780, 3), *range(780, 898, 2), 899]
    assert points[1] == {"key": "loss", "value": 0.25, "timestamp": 1_700_000_000_003, "step": 3, "run_id": run_ids[0]}
    assert len(history.json()["metrics"]) == 900
