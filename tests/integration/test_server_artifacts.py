"""A client that knows only the tracking URL and its credentials moves every byte through the server.

The S3 endpoint is the harness's SeaweedFS, standing in for MinIO (no MinIO binary here). The client
runs in a separate process whose environment has no AWS_* / MLFLOW_S3_ENDPOINT_URL at all and which
cannot reach the S3 endpoint, like a laptop outside the compose network: a presigned URL handed to
it would fail the transfer.
"""

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time

import pytest
import requests

from tests.harness.fixtures import free_port

pytestmark = pytest.mark.integration

ARTIFACT_MB = 200

CLIENT_SCRIPT = r"""
import json, sys, time
from mlflow import MlflowClient

path, out_dir = sys.argv[1], sys.argv[2]
client = MlflowClient()
exp = client.create_experiment("artifact-roundtrip-" + str(time.time_ns()))
run = client.create_run(exp)
client.log_param(run.info.run_id, "SOLVER.BASE_LR", "0.01")
for step in range(5):
    client.log_metric(run.info.run_id, "total_loss", 1.0 / (step + 1), step=step)
t0 = time.perf_counter()
client.log_artifact(run.info.run_id, path, artifact_path="checkpoints")
upload_s = time.perf_counter() - t0
client.set_terminated(run.info.run_id)

fetched = client.get_run(run.info.run_id)
history = client.get_metric_history(run.info.run_id, "total_loss")
t0 = time.perf_counter()
local = client.download_artifacts(run.info.run_id, "checkpoints", out_dir)
download_s = time.perf_counter() - t0
print(json.dumps({
    "run_id": run.info.run_id,
    "artifact_uri": fetched.info.artifact_uri,
    "params": fetched.data.params,
    "metric_steps": [(m.step, m.value) for m in history],
    "status": fetched.info.status,
    "local_dir": local,
    "upload_s": upload_s,
    "download_s": download_s,
}))
"""


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "model_final.pth"
    with open(path, "wb") as f:
        for _ in range(ARTIFACT_MB):
            f.write(os.urandom(1 << 20))
    return path


def client_only_env(server) -> dict:
    """What a team member's shell has: the tracking URL and a login, nothing about S3, and no route
    to S3 (every host but the tracking server's goes through a proxy where nothing listens)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "BOTO", "S3_")) and not k.lower().endswith("_proxy")}
    unreachable = f"http://127.0.0.1:{free_port()}"
    env.update({
        "MLFLOW_TRACKING_URI": server.url.replace("127.0.0.1", "localhost"),
        "HTTP_PROXY": unreachable,
        "HTTPS_PROXY": unreachable,
        "NO_PROXY": "localhost",
        "MLFLOW_TRACKING_USERNAME": server.admin_username,
        "MLFLOW_TRACKING_PASSWORD": server.admin_password,
        # Lower the client's multipart threshold so this 200 MB file takes the path a multi-GB
        # checkpoint takes; the server must still keep the transfer proxied.
        "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(50 * 1024**2),
        "MLFLOW_MULTIPART_DOWNLOAD_MINIMUM_FILE_SIZE": str(50 * 1024**2),
        # No credential file or instance metadata may sneak S3 access in either.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


def test_the_client_environment_reaches_the_server_but_not_s3(tracking_server, s3):
    """What makes the transfer tests prove "no presigned URL": a URL into S3 cannot be fetched."""
    probe = ("import sys, requests\n"
             "print(requests.get(sys.argv[1] + '/health', timeout=10).status_code)\n"
             "try:\n    requests.get(sys.argv[2], timeout=10)\nexcept requests.ConnectionError:\n"
             "    print('unreachable')\n")
    env = client_only_env(tracking_server)
    result = subprocess.run([sys.executable, "-c", probe, env["MLFLOW_TRACKING_URI"], s3.endpoint_url],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["200", "unreachable"], result.stderr


def test_server_info_advertises_no_presigned_transfers(tracking_server):
    info = requests.get(f"{tracking_server.url}/api/3.0/mlflow/server-info", timeout=10).json()
    assert info["multipart_uploads_enabled"] is False
    assert info["multipart_downloads_enabled"] is False


@pytest.fixture(scope="module")
def admin_run_id(tracking_server):
    _, run_id = tracking_server.create_run(f"presigned-probe-{time.time_ns()}")
    return run_id


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/2.0/mlflow-artifacts/mpu/create/probe/model.pth", {"path": "model.pth", "num_parts": 2}),
    ("GET", "/api/2.0/mlflow-artifacts/presigned/probe/model.pth", None),
    ("POST", "/api/2.0/mlflow/artifacts/presigned-download-url", {"path": "model.pth"}),
    ("POST", "/api/2.0/mlflow/artifacts/presigned-upload-url", {"path": "model.pth"}),
], ids=["multipart-upload", "presigned-download", "run-presigned-download", "run-presigned-upload"])
def test_presigned_and_multipart_endpoints_are_refused(tracking_server, admin_run_id, method, path, body):
    """No endpoint hands out an S3 URL. Proxied-artifact endpoints answer 501, on which a client
    forcing MLFLOW_ENABLE_PROXY_MULTIPART_*=true falls back to the proxy; the run-level ones
    (SageMaker-style clients) already refuse mlflow-artifacts:/ runs with 400."""
    if body and "/mlflow/artifacts/" in path:
        body = {**body, "run_id": admin_run_id}
    response = requests.request(method, f"{tracking_server.url}{path}", json=body,
                                auth=tracking_server.admin_auth, timeout=30)
    assert response.status_code in (400, 501), response.text
    assert "not supported" in response.json()["message"]
    assert "X-Amz-Signature" not in response.text


def test_client_with_only_tracking_url_round_trips_params_metrics_and_200mb_artifact(
        tracking_server, s3, big_artifact, tmp_path):
    out_dir = tmp_path / "download"
    out_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(big_artifact), str(out_dir)],
        env=client_only_env(tracking_server), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"client failed:\n{result.stderr[-4000:]}\nserver log:\n{tracking_server.log()}"
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["artifact_uri"].startswith("mlflow-artifacts:/")
    assert report["params"] == {"SOLVER.BASE_LR": "0.01"}
    assert report["metric_steps"] == [[s, 1.0 / (s + 1)] for s in range(5)]
    assert report["status"] == "FINISHED"
    downloaded = os.path.join(report["local_dir"], big_artifact.name)
    assert os.path.getsize(downloaded) == big_artifact.stat().st_size
    assert sha256(downloaded) == sha256(big_artifact)

    # The bytes really are in the bucket, under the server's artifacts destination.
    prefix = tracking_server.artifacts_destination.split("/", 3)[3]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)["Contents"]]
    assert any(k.endswith(f"{report['run_id']}/artifacts/checkpoints/{big_artifact.name}") for k in keys)

    mb = big_artifact.stat().st_size / 1024**2
    print(f"\n[measure] {mb:.0f} MB through the tracking server: upload {report['upload_s']:.2f} s "
          f"({mb / report['upload_s']:.0f} MB/s), download {report['download_s']:.2f} s "
          f"({mb / report['download_s']:.0f} MB/s)")


def test_client_forcing_presigned_transfers_falls_back_to_the_proxy(tracking_server, tmp_path):
    artifact = tmp_path / "forced.bin"
    artifact.write_bytes(os.urandom(3 * 1024**2))
    out_dir = tmp_path / "download"
    out_dir.mkdir()
    env = client_only_env(tracking_server)
    env.update({
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
        "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "true",
        "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(1024**2),
        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(1024**2),
    })
    result = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, str(artifact), str(out_dir)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"client failed:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert sha256(os.path.join(report["local_dir"], artifact.name)) == sha256(artifact)


def _irregular_pieces(payload: bytes):
    """A chunked request body: pieces of odd sizes around gunicorn's read sizes (1 KiB, 64 KiB)."""
    sizes = itertools.cycle([1, 1023, 1025, 65535, 65537, 3 * 2**20 + 5])
    start = 0
    while start < len(payload):
        end = start + next(sizes)
        yield payload[start:end]
        start = end


