"""entrypoint.sh: refuses unsafe configuration, migrates idempotently, answers /health and /metrics."""

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.harness.fixtures import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MLFLOW_ADMIN_PASSWORD": ""}, "MLFLOW_ADMIN_PASSWORD is required"),
        ({"MLFLOW_ADMIN_PASSWORD": "password1234"}, "MLFLOW_ADMIN_PASSWORD is a well-known default"),
        ({"MLFLOW_ADMIN_PASSWORD": "please-changeme"}, "MLFLOW_ADMIN_PASSWORD is a well-known default"),
        ({"MLFLOW_ADMIN_PASSWORD": "short-pw"}, "MLFLOW_ADMIN_PASSWORD must be at least 12 characters"),
        ({"MLFLOW_FLASK_SERVER_SECRET_KEY": ""}, "MLFLOW_FLASK_SERVER_SECRET_KEY is required"),
        ({"MLFLOW_FLASK_SERVER_SECRET_KEY": "changeme"}, "MLFLOW_FLASK_SERVER_SECRET_KEY is a well-known default"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@db/mlflow"}, "postgresql+psycopg2://"),
        ({"MLFLOW_ARTIFACTS_DESTINATION": "/var/artifacts"}, "MLFLOW_ARTIFACTS_DESTINATION must be s3://"),
        ({"MLFLOW_AUTH": "maybe"}, "MLFLOW_AUTH must be 'on' or 'off'"),
        ({"CVOPS_UI_DEFAULT_WORKFLOW": "training"}, "CVOPS_UI_DEFAULT_WORKFLOW must be machine_learning, genai or mlflow"),
        ({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION is not supported"),
    ],
    ids=["empty-password", "mlflow-legacy-default", "placeholder", "short-password", "no-secret-key",
         "default-secret-key", "driverless-uri", "local-artifacts", "bad-auth-flag", "unknown-ui-view",
         "job-runner"],
)
def test_serve_refuses_unsafe_configuration(tracking_server, overrides, message):
    result = tracking_server.run_entrypoint("serve", timeout_s=60, MLFLOW_PORT=str(free_port()), **overrides)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Listening at" not in result.stderr  # refused before gunicorn ever started


def test_empty_gunicorn_settings_mean_the_defaults(tracking_server_factory):
    # What compose passes for a variable left empty in .env (`${GUNICORN_TIMEOUT:-}` style).
    empty = dict.fromkeys(("GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT",
                           "GUNICORN_KEEPALIVE", "GUNICORN_MAX_REQUESTS", "GUNICORN_FORWARDED_ALLOW_IPS",
                           "GUNICORN_LOG_LEVEL", "GUNICORN_ACCESS_LOG", "GUNICORN_HEADER_TIMEOUT",
                           "GUNICORN_BODY_TIMEOUT", "GUNICORN_BODY_MIN_RATE"), "")
    server = tracking_server_factory(**empty)
    try:
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        server.stop()


def test_migrate_is_idempotent(tracking_server):
    result = tracking_server.run_entrypoint("migrate")
    assert result.returncode == 0, result.stderr
    assert "migrations done" in result.stderr


def test_migrate_creates_the_sweeps_database_with_the_password_from_postgres_password(
    tracking_server_factory, postgres
):
    """The compose file names the sweeps' database without a password, like the other two; the
    entrypoint adds POSTGRES_PASSWORD to it, and Optuna can then keep studies there."""
    import uuid

    server = tracking_server_factory(start=False)
    sweeps_db = f"optuna_{uuid.uuid4().hex[:8]}"

    def without_password(dbname: str) -> str:
        return f"postgresql+psycopg2://{postgres.user}@{postgres.host}:{postgres.port}/{dbname}"

    uris = {"MLFLOW_BACKEND_STORE_URI": without_password(server.backend_db),
            "MLFLOW_AUTH_DATABASE_URI": without_password(server.auth_db),
            "CVOPS_SWEEP_DATABASE_URI": without_password(sweeps_db)}
    for attempt in ("creates", "finds"):
        result = server.run_entrypoint("migrate", POSTGRES_PASSWORD=postgres.password, **uris)
        assert result.returncode == 0, result.stderr
        assert ("created database " + sweeps_db in result.stderr) == (attempt == "creates"), result.stderr
    optuna = pytest.importorskip("optuna")
    optuna.create_study(study_name="first", storage=postgres.url(sweeps_db))
    assert [summary.study_name for summary in optuna.get_all_study_summaries(postgres.url(sweeps_db))] == ["first"]


def test_the_database_password_stays_out_of_the_process_list(tracking_server, postgres):
    """Anyone who can list processes in the container (ps, /proc) must not read the database login."""
    server_pids = [tracking_server._proc.pid, *_descendants(tracking_server._proc.pid)]
    command_lines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in server_pids}
    assert any("gunicorn" in line for line in command_lines.values())  # the server's own process is seen
    assert [line for line in command_lines.values() if postgres.password in line] == []


