"""`cvops doctor`'s TLS line against a real TLS listener on loopback.

The team's stack serves HTTPS from its proxy with a certificate from the team's own CA; here a
self-signed certificate made with the openssl CLI stands in for it. No MLflow server is needed:
the TLS check only completes a handshake and reads the certificate.
"""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from cvops.doctor.checks import Probe, check_tls
from cvops.doctor.report import Status


def make_certificate(directory: Path, days: int) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("the openssl CLI is needed to make a test certificate")
    cert, key = directory / f"cert-{days}d.pem", directory / f"key-{days}d.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", str(days), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_listener(tmp_path):
    """``start(days)`` -> (port, certificate path) of a loopback listener that completes handshakes."""
    listeners = []

    def start(days: int) -> tuple[int, Path]:
        cert, key = make_certificate(tmp_path, days)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = socket.create_server(("127.0.0.1", 0))
        listeners.append(server)

        def serve():
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(connection, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass  # the untrusting client aborts the handshake: expected

        threading.Thread(target=serve, daemon=True).start()
        return server.getsockname()[1], cert

    yield start
    for server in listeners:
        server.close()


def test_untrusted_certificate_names_the_ca_variable(tls_listener, monkeypatch):
    port, _ = tls_listener(days=90)
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS", raising=False)
    result = check_tls(Probe(f"https://localhost:{port}"))
    assert result.status is Status.FAIL
    assert "certificate not trusted" in result.detail
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in result.fix


def test_trusted_certificate_reports_protocol_and_expiry(tls_listener, monkeypatch):
    port, cert = tls_listener(days=90)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    result = check_tls(Probe(f"https://localhost:{port}"))
    assert result.status is Status.PASS, result
    assert result.detail.startswith("TLSv1.") and "valid until" in result.detail


def test_certificate_about_to_expire_is_a_warning(tls_listener, monkeypatch):
    port, cert = tls_listener(days=5)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    result = check_tls(Probe(f"https://localhost:{port}"))
    assert result.status is Status.WARN
    assert "expires" in result.detail and "renew" in result.fix


def test_plain_http_listener_behind_an_https_url(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer_in_plain_http():
            connection, _ = server.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_in_plain_http, daemon=True).start()
        result = check_tls(Probe(f"https://localhost:{port}"))
    assert result.status is Status.FAIL
    assert "TLS handshake failed" in result.detail and "http://" in result.fix
