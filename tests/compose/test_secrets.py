"""Secrets: `docker compose up -d` on a fresh checkout (no .env, no secret set) generates them.

The `secrets` service writes them into the `secrets` volume on first start and keeps them; every
other service reads files from it. A value set in the environment (or .env, which Compose reads
the same way) wins; a value set but weak is refused, every one named at once. The admin's first
password is printed by `cvops-admin-password` and shown once, in the server's first log.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.compose.conftest import SECRET_SETTINGS, ComposeStack, _compose_command

# Each test restarts or (re)creates part of a stack (about a minute each on a busy 2-core machine).
pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

SERVICES_READING_SECRETS = ("postgres", "minio", "storage-init", "migrate", "mlflow")


@pytest.fixture(scope="module")
def fresh_stack(compose_stack, tmp_path_factory):
    """A second project of the same images, brought up with no secret set anywhere."""
    stack = ComposeStack(_compose_command(), tmp_path_factory.mktemp("fresh"), set_secrets=False)
    assert not any(name in stack.env for name in SECRET_SETTINGS)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def _search(stack, password: str) -> int:
    return requests.post(f"{stack.url}/api/2.0/mlflow/experiments/search", json={"max_results": 1},
                         auth=(stack.admin_username, password), timeout=10).status_code


def _server_log(stack) -> str:
    return stack.compose("logs", "--no-color", "mlflow").stdout


def test_up_with_no_secret_set_generates_them_and_the_admin_logs_in_with_the_printed_password(fresh_stack):
    printed = fresh_stack.printed_admin_password()
    assert printed.returncode == 0, printed.stderr
    password = printed.stdout.strip()
    assert len(password) >= 12 and printed.stdout == password + "\n"
    assert _search(fresh_stack, password) == 200
    assert _search(fresh_stack, password + "x") == 401

    stored = fresh_stack.stored_secrets()
    assert stored["MLFLOW_ADMIN_PASSWORD"] == password
    assert all(len(value) >= 16 for value in stored.values()), stored
    assert len(set(stored.values())) == len(stored), "two secrets share a value"
    assert _server_log(fresh_stack).count(password) == 1, "the first start's log shows the password once"


def test_secrets_and_a_changed_admin_password_survive_down_and_up(fresh_stack):
    stack = fresh_stack
    stored = stack.stored_secrets()
    first = stored["MLFLOW_ADMIN_PASSWORD"]
    changed = first[::-1] + "-new"
    response = requests.patch(f"{stack.url}/api/2.0/mlflow/users/update-password",
                              json={"username": stack.admin_username, "password": changed, "current_password": first},
                              auth=(stack.admin_username, first), timeout=10)
    assert response.status_code == 200, response.text

    stack.compose("down")  # no -v: the volumes stay, as on a host reboot or an upgrade
    stack.up()

    assert stack.stored_secrets() == stored
    assert _search(stack, changed) == 200, "the changed admin password was reset by the restart"
    assert _search(stack, first) == 401
    assert first not in _server_log(stack), "the password is shown on the first start only"
    printed = stack.printed_admin_password()
    assert printed.returncode != 0 and printed.stdout == ""
    assert "no longer logs in" in printed.stderr


def test_weak_values_set_for_the_secrets_are_all_named_and_none_is_stored(fresh_stack):
    stack = fresh_stack
    stored = stack.stored_secrets()
    bad = {"MLFLOW_ADMIN_PASSWORD": "changeme", "MLFLOW_FLASK_SERVER_SECRET_KEY": "short",
           "S3_SECRET_KEY": "1234567"}
    result = stack.compose("up", "-d", "--no-build", check=False, **bad)
    assert result.returncode != 0
    refusal = stack.compose("logs", "--no-color", "secrets").stdout
    assert "MLFLOW_ADMIN_PASSWORD is a well-known default" in refusal
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY must be at least 16 characters" in refusal
    assert "S3_SECRET_KEY must be at least 8 characters" in refusal
    stack.compose("up", "-d", "--no-build")
    stack.wait_healthy()
    assert stack.stored_secrets() == stored


def test_the_server_image_names_every_bad_secret_at_once(compose_stack):
    result = compose_stack.compose(
        "run", "--rm", "--no-deps", "-T",
        "-e", "MLFLOW_ADMIN_PASSWORD_FILE=", "-e", "MLFLOW_ADMIN_PASSWORD=short-pw",
        "-e", "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=", "-e", "MLFLOW_FLASK_SERVER_SECRET_KEY=changeme",
        "mlflow", "serve", check=False, timeout=120)
    assert result.returncode == 64
    assert "MLFLOW_ADMIN_PASSWORD must be at least 12 characters" in result.stderr
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY is a well-known default" in result.stderr


def test_values_set_in_the_environment_win_over_generated_ones(compose_stack):
    assert compose_stack.stored_secrets() == {name: compose_stack.settings[name] for name in SECRET_SETTINGS}
    printed = compose_stack.printed_admin_password()
    assert printed.stdout == compose_stack.admin_password + "\n", printed.stderr


def test_docker_inspect_shows_no_secret_in_any_services_environment(compose_stack):
    values = [compose_stack.settings[name] for name in SECRET_SETTINGS]
    for service in SERVICES_READING_SECRETS:
        container = compose_stack.compose("ps", "-a", "-q", service).stdout.split()[0]
        environment = json.loads(compose_stack.run("docker", "inspect", "--format", "{{json .Config.Env}}",
                                                   container).stdout)
        leaked = [name for name, value in zip(SECRET_SETTINGS, values) if any(value in e for e in environment)]
        assert not leaked, f"`docker inspect` of {service} shows {leaked}"


def test_backup_holds_the_secrets_privately_and_restore_puts_them_back(fresh_stack):
    stack = fresh_stack
    stored = stack.stored_secrets()
    stack.run("bash", "infra/backup.sh")
    backup = sorted((stack.work_dir / "backups").glob("cvops-*"))[-1]
    kept = backup / "secrets"
    assert kept.stat().st_mode & 0o777 == 0o700
    assert {path.name: (path.read_text(), path.stat().st_mode & 0o777) for path in kept.iterdir()} == {
        name.lower(): (value, 0o600) for name, value in stored.items()}
    assert all(f"./secrets/{name.lower()}" in (backup / "SHA256SUMS").read_text() for name in stored)

    stack.down()  # -v: the secrets go with the data; the next `up` generates new ones
    stack.up()
    assert stack.stored_secrets()["POSTGRES_PASSWORD"] != stored["POSTGRES_PASSWORD"]

    # Healthy at the end means the server logs in to PostgreSQL with the restored password.
    stack.run("bash", "infra/restore.sh", "--yes", str(backup))
    assert stack.stored_secrets() == stored
