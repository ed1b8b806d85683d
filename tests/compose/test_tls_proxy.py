"""The `tls` profile: Caddy terminates TLS in front of MLflow with services/proxy/Caddyfile.

Stand-in: the official caddy image cannot be pulled here, so PROXY_IMAGE is built from Debian's
caddy package (2.6, standins/caddy/Dockerfile) on the stand-in Debian base; the Caddyfile, the
compose service and its health check are the real ones. Certificates come from Caddy's internal
CA (PROXY_TLS=internal), whose root the client trusts explicitly, as a team would.
"""

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.harness.fixtures import free_port

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

STANDIN_IMAGE = "cvops-compose-test/caddy:local"
DEBIAN_BASE = os.environ.get("DEBIAN_IMAGE", "offline/debian:bookworm")


@pytest.fixture(scope="module")
def proxy(compose_stack, tmp_path_factory):
    settings = {"PROXY_IMAGE": os.environ.get("PROXY_IMAGE", ""), "PROXY_HTTP_PORT": str(free_port()),
                "PROXY_HTTPS_PORT": str(free_port()), "CVOPS_HOSTNAME": "localhost", "PROXY_TLS": "internal"}
    if not settings["PROXY_IMAGE"]:
        build = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={DEBIAN_BASE}", "-t",
                                STANDIN_IMAGE, str(Path(__file__).with_name("standins") / "caddy")],
                               capture_output=True, text=True, timeout=900)
        if build.returncode != 0:
            pytest.skip(f"could not build the caddy stand-in from {DEBIAN_BASE} (Debian mirror reachable?):\n"
                        f"{build.stderr[-1500:]}")
        settings["PROXY_IMAGE"] = STANDIN_IMAGE
    compose_stack.compose("--profile", "tls", "up", "-d", "--no-build", "proxy", **settings)
    try:
        deadline = time.monotonic() + 180
        while compose_stack.container_state("proxy").get("Health", {}).get("Status") != "healthy":
            assert time.monotonic() < deadline, compose_stack.logs("proxy")
            time.sleep(1)
        root_cert = tmp_path_factory.mktemp("tls") / "caddy-root.crt"
        deadline = time.monotonic() + 60
        while True:  # Caddy writes its CA while it issues the first certificate.
            cat = compose_stack.compose("--profile", "tls", "exec", "-T", "proxy", "cat",
                                        "/data/caddy/pki/authorities/local/root.crt", check=False, **settings)
            if cat.returncode == 0:
                break
            assert time.monotonic() < deadline, cat.stderr
            time.sleep(1)
        root_cert.write_text(cat.stdout)
        yield f"https://localhost:{settings['PROXY_HTTPS_PORT']}", root_cert, settings
    finally:
        compose_stack.compose("--profile", "tls", "rm", "-s", "-f", "proxy", check=False, **settings)


def test_https_reaches_mlflow_and_http_redirects(proxy):
    url, root_cert, settings = proxy
    deadline = time.monotonic() + 60
    while True:  # the certificate for `localhost` is issued on start-up
        try:
            health = requests.get(f"{url}/health", verify=str(root_cert), timeout=10)
            break
        except requests.exceptions.SSLError:
            assert time.monotonic() < deadline
            time.sleep(1)
    assert health.status_code == 200
    plain = requests.get(f"http://localhost:{settings['PROXY_HTTP_PORT']}/health", allow_redirects=False, timeout=10)
    assert plain.status_code in (301, 308) and plain.headers["Location"].startswith("https://")
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search", verify=str(root_cert), timeout=10).status_code == 401


def test_client_logs_and_reads_back_an_artifact_through_tls(compose_stack, proxy, tmp_path):
    url, root_cert, _ = proxy
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(os.urandom(8 * 2**20))
    logged = compose_stack.client("log", str(artifact), url=url, ca_bundle=root_cert)
    runs = compose_stack.client("snapshot", str(tmp_path / "download"), url=url, ca_bundle=root_cert)
    assert runs[logged["run_id"]]["artifacts"]["checkpoints/weights.bin"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