def test_gunicorn_runs_with_our_worker_class_not_mlflows(tracking_server):
    """gunicorn.conf.py decides how the workers run, not `mlflow server`: newer MLflow releases run
    `--gunicorn-opts` on uvicorn workers (4-5x slower per call here, docs/performance.md)."""
    master = tracking_server._proc.pid  # entrypoint.sh and server_setup.py exec into gunicorn's master
    command_lines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                     for pid in [master, *_descendants(master)]}
    assert command_lines[master][1:4] == ["-m", "gunicorn", "-c"]
    assert command_lines[master][4].endswith("services/mlflow/gunicorn.conf.py")
    assert command_lines[master][5] == "mlflow.server.auth:create_app()"
    every_argument = [argument for line in command_lines.values() for argument in line]
    assert [argument for argument in every_argument  # neither MLflow's CLI nor uvicorn in the chain
            if "uvicorn" in argument or argument.endswith(("bin/mlflow", "server_setup.py"))] == []
    assert "Using worker: gthread" in tracking_server.log_file.read_text()


def _descendants(pid: int) -> list[int]:
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return [descendant for child in children for descendant in (child, *_descendants(child))]


def test_busy_threads_keep_their_database_connections(tracking_server_factory, postgres):
    """Every gunicorn thread busy at once must not make the pool close connections and open new
    ones on the next request (each a PostgreSQL backend start plus a SCRAM login)."""
    server = tracking_server_factory(GUNICORN_WORKERS="1", GUNICORN_THREADS="8")
    api = f"{server.url}/api/2.0/mlflow"
    _, run_id = server.create_run("pool")

    def client(offset: int) -> None:
        with requests.Session() as session:
            session.auth = server.admin_auth
            for step in range(offset, offset + 30):
                session.post(f"{api}/runs/log-metric", timeout=30, json={
                    "run_id": run_id, "key": "loss", "value": 1.0, "timestamp": step, "step": step}).raise_for_status()

    def busy_round(round_number: int) -> set[int]:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(round_number * 1000, round_number * 1000 + 8 * 100, 100)))
        with contextlib.closing(postgres.connect()) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (server.backend_db,))
            return {pid for (pid,) in cursor.fetchall()}

    busy_round(0)  # the pool fills up to what the threads need
    after_warm_up = busy_round(1)
    assert after_warm_up - busy_round(2) == set()  # none of those connections was closed


def test_health_answers_without_login(tracking_server):
    response = requests.get(f"{tracking_server.url}/health", timeout=10)
    assert response.status_code == 200
    assert response.text == "OK"


def test_metrics_expose_request_counters_to_an_authenticated_scraper(tracking_server):
    requests.get(f"{tracking_server.url}/api/2.0/mlflow/experiments/search", auth=tracking_server.admin_auth,
                 params={"max_results": 1}, timeout=10)
    response = requests.get(f"{tracking_server.url}/metrics", auth=tracking_server.admin_auth, timeout=10)
    assert response.status_code == 200
    assert "mlflow_http_request_total" in response.text
    assert requests.get(f"{tracking_server.url}/metrics", timeout=10).status_code == 401


def test_startup_time_to_healthy(tracking_server):
    """Not a check: the number for the report (time from `entrypoint.sh serve` to /health = 200)."""
    assert tracking_server.startup_s is not None
    print(f"\n[measure] server start to healthy: {tracking_server.startup_s:.1f} s")
