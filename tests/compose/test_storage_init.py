"""services/storage-init/storage.py against an S3 server in a container (testcontainers).

Three object stores, the same assertions:
* the S3 stand-in image (``offline/s3:latest``, moto's S3 server; S3_IMAGE overrides), which
  accepts any credentials,
* SeaweedFS as services/seaweedfs builds it (from the stand-in Python base here; the image of
  docker-compose.seaweedfs.yml), which checks them, and
* MinIO itself (``MINIO_TEST_IMAGE``, default: the compose file's MinIO image). No registry is
  reachable here, so that case skips unless the image is already on the host.

storage.py runs on the host exactly as the one-shot container runs it (``python storage.py
init`` with the compose file's S3_* variables), against the container's published port.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

# Ryuk, testcontainers' reaper, is an image of its own that cannot be pulled offline; every
# container here is stopped by its fixture instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from minio import Minio  # noqa: E402
from minio.commonconfig import ENABLED, Filter  # noqa: E402
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule  # noqa: E402

pytestmark = pytest.mark.compose

REPO_ROOT = Path(__file__).resolve().parents[2]
STORAGE_SCRIPT = REPO_ROOT / "services" / "storage-init" / "storage.py"
ACCESS_KEY, SECRET_KEY = "cvops-test", "cvops-test-secret-" + uuid.uuid4().hex[:8]
RULE_ID = "cvops-abort-incomplete-multipart-uploads"


def _compose_minio_image() -> str:
    match = re.search(r"\$\{S3_IMAGE:-([^}]+)\}", (REPO_ROOT / "docker-compose.yml").read_text())
    assert match, "docker-compose.yml no longer takes the object store's image from S3_IMAGE"
    return match.group(1)


@dataclass(frozen=True)
class ObjectStore:
    image: str
    command: str | None
    checks_credentials: bool
    credential_variables: tuple[str, str] = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
    health_path: str = "/minio/health/live"
    build_context: Path | None = None  # built here (from BASE_IMAGE) rather than pulled
    endpoint: str = ""


OBJECT_STORES = {
    # moto answers any key pair: credential checks are SeaweedFS's and MinIO's.
    "s3-stand-in": ObjectStore(os.environ.get("S3_IMAGE", "offline/s3:latest"), None, checks_credentials=False),
    "seaweedfs": ObjectStore("cvops-compose-test/seaweedfs:local", None, checks_credentials=True,
                             credential_variables=("S3_ACCESS_KEY", "S3_SECRET_KEY"), health_path="/healthz",
                             build_context=REPO_ROOT / "services" / "seaweedfs"),
    "minio": ObjectStore(os.environ.get("MINIO_TEST_IMAGE", _compose_minio_image()), "server /data",
                         checks_credentials=True),
}
BASE_IMAGE = os.environ.get("BASE_IMAGE", "offline/python:3.11-slim")


def _docker_ready_with(store: ObjectStore) -> None:
    docker = pytest.importorskip("docker", reason="the docker SDK (cvops[jobs]) drives the containers")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); bash tests/run.sh starts one")
    image = store.image
    if store.build_context:
        try:
            client.images.get(BASE_IMAGE)
        except docker.errors.ImageNotFound:
            pytest.skip(f"BASE_IMAGE={BASE_IMAGE} is not on this host; {image} is built from it")
        client.images.build(path=str(store.build_context), tag=image, buildargs={"BASE_IMAGE": BASE_IMAGE})
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{image} is not on this host and no registry is reachable here; to run this case, "
                    "load the image (or set MINIO_TEST_IMAGE / S3_IMAGE to one that is)")


@pytest.fixture(params=sorted(OBJECT_STORES), scope="module")
def object_store(request):
    store = OBJECT_STORES[request.param]
    _docker_ready_with(store)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    user_variable, password_variable = store.credential_variables
    container = (DockerContainer(store.image)
                 .with_env(user_variable, ACCESS_KEY)
                 .with_env(password_variable, SECRET_KEY)
                 .with_exposed_ports(9000)
                 # The probe the compose file's health check uses.
                 .waiting_for(HttpWaitStrategy(9000, store.health_path).for_status_code(200)))
    if store.command:
        container = container.with_command(store.command)
    with container:
        yield replace(store, endpoint=f"http://{container.get_container_host_ip()}:{container.get_exposed_port(9000)}")


def _init(endpoint: str, bucket: str, **extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "S3_ENDPOINT_URL": endpoint, "S3_ACCESS_KEY": ACCESS_KEY,
           "S3_SECRET_KEY": SECRET_KEY, "S3_BUCKET": bucket, "S3_REGION": "us-east-1", **extra}
    return subprocess.run([sys.executable, str(STORAGE_SCRIPT), "init"], env=env, capture_output=True,
                          text=True, timeout=120)


def _client(endpoint: str) -> Minio:
    return Minio(endpoint.split("://", 1)[1], access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False,
                 region="us-east-1")


def _abort_days(client: Minio, bucket: str) -> int | None:
    lifecycle = client.get_bucket_lifecycle(bucket)
    ours = [rule for rule in (lifecycle.rules if lifecycle else []) if rule.rule_id == RULE_ID]
    return ours[0].abort_incomplete_multipart_upload.days_after_initiation if ours else None


def test_init_creates_a_versioned_bucket_that_aborts_stale_uploads(object_store):
    bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
    result = _init(object_store.endpoint, bucket, S3_MULTIPART_ABORT_DAYS="3")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bucket '{bucket}' created" in result.stdout
    client = _client(object_store.endpoint)
    assert client.bucket_exists(bucket)
    assert client.get_bucket_versioning(bucket).status == ENABLED
    assert _abort_days(client, bucket) == 3


def test_init_again_changes_nothing_but_our_rule_and_keeps_the_operators(object_store):
    bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
    assert _init(object_store.endpoint, bucket).returncode == 0
    client = _client(object_store.endpoint)
    client.put_object(bucket, "kept/model.bin", io.BytesIO(b"weights"), 7)
    operator_rule = Rule(ENABLED, rule_filter=Filter(prefix="tmp/"), rule_id="operator-expire-tmp",
                         expiration=Expiration(days=30))
    current = client.get_bucket_lifecycle(bucket)
    client.set_bucket_lifecycle(bucket, LifecycleConfig(list(current.rules) + [operator_rule]))

    again = _init(object_store.endpoint, bucket, S3_MULTIPART_ABORT_DAYS="9")

    assert again.returncode == 0, again.stdout + again.stderr
    assert f"bucket '{bucket}' exists" in again.stdout
    assert client.get_object(bucket, "kept/model.bin").read() == b"weights"
    rules = {rule.rule_id: rule for rule in client.get_bucket_lifecycle(bucket).rules}
    assert set(rules) == {RULE_ID, "operator-expire-tmp"}
    assert _abort_days(client, bucket) == 9


def test_wrong_credentials_fail_fast_with_the_store_s_answer(object_store):
    if not object_store.checks_credentials:
        pytest.skip(f"{object_store.image} accepts any credentials; SeaweedFS or MinIO is needed for this check")
    result = _init(object_store.endpoint, "never-created", S3_SECRET_KEY="not-the-secret", S3_WAIT_SECONDS="60")

    assert result.returncode != 0
    assert "SignatureDoesNotMatch" in result.stderr or "AccessDenied" in result.stderr or \
        "InvalidAccessKeyId" in result.stderr, result.stderr