@pytest.mark.patches_on_and_off  # MLflow's own upload path (spooled to disk) stores the same bytes
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("size", [0, 1, 9 * 1024**2 + 7], ids=["empty", "one-byte", "over-one-part"])
def test_proxied_upload_streams_any_size_to_s3(tracking_server, s3, size, framing):
    """Uploads stream straight into S3 (no temp-file spool); sizes around the 8 MB part edge, sent
    with a Content-Length (MLflow's client) or chunked (a streaming client)."""
    payload = os.urandom(size)
    path = f"stream-probe/{size}-{framing}/nested/metrics.json"
    url = f"{tracking_server.url}/api/2.0/mlflow-artifacts/artifacts/{path}"
    data = payload if framing == "content-length" else _irregular_pieces(payload)
    put = requests.put(url, data=data, auth=tracking_server.admin_auth, timeout=120)
    assert put.status_code == 200, put.text
    assert requests.get(url, auth=tracking_server.admin_auth, timeout=120).content == payload
    prefix = tracking_server.artifacts_destination.split("/", 3)[3]
    stored = s3.client().get_object(Bucket=s3.bucket, Key=f"{prefix}/{path}")
    assert stored["Body"].read() == payload
    assert stored["ContentType"] == "application/json"  # MLflow's upload policy still applies


def test_direct_s3_throughput_for_comparison(s3, big_artifact, tmp_path):
    """Not a check: the same file straight to the S3 endpoint with boto3, for the report."""
    client = s3.client()
    key = f"direct-baseline/{big_artifact.name}"
    t0 = time.perf_counter()
    client.upload_file(str(big_artifact), s3.bucket, key)
    upload_s = time.perf_counter() - t0
    target = tmp_path / "direct.bin"
    t0 = time.perf_counter()
    client.download_file(s3.bucket, key, str(target))
    download_s = time.perf_counter() - t0
    client.delete_object(Bucket=s3.bucket, Key=key)
    assert sha256(target) == sha256(big_artifact)
    mb = big_artifact.stat().st_size / 1024**2
    print(f"\n[measure] {mb:.0f} MB direct to S3 (boto3): upload {upload_s:.2f} s ({mb / upload_s:.0f} MB/s), "
          f"download {download_s:.2f} s ({mb / download_s:.0f} MB/s)")
