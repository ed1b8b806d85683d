#!/usr/bin/env bash
# cvops MLflow server container entrypoint (also what tests/harness runs, so tests exercise the
# same start-up path as the container).
#
#   entrypoint.sh serve     (default) validate config, then exec `mlflow server` under gunicorn
#   entrypoint.sh migrate   create the auth database if missing, upgrade both schemas (idempotent)
#
# The environment contract is documented in docs/server.md.
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
PYTHON=${PYTHON:-python}

die() { printf 'cvops-mlflow: error: %s\n' "$*" >&2; exit 64; }
say() { printf 'cvops-mlflow: %s\n' "$*" >&2; }

require() {
    local name=$1
    [ -n "${!name:-}" ] || die "$name is required but empty or unset (see docs/server.md)"
}

auth_enabled() {
    case "${MLFLOW_AUTH:-on}" in
        on|true|1|yes) return 0 ;;
        off|false|0|no) return 1 ;;
        *) die "MLFLOW_AUTH must be 'on' or 'off', got '${MLFLOW_AUTH}'" ;;
    esac
}

# Secrets people copy from examples: refusing them at start-up beats an endpoint anyone can use.
is_known_default() {
    local value=${1,,}
    case "$value" in
        admin|password|password1234|passw0rd|mlflow|secret|default|changeme|change-me|change_me|\
        12345678|123456789|1234567890|qwerty123|*changeme*|*change-me*|*change_me*|*replace-me*|*replace_me*)
            return 0 ;;
    esac
    return 1
}

check_backend() {
    require MLFLOW_BACKEND_STORE_URI
    case "$MLFLOW_BACKEND_STORE_URI" in
        postgresql+psycopg2://*) ;;
        postgresql://*|postgres://*)
            die "MLFLOW_BACKEND_STORE_URI must start with postgresql+psycopg2:// (SQLAlchemy 2.1 has no default PostgreSQL driver)" ;;
        *) die "MLFLOW_BACKEND_STORE_URI must be a postgresql+psycopg2:// URI" ;;
    esac
    if auth_enabled; then
        require MLFLOW_AUTH_DATABASE_URI
        case "$MLFLOW_AUTH_DATABASE_URI" in
            postgresql+psycopg2://*) ;;
            *) die "MLFLOW_AUTH_DATABASE_URI must be a postgresql+psycopg2:// URI (a separate database, e.g. …/mlflow_auth)" ;;
        esac
        [ "$MLFLOW_AUTH_DATABASE_URI" != "$MLFLOW_BACKEND_STORE_URI" ] \
            || die "MLFLOW_AUTH_DATABASE_URI must name a different database than MLFLOW_BACKEND_STORE_URI"
    fi
}

check_auth_secrets() {
    auth_enabled || return 0
    : "${MLFLOW_ADMIN_USERNAME:=admin}"
    require MLFLOW_ADMIN_PASSWORD
    is_known_default "$MLFLOW_ADMIN_PASSWORD" \
        && die "MLFLOW_ADMIN_PASSWORD is a well-known default; set a strong password in .env"
    [ "${#MLFLOW_ADMIN_PASSWORD}" -ge 12 ] \
        || die "MLFLOW_ADMIN_PASSWORD must be at least 12 characters"
    require MLFLOW_FLASK_SERVER_SECRET_KEY
    is_known_default "$MLFLOW_FLASK_SERVER_SECRET_KEY" \
        && die "MLFLOW_FLASK_SERVER_SECRET_KEY is a well-known default; generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
    [ "${#MLFLOW_FLASK_SERVER_SECRET_KEY}" -ge 16 ] \
        || die "MLFLOW_FLASK_SERVER_SECRET_KEY must be at least 16 characters; generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
}

check_artifacts() {
    require MLFLOW_ARTIFACTS_DESTINATION
    case "$MLFLOW_ARTIFACTS_DESTINATION" in
        s3://?*) ;;
        *) die "MLFLOW_ARTIFACTS_DESTINATION must be s3://bucket[/prefix], got '$MLFLOW_ARTIFACTS_DESTINATION'" ;;
    esac
}

