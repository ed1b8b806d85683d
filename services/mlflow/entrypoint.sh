#!/usr/bin/env bash
# cvops MLflow server container entrypoint (also what tests/harness runs, so tests exercise the
# same start-up path as the container).
#
#   entrypoint.sh serve             (default) validate config, then exec gunicorn on MLflow's app
#   entrypoint.sh migrate           create the auth (and sweeps) database if missing, upgrade the schemas (idempotent)
#   entrypoint.sh secrets           the compose stack's secrets volume: keep what it holds, take values
#                                   set in the environment (.env), generate the rest (as root)
#   entrypoint.sh secrets-export DIR / secrets-import DIR   copy the volume out/in (backup, restore)
#   entrypoint.sh admin-password    print the admin's first password (`cvops-admin-password`)
#
# The environment contract is documented in docs/server.md; the secrets volume in docs/operations.md.
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
PYTHON=${PYTHON:-python}

die() { printf 'cvops-mlflow: error: %s\n' "$*" >&2; exit 64; }
say() { printf 'cvops-mlflow: %s\n' "$*" >&2; }

# Checks record every problem and refuse once, so an operator fixes all of them in one go.
PROBLEMS=()
problem() { PROBLEMS+=("$*"); }
refuse_on_problems() {
    [ ${#PROBLEMS[@]} -eq 0 ] && return 0
    printf 'cvops-mlflow: error: %s\n' "${PROBLEMS[@]}" >&2
    exit 64
}

# require NAME: true when set; else records the problem.
require() {
    local name=$1
    [ -n "${!name:-}" ] && return 0
    problem "$name is required but empty or unset (see docs/server.md)"
    return 1
}

auth_enabled() {
    case "${MLFLOW_AUTH:-on}" in
        off|false|0|no) return 1 ;;
        *) return 0 ;;  # anything but an explicit off keeps auth on; check_auth_flag refuses typos
    esac
}

check_auth_flag() {
    case "${MLFLOW_AUTH:-on}" in
        on|true|1|yes|off|false|0|no) ;;
        *) problem "MLFLOW_AUTH must be 'on' or 'off', got '${MLFLOW_AUTH}'" ;;
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
    check_auth_flag
    if require MLFLOW_BACKEND_STORE_URI; then
        case "$MLFLOW_BACKEND_STORE_URI" in
            postgresql+psycopg2://*) ;;
            postgresql://*|postgres://*)
                problem "MLFLOW_BACKEND_STORE_URI must start with postgresql+psycopg2:// (SQLAlchemy 2.1 has no default PostgreSQL driver)" ;;
            *) problem "MLFLOW_BACKEND_STORE_URI must be a postgresql+psycopg2:// URI" ;;
        esac
    fi
    if auth_enabled && require MLFLOW_AUTH_DATABASE_URI; then
        case "$MLFLOW_AUTH_DATABASE_URI" in
            postgresql+psycopg2://*) ;;
            *) problem "MLFLOW_AUTH_DATABASE_URI must be a postgresql+psycopg2:// URI (a separate database, e.g. …/mlflow_auth)" ;;
        esac
        [ "$MLFLOW_AUTH_DATABASE_URI" != "${MLFLOW_BACKEND_STORE_URI:-}" ] \
            || problem "MLFLOW_AUTH_DATABASE_URI must name a different database than MLFLOW_BACKEND_STORE_URI"
    fi
}

# The stack's secrets (docs/operations.md "Secrets"). In the secrets volume each is a file named
# after the variable in lower case; a service gets NAME_FILE pointing at it.
SECRET_NAMES=(POSTGRES_PASSWORD S3_ACCESS_KEY S3_SECRET_KEY MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY)
SECRETS_DIR=${CVOPS_SECRETS_DIR:-/run/secrets}

