"""`cvops doctor` as a team member runs it: the real CLI against servers started like the container.

Green against the harness server (as a non-admin user, with S3 variables in the environment that
the doctor must not need); red, naming the cause and the fix, for a wrong password, missing
credentials, a host that does not resolve or refuses, a stopped server, a Host header the server
does not allow, and an object store the server cannot reach.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.fixtures import free_port

# A hung check would show up here; the doctor's own timeouts are a few seconds per check.
DOCTOR_GUARD_TIMEOUT_S = 120
LINE = re.compile(r"^(?P<mark>[✓✗!i–]) (?P<name>\S+)\s+(?P<detail>.*)$")


def run_doctor(url: str, *, home: Path, username: str | None = None, password: str | None = None,
               extra_env: dict[str, str] | None = None) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run `cvops doctor`; return its exit code, {check: (mark, rest of line)} and the full output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(HOME=str(home), PYTHONIOENCODING="utf-8", **(extra_env or {}))
    if username is not None:
        env.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password or "")
    result = subprocess.run(
        [sys.executable, "-m", "cvops", "doctor", "--tracking-uri", url, "--artifact-mb", "2"],
        env=env, capture_output=True, text=True, encoding="utf-8", timeout=DOCTOR_GUARD_TIMEOUT_S,
    )
    lines = {}
    for line in result.stdout.splitlines():
        if match := LINE.match(line):
            lines[match["name"]] = (match["mark"], match["detail"])
    return result.returncode, lines, result.stdout + result.stderr


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty home directory, so a developer's own ~/.mlflow/credentials never leaks in."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def team_member(tracking_server) -> tuple[str, str]:
    """A plain (non-admin) user, like every team member who is handed the URL and a password."""
    credentials = ("doctor-alice", "alice-pw-" + os.urandom(6).hex())
    tracking_server.create_user(*credentials)
    return credentials


@pytest.mark.integration
def test_all_green_for_a_team_member_without_s3_credentials(tracking_server, team_member, home):
    code, lines, output = run_doctor(
        tracking_server.url, home=home, username=team_member[0], password=team_member[1],
        # A trainer image often carries these; the doctor must prove it does not need them.
        extra_env={"AWS_ACCESS_KEY_ID": "not-a-key", "MLFLOW_S3_ENDPOINT_URL": "http://s3.invalid:9000"},
    )
    assert code == 0, output
    for check in ("network", "server", "host", "login", "experiment", "metrics", "artifacts",
                  "s3-free", "clock"):
        assert lines[check][0] == "✓", f"{check} not green:\n{output}"
    assert "MLflow 3.17.2" in lines["server"][1]
    assert f"logged in as '{team_member[0]}'" in lines["login"][1]
    assert re.search(r"upload [\d.]+ MB/s, download [\d.]+ MB/s, content identical", lines["artifacts"][1])
    assert "AWS_ACCESS_KEY_ID" in lines["s3-free"][1] and "MLFLOW_S3_ENDPOINT_URL" in lines["s3-free"][1]
    assert lines["tls"][0] == "i" and "plain HTTP" in lines["tls"][1]
    assert lines["gpus"][0] in ("i", "✓"), output
    assert output.rstrip().endswith(f"training jobs on this machine can track to {tracking_server.url}")


@pytest.mark.integration
def test_scratch_experiment_is_deleted(tracking_server, team_member, home, monkeypatch):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    code, _, output = run_doctor(tracking_server.url, home=home, username=team_member[0],
                                 password=team_member[1])
    assert code == 0, output
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking_server.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.admin_password)
    client = MlflowClient(tracking_server.url)
    leftovers = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, filter_string="name LIKE 'cvops-doctor/%'")
    assert leftovers == []
    # The scratch run is ended before it is deleted: nothing of the doctor's stays RUNNING.
    scratch_id = re.search(r"scratch experiment (\d+)", output).group(1)
    runs = client.search_runs([scratch_id], run_view_type=ViewType.ALL)
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.lifecycle_stage for r in runs} == {"deleted"}


@pytest.mark.integration
def test_credentials_file_is_used_when_the_environment_has_none(tracking_server, team_member, home):
    (home / ".mlflow").mkdir()
    (home / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {team_member[0]}\n"
        f"mlflow_tracking_password = {team_member[1]}\n"
    )
    code, lines, output = run_doctor(tracking_server.url, home=home)
    assert code == 0, output
    assert "credentials from ~/.mlflow/credentials" in lines["login"][1]


@pytest.mark.integration
def test_wrong_password_names_the_variables_to_fix(tracking_server, team_member, home):
    code, lines, output = run_doctor(tracking_server.url, home=home, username=team_member[0],
                                     password="not-the-password")
    assert code == 1
    mark, detail = lines["login"]
    assert mark == "✗" and "401" in detail and team_member[0] in detail
    assert "set MLFLOW_TRACKING_USERNAME/PASSWORD" in detail
    assert lines["experiment"][0] == "–", "checks after a failed login must be skipped, not run"


@pytest.mark.integration
def test_missing_credentials_say_where_to_put_them(tracking_server, home):
    code, lines, output = run_doctor(tracking_server.url, home=home)
    assert code == 1
    mark, detail = lines["login"]
    assert mark == "✗" and "no credentials were found" in detail
    assert "MLFLOW_TRACKING_USERNAME/PASSWORD" in detail and "~/.mlflow/credentials" in detail


def test_unresolvable_host(home):
    code, lines, output = run_doctor("http://cvops-doctor-test.invalid:5000", home=home,
                                     username="u", password="p")
    assert code == 1
    mark, detail = lines["network"]
    assert mark == "✗" and "cannot resolve 'cvops-doctor-test.invalid'" in detail
    assert "MLFLOW_TRACKING_URI" in detail
    assert all(lines[name][0] == "–" for name in ("tls", "server", "login", "artifacts")), output


def test_port_nobody_listens_on(home):
    port = free_port()
    code, lines, output = run_doctor(f"http://127.0.0.1:{port}", home=home, username="u", password="p")
    assert code == 1
    mark, detail = lines["network"]
    assert mark == "✗" and f"refused TCP connections on port {port}" in detail
    assert "not running" in detail


def test_not_a_server_url(home):
    code, lines, output = run_doctor("file:///tmp/mlruns", home=home)
    assert code == 1
    assert lines["network"][0] == "✗" and "not a server URL" in lines["network"][1], output


@pytest.fixture(scope="module")
def misconfigured_server(tracking_server_factory):
    """A server that only accepts the Host 'localhost' and whose S3 endpoint is gone.

    Reached as 127.0.0.1 it shows a Host header rejection; reached as localhost it logs in and
    stores metrics but cannot store artifacts. One server for both saves a start-up per test.
    MLflow's own variable sets the hosts: MLFLOW_ALLOWED_HOSTS only adds names to a default
    that includes 127.0.0.1, while MLFLOW_SERVER_ALLOWED_HOSTS replaces the whole list.
    """
    return tracking_server_factory(
        MLFLOW_SERVER_ALLOWED_HOSTS="localhost:*",
        MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
    )


@pytest.mark.integration
def test_host_header_rejected_names_mlflow_allowed_hosts(misconfigured_server, home):
    server = misconfigured_server
    code, lines, output = run_doctor(server.url, home=home, username=server.admin_username,
                                     password=server.admin_password)
    assert code == 1
    mark, detail = lines["host"]
    assert mark == "✗" and "Invalid Host header" in detail, output
    assert "add 127.0.0.1:* to MLFLOW_ALLOWED_HOSTS" in detail


@pytest.mark.integration
def test_object_store_unreachable_behind_the_proxy(misconfigured_server, home):
    # Healthy server, working login and metrics, but the S3 endpoint it proxies to is gone:
    # only the artifact round trip can tell, and it must point at the server's S3 settings.
    server = misconfigured_server
    url = server.url.replace("127.0.0.1", "localhost")
    code, lines, output = run_doctor(url, home=home, username=server.admin_username,
                                     password=server.admin_password)
    assert code == 1, output
    assert lines["host"][0] == "✓" and lines["metrics"][0] == "✓", output
    mark, detail = lines["artifacts"]
    assert mark == "✗" and "HTTP 503" in detail and "cannot reach its artifact store" in detail
    assert "MLFLOW_S3_ENDPOINT_URL" in detail
    assert lines["s3-free"][0] == "–"


@pytest.mark.integration
def test_stopped_server_fails_fast_with_the_fix(misconfigured_server, home):
    server = misconfigured_server
    server.stop()
    try:
        code, lines, output = run_doctor(server.url, home=home, username=server.admin_username,
                                         password=server.admin_password)
    finally:
        server.start()
    assert code == 1
    mark, detail = lines["network"]
    assert mark == "✗" and "refused" in detail and "docker compose ps mlflow" in detail
    assert all(lines[name][0] == "–" for name in ("server", "login", "artifacts")), output