# MLflow reads the auth settings from an ini file; render ours into a private temp dir so the
# database password never lands in the image or a world-readable path.
write_auth_config() {
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/cvops-auth.XXXXXX")
    chmod 700 "$dir"
    export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini"
    (umask 077 && "$PYTHON" "$HERE/server_setup.py" render-auth-config \
        "$HERE/basic_auth.ini.template" "$MLFLOW_AUTH_CONFIG_PATH")
    # MLflow reads the admin bootstrap credentials from these; the password stays out of the file.
    export MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_ADMIN_USERNAME"
    export MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD"
}

migrate() {
    check_backend
    local schemas=(tracking)
    if auth_enabled; then schemas+=(auth); fi
    # One Python process (each step used to import MLflow in its own); the database URIs are
    # read from the environment, which keeps their passwords out of the process list.
    "$PYTHON" "$HERE/server_setup.py" migrate "${schemas[@]}"
}

serve() {
    check_backend
    check_artifacts
    check_auth_secrets

    local port=${MLFLOW_PORT:-5000}
    export GUNICORN_THREADS=${GUNICORN_THREADS:-8}
    # See docs/server.md "Sizing": peak connections = workers × 3 engines × (pool + overflow).
    # A pool smaller than the thread count closes a connection each time the busiest threads
    # return theirs and opens a new one (backend start + login) on the next burst; the overflow
    # covers MLflow calls that hold two sessions at once.
    export MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=${MLFLOW_SQLALCHEMYSTORE_POOL_SIZE:-$GUNICORN_THREADS}
    export MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=${MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW:-4}
    # Recycle before common idle-connection cut-offs of proxies and PostgreSQL poolers.
    export MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE=${MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE:-1800}

    # MLflow's job runner (huey consumers for GenAI judges, trace archival) is extra processes a
    # CV tracking server never uses; opt back in with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

    # A CV team's server is a training tracker: no AI Gateway endpoints or UI entry, and no usage
    # data sent from a self-hosted server. Either can be turned back on in the environment.
    export MLFLOW_ENABLE_AI_GATEWAY=${MLFLOW_ENABLE_AI_GATEWAY:-false}
    export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}

    # prometheus_client's multiprocess mode needs an empty directory per server generation.
    local metrics_dir
    metrics_dir=$(mktemp -d "${TMPDIR:-/tmp}/cvops-metrics.XXXXXX")
    export PROMETHEUS_MULTIPROC_DIR="$metrics_dir"

    local args=(
        --host "${MLFLOW_HOST:-0.0.0.0}" --port "$port"
        --workers "${GUNICORN_WORKERS:-2}"
        --serve-artifacts
        --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
        --default-artifact-root mlflow-artifacts:/
        --gunicorn-opts "-c $HERE/gunicorn.conf.py"
        --expose-prometheus "$metrics_dir"
    )
    # `mlflow server` reads MLFLOW_BACKEND_STORE_URI itself: as --backend-store-uri the database
    # password would show in the process list.
    export MLFLOW_BACKEND_STORE_URI
    if auth_enabled; then
        write_auth_config
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        args+=(--app-name basic-auth)
    else
        say "WARNING: MLFLOW_AUTH=off: anyone who reaches port $port can read and change everything"
    fi
    say "serving on port $port (auth ${MLFLOW_AUTH:-on}, artifacts proxied to $MLFLOW_ARTIFACTS_DESTINATION)"
    # `mlflow server`, after setting MLflow's Host and CORS variables from MLFLOW_ALLOWED_HOSTS and
    # MLFLOW_CORS_ALLOWED_ORIGINS (see run_mlflow_server).
    exec "$PYTHON" "$HERE/server_setup.py" mlflow-server "${args[@]}"
}

case "${1:-serve}" in
    serve) serve ;;
    migrate) migrate ;;
    *) die "unknown command '$1' (expected: serve | migrate)" ;;
esac
