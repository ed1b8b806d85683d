"""services/mlflow/server_patches.py: every patch is optional, guarded by the versions it was verified on.

CVOPS_SERVER_PATCHES=all|off|<list> chooses; on an MLflow a patch was not verified on, the server
starts with it off and says so in one line, and refuses to start without the patches its safety
rests on unless CVOPS_ALLOW_UNVERIFIED_MLFLOW=1. "Another MLflow" is simulated with
CVOPS_PRETEND_MLFLOW_VERSION, the guard's test seam (it can only turn patches off);
infra/check-mlflow-upgrade.sh runs on real other versions.
"""

import subprocess
import sys

import pytest
import requests

from tests.harness.fixtures import REPO_ROOT

pytestmark = pytest.mark.integration

SERVER_DIR = REPO_ROOT / "services" / "mlflow"
UNRELEASED_MLFLOW = "3.99.0"
SAFETY_PATCHES = ("proxied_artifacts", "run_attribution", "hostile_input")


def patch_registry() -> list[list[str]]:
    """server_setup.py patch-report for the installed packages: name, required, verdict, missing names."""
    report = subprocess.run([sys.executable, "server_setup.py", "patch-report"], cwd=SERVER_DIR,
                            capture_output=True, text=True, timeout=120, check=True)
    return [line.split("\t") for line in report.stdout.splitlines()]


def server_info(server) -> dict:
    return requests.get(f"{server.url}/api/3.0/mlflow/server-info", timeout=10).json()


def experiments_page(server) -> str:
    response = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            auth=server.admin_auth, timeout=10)
    response.raise_for_status()
    return response.text


def serves_ready(server) -> bool:
    return requests.get(f"{server.url}/ready", auth=server.admin_auth, timeout=10).status_code != 404


def is_pretty_json(body: str) -> bool:
    return body.startswith("{\n")


def test_every_patch_is_verified_here_and_finds_every_name_it_touches():
    rows = patch_registry()
    assert {name for name, *_ in rows if _[0] == "required"} == set(SAFETY_PATCHES)
    assert [(name, verdict, missing) for name, _, verdict, missing in rows
            if verdict != "verified" or missing != "-"] == []


def test_the_upgrade_check_names_tests_for_every_patch(monkeypatch):
    """infra/check-mlflow-upgrade.sh's table crashed with KeyError on a patch it had no tests for."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "infra"))
    import mlflow_upgrade_table

    assert set(mlflow_upgrade_table.PATCH_TESTS) == {name for name, *_ in patch_registry()}
    assert all((REPO_ROOT / path).is_file() for path in mlflow_upgrade_table.test_files())


def test_with_patches_off_the_server_runs_mlflow_s_own_code(tracking_server_factory):
    server = tracking_server_factory(CVOPS_SERVER_PATCHES="off")
    log = server.log()
    assert "server patches: none" in log
    for name in SAFETY_PATCHES:  # the operator is told what is given up
        assert f"WARNING: patch {name} off (CVOPS_SERVER_PATCHES): without it" in log
    assert server_info(server)["multipart_uploads_enabled"] is True  # MLflow's own answer
    assert is_pretty_json(experiments_page(server))
    assert not serves_ready(server)
    _, run_id = server.create_run("stock")
    logged = requests.post(f"{server.url}/api/2.0/mlflow/runs/log-metric", auth=server.admin_auth, timeout=10,
                           json={"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1, "step": 1})
    assert logged.status_code == 200


def test_a_named_subset_is_applied_alone(tracking_server_factory):
    server = tracking_server_factory(CVOPS_SERVER_PATCHES="proxied_artifacts, run_attribution,compact_json")
    assert "server patches: proxied_artifacts, run_attribution, compact_json" in server.log()
    assert server_info(server)["multipart_uploads_enabled"] is False
    assert not is_pretty_json(experiments_page(server))
    assert not serves_ready(server)  # readiness_probe not named


def test_an_unknown_patch_name_is_refused_with_the_known_ones(tracking_server_factory):
    server = tracking_server_factory(start=False)
    result = server.run_entrypoint("serve", timeout_s=120, CVOPS_SERVER_PATCHES="compact_json,compact_jsn")
    assert result.returncode == 64
    assert "unknown patch 'compact_jsn'" in result.stderr
    assert "proxied_artifacts, run_attribution" in result.stderr  # the names it would take


def test_an_unverified_mlflow_refuses_to_start_saying_what_is_at_stake(tracking_server_factory):
    server = tracking_server_factory(start=False)
    result = server.run_entrypoint("serve", timeout_s=120, CVOPS_PRETEND_MLFLOW_VERSION=UNRELEASED_MLFLOW)
    assert result.returncode == 64
    message = result.stderr
    assert "refusing to start" in message
    assert f"patch proxied_artifacts is verified on mlflow 3.17.2, not on {UNRELEASED_MLFLOW}" in message
    assert "presigned S3 URLs" in message and "in a teammate's name" in message
    assert "CVOPS_ALLOW_UNVERIFIED_MLFLOW=1" in message


def test_an_unverified_mlflow_starts_safely_on_the_operator_s_word_with_optimisations_off(tracking_server_factory):
    server = tracking_server_factory(CVOPS_PRETEND_MLFLOW_VERSION=UNRELEASED_MLFLOW, CVOPS_ALLOW_UNVERIFIED_MLFLOW="1")
    log = server.log()
    for name in SAFETY_PATCHES:
        assert f"WARNING: patch {name} tried unverified (CVOPS_ALLOW_UNVERIFIED_MLFLOW)" in log
    for name in ("tracking_store", "compact_json", "readiness_probe", "s3_artifact_repository"):
        assert f"patch {name} off: verified on mlflow 3.17.2, not on {UNRELEASED_MLFLOW}" in log
    # Not MLflow's: the gunicorn and SQLAlchemy patches stay on.
    assert "server patches: proxied_artifacts, run_attribution, hostile_input, ping_on_demand, request_body_reads, request_header_deadline" in log
    assert server_info(server)["multipart_uploads_enabled"] is False  # safe
    assert is_pretty_json(experiments_page(server))  # MLflow's own encoder
