"""The few MLflow REST calls the background worker makes, each with one short attempt.

``MlflowClient`` retries a failing request for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
backoff factor 2, 120 s timeout). That is right for a user's one-off call but wrong for the
worker: it must notice an outage within seconds, spool, and retry on its own schedule. So these
calls go through MLflow's own ``http_request`` with ``max_retries=0`` and a short timeout; every
failure is classified as :class:`Transient` (retry later: connection refused, timeout, 5xx, 429,
401/403 while credentials get fixed) or :class:`Rejected` (the server refuses this content).
"""
from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass

import requests
from google.protobuf.json_format import ParseDict
from mlflow.exceptions import MlflowException
from mlflow.protos import service_pb2
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.mime_type_utils import _guess_mime_type
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request

# mlflow.experimentKind is what MLflow 3's UI reads to choose an experiment's view; this value
# opens the "Model training" view (runs, charts) rather than the GenAI one (traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_TRAINING = "custom_model_development"

_TRANSIENT_STATUS = {401, 403, 408, 425, 429}
_STALE_CONNECTION_MARKERS = ("Connection aborted", "RemoteDisconnected", "Connection reset by peer", "BrokenPipe")


class TransportError(Exception):
    pass


class Transient(TransportError):
    """The server is away, slow, overloaded or refusing our credentials: keep the data, retry."""


class Rejected(TransportError):
    """The server understood the request and refuses its content (e.g. a changed param value)."""

    def __init__(self, message: str, error_code: str = ""):
        super().__init__(message)
        self.error_code = error_code


def _json_double(value: float) -> float | str:
    """A double as protobuf's JSON mapping writes it: JSON has no NaN or infinities."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _reason(exc: Exception) -> str:
    """The useful tail of a requests/urllib3 error chain (``Connection refused``, ``timed out``)."""
    text = str(exc)
    for marker in ("Caused by ", "Read timed out", "Connection refused", "Name or service not known"):
        if marker in text:
            return text[text.index(marker):][:160].rstrip(")'\"")
    return text[:200]


@dataclass
class Transport:
    tracking_uri: str
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        self._creds = get_default_host_creds(self.tracking_uri)

    # ----------------------------------------------------------------- plumbing
    def _request(self, creds, endpoint: str, method: str, **kwargs) -> requests.Response:
        for attempt in (1, 2):
            try:
                response = http_request(creds, endpoint, method, max_retries=0, backoff_factor=0,
                                        timeout=self.timeout_s, **kwargs)
                break
            except (requests.RequestException, MlflowException, OSError) as exc:
                # After a server restart the pooled keep-alive connections are dead; the first
                # request on each fails at once. One immediate retry opens a fresh connection.
                stale = any(marker in str(exc) for marker in _STALE_CONNECTION_MARKERS)
                if attempt == 2 or not stale or "data" in kwargs:
                    raise Transient(f"{method} {endpoint}: {_reason(exc)}") from exc
        if response.status_code >= 500 or response.status_code in _TRANSIENT_STATUS:
            raise Transient(f"{method} {endpoint}: HTTP {response.status_code} {response.text[:200]}")
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:500]}
            raise Rejected(f"{method} {endpoint}: HTTP {response.status_code} {body.get('message', body)}",
                           body.get("error_code", ""))
        return response

    def _call(self, endpoint: str, message, method: str = "POST") -> dict:
        return self._send(endpoint, json.loads(message_to_json(message)), method)

    def _send(self, endpoint: str, body: dict, method: str = "POST") -> dict:
        if method == "GET":
            response = self._request(self._creds, endpoint, method, params=body)
        else:
            response = self._request(self._creds, endpoint, method, json=body)
        return response.json() if response.content else {}

    # ----------------------------------------------------------------- tracking API
    def healthy(self) -> bool:
        try:
            self._request(self._creds, "/health", "GET")
            return True
        except TransportError:
            return False

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        # The REST body is written directly: through MLflow's entities and protobuf it cost ~2 ms
        # per 200 points (0.15 ms this way) in the training process, where the sender thread
        # competes with the training loop for the GIL.
        self._send("/api/2.0/mlflow/runs/log-batch", {
            "run_id": run_id,
            "metrics": [{"key": key, "value": _json_double(value), "timestamp": timestamp, "step": step}
                        for key, value, timestamp, step in metrics],
            "params": [{"key": key, "value": str(value)} for key, value in params],
            "tags": [{"key": key, "value": str(value)} for key, value in tags],
        })

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created (tagged for the Model training view) if missing."""
        try:
            found = self._call("/api/2.0/mlflow/experiments/get-by-name",
                               service_pb2.GetExperimentByName(experiment_name=name), method="GET")
            return found["experiment"]["experiment_id"]
        except Rejected as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            created = self._call("/api/2.0/mlflow/experiments/create", service_pb2.CreateExperiment(
                name=name,
                tags=[service_pb2.ExperimentTag(key=EXPERIMENT_KIND_TAG, value=EXPERIMENT_KIND_MODEL_TRAINING)],
            ))
            return created["experiment_id"]
        except Rejected as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another process won the race
                raise
            return self.experiment_id(name)

    def create_run(self, experiment_id: str, start_ms: int, run_name: str | None, tags: dict) -> dict:
        message = service_pb2.CreateRun(
            experiment_id=experiment_id, start_time=start_ms, run_name=run_name or "",
            tags=[service_pb2.RunTag(key=k, value=str(v)) for k, v in tags.items()],
        )
        return self._call("/api/2.0/mlflow/runs/create", message)["run"]["info"]

    def get_run(self, run_id: str) -> dict:
        return self._call("/api/2.0/mlflow/runs/get", service_pb2.GetRun(run_id=run_id), method="GET")["run"]

    def update_run(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        message = service_pb2.UpdateRun(run_id=run_id, status=status)
        if end_ms is not None:
            message.end_time = end_ms
        self._call("/api/2.0/mlflow/runs/update", message)

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        message = service_pb2.LogInputs(run_id=run_id)
        for dataset in datasets:
            ParseDict(dataset, message.datasets.add(), ignore_unknown_fields=True)
        self._call("/api/2.0/mlflow/runs/log-inputs", message)

    def upload_artifact(self, artifact_uri: str, local_file: str, artifact_path: str | None) -> None:
        """PUT one file under the run's artifact root (the server proxies it to S3)."""
        if not artifact_uri.startswith("mlflow-artifacts:"):
            # Not a proxied store: let MLflow's artifact repository handle the scheme.
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            try:
                get_artifact_repository(artifact_uri).log_artifact(local_file, artifact_path)
            except Exception as exc:  # any backend's error: keep the file, retry later
                raise Transient(f"uploading {local_file}: {exc}") from exc
            return
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        base_url = MlflowArtifactsRepository.resolve_uri(artifact_uri, self.tracking_uri)
        name = os.path.basename(local_file)
        endpoint = posixpath.join("/", *(p for p in (artifact_path, name) if p))
        with open(local_file, "rb") as stream:
            self._request(get_default_host_creds(base_url), endpoint, "PUT", data=stream,
                          extra_headers={"Content-Type": _guess_mime_type(name)})