# The shortest value each secret may have: MLflow's minimum password length, MinIO's minimum
# access/secret key lengths, and a signing key worth the name.
secret_min_length() {
    case $1 in
        MLFLOW_ADMIN_PASSWORD) echo 12 ;;
        MLFLOW_FLASK_SERVER_SECRET_KEY) echo 16 ;;
        S3_SECRET_KEY) echo 8 ;;
        S3_ACCESS_KEY) echo 3 ;;
        *) echo 1 ;;
    esac
}

# A generated value: hex (URL-, shell- and copy-safe), within MinIO's 20/40-character key limits.
generate_secret() {
    local bytes
    case $1 in
        S3_ACCESS_KEY) bytes=8 ;;
        S3_SECRET_KEY) bytes=20 ;;
        MLFLOW_ADMIN_PASSWORD) bytes=16 ;;
        *) bytes=32 ;;
    esac
    "$PYTHON" -c "import secrets; print(secrets.token_hex($bytes))"
}

# check_secret NAME: records why the value of NAME is unusable, if it is.
check_secret() {
    local name=$1 value minimum
    require "$name" || return 0
    value=${!name}
    minimum=$(secret_min_length "$name")
    if is_known_default "$value"; then
        problem "$name is a well-known default; set a strong value, or remove it from .env to have one generated"
    elif [ "${#value}" -lt "$minimum" ]; then
        problem "$name must be at least $minimum characters"
    fi
}

check_auth_secrets() {
    auth_enabled || return 0
    : "${MLFLOW_ADMIN_USERNAME:=admin}"
    check_secret MLFLOW_ADMIN_PASSWORD
    check_secret MLFLOW_FLASK_SERVER_SECRET_KEY
}

# NAME_FILE (the secrets volume, what compose passes) instead of NAME itself, which `docker
# inspect` would show. POSTGRES_PASSWORD goes into both database URIs, which then name none.
read_secret_files() {
    local name file_variable file
    for name in POSTGRES_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
        file_variable=${name}_FILE
        file=${!file_variable:-}
        [ -n "$file" ] || continue
        if [ -n "${!name:-}" ]; then
            problem "set $name or $file_variable, not both"
        elif [ ! -r "$file" ]; then
            problem "$file_variable=$file is not a readable file (is the secrets volume mounted?)"
        else
            printf -v "$name" '%s' "$(<"$file")"
            export "${name?}"
        fi
        unset "$file_variable"
    done
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        local quoted
        # From standard input: as an argument the password would show in the process list.
        quoted=$(printf '%s' "$POSTGRES_PASSWORD" \
            | "$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.stdin.read(), safe=""))')
        add_database_password MLFLOW_BACKEND_STORE_URI "$quoted"
        add_database_password MLFLOW_AUTH_DATABASE_URI "$quoted"
        add_database_password CVOPS_SWEEP_DATABASE_URI "$quoted"
        unset POSTGRES_PASSWORD
    fi
}

# add_database_password NAME QUOTED_PASSWORD: puts the password into the URI held by NAME.
add_database_password() {
    local name=$1 uri=${!1:-} scheme rest user
    case $uri in
        "") return 0 ;;
        *://*@*) ;;
        *) problem "$name must name a user (scheme://user@host/db) for POSTGRES_PASSWORD to be added"; return 0 ;;
    esac
    scheme=${uri%%://*}
    rest=${uri#*://}
    user=${rest%%@*}
    case $user in
        *:*) problem "$name carries a password and POSTGRES_PASSWORD is set too: give it once"; return 0 ;;
    esac
    printf -v "$name" '%s' "$scheme://$user:$2@${rest#*@}"
    export "${name?}"
}

check_artifacts() {
    require MLFLOW_ARTIFACTS_DESTINATION || return 0
    case "$MLFLOW_ARTIFACTS_DESTINATION" in
        s3://?*) ;;
        *) problem "MLFLOW_ARTIFACTS_DESTINATION must be s3://bucket[/prefix], got '$MLFLOW_ARTIFACTS_DESTINATION'" ;;
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
    read_secret_files
    check_backend
    refuse_on_problems
    local schemas=(tracking)
    if auth_enabled; then schemas+=(auth); fi
    if [ -n "${CVOPS_SWEEP_DATABASE_URI:-}" ]; then schemas+=(sweeps); fi
    # One Python process (each step used to import MLflow in its own); the database URIs are
    # read from the environment, which keeps their passwords out of the process list.
    "$PYTHON" "$HERE/server_setup.py" migrate "${schemas[@]}"
}

