"""infra/backup.sh, restore.sh and upgrade.sh against the running compose project.

The S3 stand-in (moto) keeps objects in memory: a restarted S3 container comes back empty, like a
MinIO whose volume was deleted. So `down -v` here really wipes both the database volume and every
object, and restore.sh must not restart the S3 service after uploading (it does not: it only
starts it when it is not running).
"""

import os

import pytest

from tests.compose.conftest import SECRET_SETTINGS

# Each test restarts the server at least once (about a minute each on a busy 2-core machine).
pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]


def _log_a_run(stack, tmp_path, name: str) -> str:
    artifact = tmp_path / name
    artifact.write_bytes(os.urandom(2 * 2**20))
    return stack.client("log", str(artifact))["run_id"]


def _sweeps_database(stack, sql: str) -> str:
    """psql on the stack's sweeps database (Optuna's studies), as the server's own role."""
    return stack.compose("exec", "-T", "postgres", "sh", "-c",
                         'psql -U "$POSTGRES_USER" -d optuna --no-align --tuples-only -v ON_ERROR_STOP=1 -c "$0"',
                         sql).stdout.strip()


def test_backup_wipe_restore_returns_identical_runs_and_artifacts(compose_stack, tmp_path):
    stack = compose_stack
    run_id = _log_a_run(stack, tmp_path, "checkpoint.pth")
    before = stack.client("snapshot", str(tmp_path / "before"))
    assert run_id in before
    # What a sweep leaves there (Optuna creates its own tables on first use).
    _sweeps_database(stack, "CREATE TABLE studies_of_a_sweep (name text); INSERT INTO studies_of_a_sweep VALUES ('lr-sweep')")

    backup = stack.run("bash", "infra/backup.sh").stdout
    backups = sorted((stack.work_dir / "backups").glob("cvops-*"))
    assert backups and backups[-1].is_dir(), backup
    assert {p.name for p in backups[-1].iterdir()} >= {"mlflow.dump", "mlflow_auth.dump", "optuna.dump",
                                                      "manifest.txt", "SHA256SUMS", "artifacts"}
    # The dumps hold every user's password hash: neither they nor the folder are open to other users.
    open_to_others = [path.name for path in [backups[-1], *backups[-1].glob("*.dump")] if path.stat().st_mode & 0o077]
    assert not open_to_others, f"readable by other users of the host: {open_to_others}"
    # What stays in plain view (the script's output, the manifest, the checksums) names no secret.
    in_plain_view = backup + (backups[-1] / "manifest.txt").read_text() + (backups[-1] / "SHA256SUMS").read_text()
    assert not [name for name in SECRET_SETTINGS if stack.settings[name] in in_plain_view]

    stack.down()
    stack.up()
    assert stack.client("snapshot", str(tmp_path / "wiped")) == {}, "down -v left data behind"

    stack.run("bash", "infra/restore.sh", "--yes", str(backups[-1]))
    assert stack.client("snapshot", str(tmp_path / "after")) == before
    assert _sweeps_database(stack, "SELECT name FROM studies_of_a_sweep") == "lr-sweep"


def test_restore_refuses_an_incomplete_backup_without_touching_the_stack(compose_stack, tmp_path):
    (tmp_path / "broken").mkdir()
    result = compose_stack.run("bash", "infra/restore.sh", "--yes", str(tmp_path / "broken"), check=False)
    assert result.returncode != 0
    assert "not a complete backup" in result.stderr
    assert compose_stack.container_state("mlflow")["Health"]["Status"] == "healthy"


def test_restore_refuses_a_backup_whose_artifact_was_altered(compose_stack, tmp_path):
    stack = compose_stack
    _log_a_run(stack, tmp_path, "weights.pth")
    stack.run("bash", "infra/backup.sh")
    backup = sorted((stack.work_dir / "backups").glob("cvops-*"))[-1]
    listed = (backup / "SHA256SUMS").read_text()
    artifacts = sorted(path for path in (backup / "artifacts").rglob("*") if path.is_file())
    assert artifacts and all(f"./{path.relative_to(backup)}" in listed for path in artifacts)

    damaged = artifacts[0]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")
    result = stack.run("bash", "infra/restore.sh", "--yes", str(backup), check=False)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and damaged.name in result.stdout + result.stderr
    assert stack.container_state("mlflow")["Health"]["Status"] == "healthy"


def test_upgrade_backs_up_migrates_and_keeps_every_run(compose_stack, tmp_path):
    stack = compose_stack
    _log_a_run(stack, tmp_path, "before-upgrade.pth")
    before = stack.client("snapshot", str(tmp_path / "before"))
    backups_before = set((stack.work_dir / "backups").glob("cvops-*"))

    # --no-pull: no registry is reachable here; the build and migrate steps still run for real.
    stack.run("bash", "infra/upgrade.sh", "--no-pull")

    assert set((stack.work_dir / "backups").glob("cvops-*")) - backups_before, "upgrade made no backup"
    assert stack.client("snapshot", str(tmp_path / "after")) == before
