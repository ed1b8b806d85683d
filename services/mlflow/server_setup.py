"""Start-up helpers for entrypoint.sh that need Python (psycopg2, MLflow's config format).

    server_setup.py render-auth-config TEMPLATE OUTPUT
    server_setup.py migrate tracking [auth]   (databases named by MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_DATABASE_URI)
    server_setup.py serve plain|basic-auth    (gunicorn on MLflow's app, set up as `mlflow server` would)
    server_setup.py patch-report              (each server patch: verified here? its names present?)
"""

import importlib
import importlib.util
import os
import string
import sys
import time
import uuid

from sqlalchemy.engine import make_url

AUTH_CONFIG_DEFAULTS = {
    "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ",
    "MLFLOW_ADMIN_USERNAME": "admin",
    "MLFLOW_AUTH_CACHE_TTL_SECONDS": "30",
}
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
# The compose service name: trainer containers on the compose network call http://mlflow:5000.
COMPOSE_SERVICE_HOSTS = ("mlflow", "mlflow:*")
# Every PostgreSQL has it; the MLflow databases themselves may not exist yet.
MAINTENANCE_DB = "postgres"
DATABASE_WAIT_S = float(os.environ.get("CVOPS_DATABASE_WAIT_S", "60"))


def say(message: str) -> None:
    print(f"cvops-mlflow: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    sys.exit(64)


def render_auth_config(template_path: str, output_path: str) -> None:
    values = {**AUTH_CONFIG_DEFAULTS, **{k: v for k, v in os.environ.items() if v}}
    if values["MLFLOW_AUTH_DEFAULT_PERMISSION"] not in PERMISSIONS:
        fail(f"MLFLOW_AUTH_DEFAULT_PERMISSION must be one of {', '.join(PERMISSIONS)}")
    if not values["MLFLOW_AUTH_CACHE_TTL_SECONDS"].isdigit():
        fail("MLFLOW_AUTH_CACHE_TTL_SECONDS must be a whole number of seconds (0 disables the cache)")
    # MLflow reads the file with ConfigParser's interpolation, where a literal % must be doubled
    # (URL-encoded database passwords contain them).
    escaped = {k: v.replace("%", "%%") for k, v in values.items()}
    with open(template_path, encoding="utf-8") as f:
        template = string.Template(f.read())
    try:
        rendered = template.substitute(escaped)
    except KeyError as missing:
        fail(f"{missing.args[0]} is required to write the auth configuration")
    fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(rendered)


def connect(url, dbname: str, timeout_s: int = 5):
    import psycopg2

    return psycopg2.connect(
        host=url.host or "localhost",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=dbname,
        connect_timeout=timeout_s,
    )


def wait_for_database(uri: str) -> None:
    """Compose starts us as soon as PostgreSQL's container runs; give it time to accept logins."""
    import psycopg2

    url = make_url(uri)
    deadline = time.monotonic() + DATABASE_WAIT_S
    while True:
        try:
            connect(url, MAINTENANCE_DB).close()
            return
        except psycopg2.OperationalError as e:
            if time.monotonic() > deadline:
                fail(f"cannot reach PostgreSQL at {url.host}:{url.port or 5432} "
                     f"after {DATABASE_WAIT_S:.0f} s: {str(e).strip()}")
            time.sleep(1)


def create_database(uri: str) -> None:
    """Create the database named in URI if missing, connecting through the maintenance DB."""
    import psycopg2.errors
    from psycopg2 import sql

    url = make_url(uri)
    if not url.database:
        fail(f"no database name in {url.render_as_string(hide_password=True)}")
    conn = connect(url, MAINTENANCE_DB)
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
            if cur.fetchone():
                return
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
            except psycopg2.errors.DuplicateDatabase:
                return  # a concurrent migrate created it first
            say(f"created database {url.database}")
    finally:
        conn.close()


def upgrade_tracking_schema(uri: str) -> None:
    from mlflow.db import upgrade

    upgrade.callback(uri)  # `mlflow db upgrade URI`


def upgrade_auth_schema(uri: str) -> None:
    from mlflow.server.auth.db.cli import upgrade

    upgrade.callback(uri, "head")  # `python -m mlflow.server.auth db upgrade --url URI`


# schema -> the variable naming its database, and its upgrade. The sweeps' database (Optuna's
# studies, `cvops sweep`) only needs to exist: Optuna creates and upgrades its own tables.
SCHEMAS = {
    "tracking": ("MLFLOW_BACKEND_STORE_URI", upgrade_tracking_schema),
    "auth": ("MLFLOW_AUTH_DATABASE_URI", upgrade_auth_schema),
    "sweeps": ("CVOPS_SWEEP_DATABASE_URI", None),
}


def migrate(*schemas: str) -> None:
    """Wait for PostgreSQL, then per schema create its database if missing and upgrade it.

    One process for all of it: as separate commands each step imported MLflow again (~3 s
    apiece), which every `docker compose up` paid. Every step is idempotent.
    """
    if not schemas or not set(schemas) <= SCHEMAS.keys():
        fail(f"usage: server_setup.py migrate {' '.join(f'[{name}]' for name in SCHEMAS)}")
    uris = {schema: os.environ.get(SCHEMAS[schema][0], "") for schema in schemas}
    wait_for_database(next(iter(uris.values())))
    for schema, uri in uris.items():
        create_database(uri)
        upgrade = SCHEMAS[schema][1]
        if upgrade:
            say(f"upgrading the {schema} schema")
            upgrade(uri)
    say("migrations done")


def allowed_hosts(team_hosts: str) -> str:
    """MLflow's default Host list, the compose service name, then the team's names.

    MLFLOW_SERVER_ALLOWED_HOSTS replaces MLflow's default (loopback and private networks, which
    laptops on the LAN and Docker networks use), so the default is restated, as MLflow computes it.
    """
    from mlflow.server.security_utils import get_default_allowed_hosts

    team = [host.strip() for host in team_hosts.split(",") if host.strip()]
    return ",".join([*get_default_allowed_hosts(), *COMPOSE_SERVICE_HOSTS, *team])


# The WSGI apps gunicorn loads: MLflow's Flask app, or the basic-auth app wrapping it (a factory,
# what `mlflow server --app-name basic-auth` names through MLflow's `mlflow.app` entry point).
APPS = {"plain": "mlflow.server:app", "basic-auth": "mlflow.server.auth:create_app()"}
GUNICORN_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.conf.py")


# Worker variables that `mlflow server` sets only from some release on, by their names in
# mlflow.environment_variables: set where this MLflow defines them (an older one's workers never
# read them), so the server still starts on the older MLflow an operator may have to run.
WORKER_VARIABLES_OF_NEWER_MLFLOW = {
    "_MLFLOW_IN_JOB_EXECUTOR": "false",  # 3.17: only MLflow's job executors may rebuild scorer code
}


def mlflow_worker_environment(backend_store_uri: str, registry_store_uri: str) -> dict[str, str]:
    """What `mlflow server --serve-artifacts --artifacts-destination … --default-artifact-root
    mlflow-artifacts:/ --expose-prometheus DIR` hands its workers (MLflow 3.17.2 _run_server),
    by MLflow's own names for them so that a rename fails loudly at start-up."""
    import mlflow.environment_variables
    from mlflow.environment_variables import _MLFLOW_SERVER_BOOT_ID, _MLFLOW_SGI_NAME, MLFLOW_ENABLE_WORKSPACES
    from mlflow.server import constants

    environment = {
        constants.BACKEND_STORE_URI_ENV_VAR: backend_store_uri,
        constants.REGISTRY_STORE_URI_ENV_VAR: registry_store_uri,
        constants.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
        constants.SERVE_ARTIFACTS_ENV_VAR: "true",
        constants.ARTIFACTS_DESTINATION_ENV_VAR: os.environ["MLFLOW_ARTIFACTS_DESTINATION"],
        constants.PROMETHEUS_EXPORTER_ENV_VAR: os.environ["PROMETHEUS_MULTIPROC_DIR"],
        # One id per server generation, shared by its workers (MLflow tells its sandboxes apart by it).
        _MLFLOW_SERVER_BOOT_ID.name: uuid.uuid4().hex,
        _MLFLOW_SGI_NAME.name: "gunicorn",
        # The CLI resolves the flag once and writes it back, so "false" never reads as set.
        MLFLOW_ENABLE_WORKSPACES.name: "true" if MLFLOW_ENABLE_WORKSPACES.get() else "false",
    }
    for attribute, value in WORKER_VARIABLES_OF_NEWER_MLFLOW.items():
        if (variable := getattr(mlflow.environment_variables, attribute, None)) is not None:
            environment[variable.name] = value
    if os.environ.get("MLFLOW_READ_REPLICA_BACKEND_STORE_URI"):
        environment[constants.READ_REPLICA_BACKEND_STORE_URI_ENV_VAR] = os.environ["MLFLOW_READ_REPLICA_BACKEND_STORE_URI"]
    if os.environ.get("MLFLOW_STATIC_PREFIX"):
        from mlflow.server.handlers import STATIC_PREFIX_ENV_VAR

        environment[STATIC_PREFIX_ENV_VAR] = os.environ["MLFLOW_STATIC_PREFIX"]
    return environment


def serve(app: str) -> None:
    """gunicorn on MLflow's app with gunicorn.conf.py, prepared as `mlflow server` prepares it.

    Not through `mlflow server --gunicorn-opts`: how that runs its workers is MLflow's choice, and
    newer releases run them on uvicorn (4-5x slower per call here), so the worker class would
    change under us with a version bump. This process becomes gunicorn's master (exec), so
    stop signals reach gunicorn directly. The Host/CORS middleware reads MLflow's variables,
    set here from cvops' ones. An operator who sets MLFLOW_SERVER_ALLOWED_HOSTS gets exactly
    that list (e.g. to refuse private addresses).
    """
    import server_patches
    import ui_defaults

    if app not in APPS:
        fail(f"usage: server_setup.py serve {{{' | '.join(APPS)}}}")
    try:  # checked here, before gunicorn, so a typo stops the server with one line instead of crashing workers
        ui_defaults.default_workflow()
        patches = server_patches.plan()
    except (ValueError, server_patches.PatchSelectionError) as error:
        fail(str(error))
    # Said once here; each worker applies the same plan (same environment, same packages).
    for note in patches.notes:
        say(note)
    say(f"server patches: {', '.join(patch.name for patch in patches.enabled) or 'none'}")
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    if MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():
        # `mlflow server` starts the job runner beside its server process and watches both; the
        # runner is MLflow's private machinery, which this server does not reproduce.
        fail("MLFLOW_SERVER_ENABLE_JOB_EXECUTION is not supported: the cvops server runs gunicorn "
             "directly, without MLflow's job runner (GenAI judges, trace archival)")
    if not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = allowed_hosts(os.environ.get("MLFLOW_ALLOWED_HOSTS", ""))
    if os.environ.get("MLFLOW_CORS_ALLOWED_ORIGINS"):
        os.environ["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = os.environ["MLFLOW_CORS_ALLOWED_ORIGINS"]
    # MLflow draws tqdm progress bars for the artifact transfers it proxies wherever tqdm is
    # installed: in a server log they are noise that pushes real lines out of `docker compose logs`.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    backend_store_uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    registry_store_uri = os.environ.get("MLFLOW_REGISTRY_STORE_URI") or backend_store_uri
    os.environ.update(mlflow_worker_environment(backend_store_uri, registry_store_uri))
    # What `mlflow server` checks before starting gunicorn, so a broken database or auth setup
    # stops the server with one error instead of workers crashing in a loop.
    from mlflow.server.handlers import initialize_backend_stores

    try:
        initialize_backend_stores(
            backend_store_uri,
            registry_store_uri,
            "mlflow-artifacts:/",
            workspace_store_uri=os.environ.get("MLFLOW_WORKSPACE_STORE_URI"),
            read_replica_backend_store_uri=os.environ.get("MLFLOW_READ_REPLICA_BACKEND_STORE_URI"),
        )
    except Exception as error:  # noqa: BLE001 (whatever the store raises, the server must not start)
        fail(f"cannot initialise the backend store: {error}")
    if importlib.util.find_spec("mlflow.tracing.trace_rollup_service"):  # MLflow 3.17 on
        from mlflow.tracing.trace_rollup_service import validate_sql_trace_rollup_startup

        validate_sql_trace_rollup_startup(backend_store_uri)
    if app == "basic-auth":
        from mlflow.environment_variables import _MLFLOW_AUTH_ADMIN_BOOTSTRAPPED
        from mlflow.server import _bootstrap_basic_auth  # `mlflow server`'s own step, whatever it checks in this release

        _bootstrap_basic_auth()
        os.environ[_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.name] = "true"
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, APPS[app]])


def patch_report() -> None:
    """One line per patch: name, required?, verified for the installed versions, names missing.

    What infra/check-mlflow-upgrade.sh reads; it loads the basic-auth module like a server with
    auth does, so that the auth patches' names are looked up too."""
    import server_patches

    importlib.import_module(server_patches.AUTH_MODULE)
    for patch in server_patches.PATCHES:
        missing = []
        for name in patch.touches:
            try:
                server_patches.resolve(name)
            except (ImportError, AttributeError):
                missing.append(name)
        reason = server_patches.unverified_because(patch)
        print("\t".join((patch.name, "required" if patch.at_stake else "optional",
                         "verified" if reason is None else f"unverified ({reason})",
                         ", ".join(missing) or "-")))


COMMANDS = {
    "render-auth-config": render_auth_config,
    "migrate": migrate,
    "serve": serve,
    "patch-report": patch_report,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"usage: server_setup.py {{{' | '.join(COMMANDS)}}} ARGS…")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