serve() {
    read_secret_files
    check_backend
    check_artifacts
    check_auth_secrets
    refuse_on_problems

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
    # CV tracking server never uses (server_setup.py serve refuses it: gunicorn runs without it).
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

    # A CV team's server is a training tracker: no AI Gateway endpoints or UI entry, and no usage
    # data sent from a self-hosted server. Either can be turned back on in the environment.
    export MLFLOW_ENABLE_AI_GATEWAY=${MLFLOW_ENABLE_AI_GATEWAY:-false}
    export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}

    # prometheus_client's multiprocess mode needs an empty directory per server generation.
    local metrics_dir
    metrics_dir=$(mktemp -d "${TMPDIR:-/tmp}/cvops-metrics.XXXXXX")
    export PROMETHEUS_MULTIPROC_DIR="$metrics_dir"

    # The database URI reaches the server in the environment: as an argument its password would
    # show in the process list. gunicorn.conf.py reads MLFLOW_HOST, MLFLOW_PORT, GUNICORN_WORKERS.
    export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
    local app=plain
    if auth_enabled; then
        write_auth_config
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        app=basic-auth
        announce_first_admin_password
    else
        say "WARNING: MLFLOW_AUTH=off: anyone who reaches port $port can read and change everything"
    fi
    say "serving on port $port (auth ${MLFLOW_AUTH:-on}, artifacts proxied to $MLFLOW_ARTIFACTS_DESTINATION)"
    # gunicorn on MLflow's app, set up as `mlflow server` would set it up (see server_setup.serve).
    exec "$PYTHON" "$HERE/server_setup.py" serve "$app"
}

# On the first start (no admin user yet; MLflow creates it with MLFLOW_ADMIN_PASSWORD) the server's
# log shows the password once: in the stack it was generated, and the log is where operators look.
announce_first_admin_password() {
    admin_exists && return 0
    say "================================================================================"
    say "first start: the admin user '$MLFLOW_ADMIN_USERNAME' is created with the password"
    say "    $MLFLOW_ADMIN_PASSWORD"
    say "print it again:  docker compose exec -T mlflow cvops-admin-password"
    say "change it: docs/server.md \"The admin password\" (this is shown on the first start only)"
    say "================================================================================"
}

# True when the admin user exists, or when the database cannot tell (then nothing is announced).
admin_exists() {
    "$PYTHON" - "$MLFLOW_ADMIN_USERNAME" <<'EOF'
import os
import sys

import sqlalchemy

engine = sqlalchemy.create_engine(os.environ["MLFLOW_AUTH_DATABASE_URI"])
try:
    with engine.connect() as connection:
        found = connection.execute(sqlalchemy.text("SELECT 1 FROM users WHERE username = :name"),
                                   {"name": sys.argv[1]}).first()
except sqlalchemy.exc.ProgrammingError:  # no users table yet: MLflow has not bootstrapped auth
    found = None
except sqlalchemy.exc.SQLAlchemyError:
    sys.exit(0)
sys.exit(0 if found else 1)
EOF
}

# `cvops-admin-password` (docker compose exec -T mlflow cvops-admin-password): the admin's first
# password on standard output, or an explanation and status 1 once it no longer logs in.
admin_password() {
    read_secret_files
    refuse_on_problems
    require MLFLOW_ADMIN_PASSWORD || refuse_on_problems
    local username=${MLFLOW_ADMIN_USERNAME:-admin} status
    status=$(MLFLOW_ADMIN_USERNAME=$username "$PYTHON" - <<'EOF'
import base64
import os
import urllib.error
import urllib.request

credentials = f"{os.environ['MLFLOW_ADMIN_USERNAME']}:{os.environ['MLFLOW_ADMIN_PASSWORD']}"
request = urllib.request.Request(
    f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}/api/2.0/mlflow/users/get"
    f"?username={os.environ['MLFLOW_ADMIN_USERNAME']}",
    headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()})
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError:
    print("unreachable")
EOF
)
    case $status in
        401)
            printf '%s\n' "cvops-admin-password: the first password of '$username' no longer logs in: it was" \
                "changed (docs/server.md \"The admin password\"). The server never resets it; use the" \
                "current one." >&2
            return 1 ;;
        unreachable)
            say "note: the server does not answer yet; this is the password the admin was created with" ;;
    esac
    printf '%s\n' "$MLFLOW_ADMIN_PASSWORD"
}

# The secrets volume (SECRETS_DIR, run as root): every override is checked before anything is
# written; a value set in the environment replaces the stored one, a stored one is kept, a missing
# one is generated. Files are root's, mode 0444: each image reads them as its own user (postgres
# entrypoints re-read *_FILE after dropping root, the server runs as mlflow), and only the stack's
# containers mount the volume; on the host it stays under Docker's root-only volume directory.
secrets_init() {
    local name file value
    for name in "${SECRET_NAMES[@]}"; do
        [ -z "${!name:-}" ] || check_secret "$name"
    done
    refuse_on_problems
    umask 077
    mkdir -p "$SECRETS_DIR"
    for name in "${SECRET_NAMES[@]}"; do
        file=$SECRETS_DIR/${name,,}
        if [ -n "${!name:-}" ]; then
            value=${!name}
            if [ -s "$file" ] && [ "$(<"$file")" = "$value" ]; then
                say "$name: kept (the value set in .env or the environment)"
                continue
            fi
            say "$name: set from .env or the environment"
        elif [ -s "$file" ]; then
            say "$name: kept"
            continue
        else
            value=$(generate_secret "$name")
            say "$name: generated"
        fi
        printf '%s' "$value" >"$file.new"
        mv -f "$file.new" "$file"
    done
    chmod 0755 "$SECRETS_DIR"
    chmod 0444 "$SECRETS_DIR"/*
}

# secrets-export DIR: the secrets into DIR (a backup), owned by SECRETS_OWNER (uid:gid), mode 0600.
secrets_export() {
    local target=${1:?secrets-export needs a directory} owner=${SECRETS_OWNER:-0:0} name
    for name in "${SECRET_NAMES[@]}"; do
        [ -s "$SECRETS_DIR/${name,,}" ] || die "the secrets volume has no ${name,,}; start the stack once first"
        install -m 0600 -o "${owner%%:*}" -g "${owner##*:}" \
            "$SECRETS_DIR/${name,,}" "$target/${name,,}"
    done
}

# secrets-import DIR: the secrets of a backup into the volume, then the usual init (so a value set
# in .env still wins, and a secret the backup lacks is generated).
secrets_import() {
    local source=${1:?secrets-import needs a directory} name
    umask 077
    mkdir -p "$SECRETS_DIR"
    for name in "${SECRET_NAMES[@]}"; do
        [ -s "$source/${name,,}" ] || continue
        cp "$source/${name,,}" "$SECRETS_DIR/${name,,}.new"
        mv -f "$SECRETS_DIR/${name,,}.new" "$SECRETS_DIR/${name,,}"
        say "${name}: restored"
    done
    secrets_init
}

case "${1:-serve}" in
    serve) serve ;;
    migrate) migrate ;;
    secrets) secrets_init ;;
    secrets-export) secrets_export "${2:-}" ;;
    secrets-import) secrets_import "${2:-}" ;;
    admin-password) admin_password ;;
    *) die "unknown command '$1' (expected: serve | migrate | secrets | secrets-export DIR | secrets-import DIR | admin-password)" ;;
esac
