# shellcheck shell=bash
# Shared by infra/backup.sh, restore.sh and upgrade.sh (sourced, never run).
# Settings resolve like Compose resolves them: process environment, then .env, then the default.
set -euo pipefail

CVOPS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$CVOPS_ROOT"
ENV_FILE=$CVOPS_ROOT/.env
# Long-running services whose health decides that the stack is up (used by the scripts).
# shellcheck disable=SC2034
STACK_SERVICES=(postgres minio mlflow)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# setting NAME DEFAULT: the value Compose would interpolate for ${NAME:-DEFAULT}.
setting() {
    local name=$1 default=$2 value=${!1:-}
    if [ -z "$value" ] && [ -f "$ENV_FILE" ]; then
        value=$(sed -n "s/^[[:space:]]*${name}[[:space:]]*=[[:space:]]*//p" "$ENV_FILE" | tail -n 1)
        value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
    fi
    printf '%s' "${value:-$default}"
}

# The compose command: $COMPOSE (environment or .env), else `docker compose`, else `docker-compose`.
COMPOSE_CMD=()
detect_compose() {
    local configured
    configured=$(setting COMPOSE "")
    if [ -n "$configured" ]; then
        read -r -a COMPOSE_CMD <<<"$configured"
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE_CMD=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE_CMD=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is installed: install Docker Compose"
    fi
}
compose() { "${COMPOSE_CMD[@]}" "$@"; }

preflight() {
    step "Pre-flight checks"
    command -v docker >/dev/null 2>&1 || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running? are you in the docker group?)"
    detect_compose
    info "compose command: ${COMPOSE_CMD[*]}"
    local problem
    if ! problem=$(compose config -q 2>&1); then
        die "the compose configuration is invalid (check .env against .env.example):
$problem"
    fi
    info "project: $(compose_project)"
}

compose_project() {
    local name
    name=$(setting COMPOSE_PROJECT_NAME "$(basename "$CVOPS_ROOT")")
    # Compose normalises the project name to lower-case alphanumerics, '-' and '_'.
    printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-'
}

container_of() { compose ps -q "$1" 2>/dev/null | head -n 1; }

# health SERVICE: healthy | unhealthy | starting | running | exited | missing
health() {
    local id
    id=$(container_of "$1")
    [ -n "$id" ] || { echo missing; return; }
    docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}

require_running() {
    local service state
    for service in "$@"; do
        state=$(health "$service")
        [ "$state" = healthy ] || die "service '$service' is $state; start the stack first: ${COMPOSE_CMD[*]} up -d"
    done
}

# wait_healthy TIMEOUT_S SERVICE...: block until every service reports healthy.
wait_healthy() {
    local timeout=$1 start=$SECONDS service state pending
    shift
    while :; do
        pending=()
        for service in "$@"; do
            state=$(health "$service")
            case $state in
                healthy) ;;
                unhealthy|exited|dead) die "service '$service' is $state; see: ${COMPOSE_CMD[*]} logs $service" ;;
                *) pending+=("$service:$state") ;;
            esac
        done
        [ ${#pending[@]} -eq 0 ] && { info "healthy after $((SECONDS - start))s: $*"; return; }
        [ $((SECONDS - start)) -ge "$timeout" ] && die "not healthy after ${timeout}s: ${pending[*]}"
        sleep 2
    done
}

# postgres_tool TOOL ARGS...: a PostgreSQL client tool (pg_dump, pg_restore, createdb, dropdb) run
# inside the postgres container against the configured server (the bundled one or an external
# POSTGRES_HOST) with the stack's credentials. Standard input and output pass through.
postgres_tool() {
    local tool=$1
    shift
    # shellcheck disable=SC2016 # expanded by the container's shell: the password file it mounts
    compose exec -T postgres sh -c 'PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") exec "$@"' sh "$tool" \
        --host "$(setting POSTGRES_HOST postgres)" --port "$(setting POSTGRES_PORT 5432)" \
        --username "$(setting POSTGRES_USER mlflow)" "$@"
}

# secrets_mirror export|import HOST_DIR: copy the secrets volume to/from HOST_DIR with the server
# image's `secrets-export` / `secrets-import` (as root in the container; exported files are the
# invoking user's, mode 0600).
secrets_mirror() {
    local direction=$1 dir
    dir=$(cd "$2" && pwd)
    compose run --rm --no-deps -T -e SECRETS_OWNER="$(id -u):$(id -g)" -v "$dir:/mirror" secrets \
        "secrets-$direction" /mirror
}

# Every database of the stack: MLflow's tracking and auth databases (a backup must have them) and
# the sweeps' Optuna studies (backups made before sweeps existed have none).
required_databases() { printf '%s\n' "$(setting POSTGRES_DB mlflow)" "$(setting POSTGRES_AUTH_DB mlflow_auth)"; }
sweep_database() { setting POSTGRES_SWEEP_DB optuna; }
databases() { required_databases; sweep_database; }
database_exists() {
    [ "$(postgres_tool psql --dbname=postgres --no-align --tuples-only \
        --command="SELECT 1 FROM pg_database WHERE datname = '$1'")" = 1 ]
}

# bucket_mirror export|import HOST_DIR: copy the artifact bucket to/from HOST_DIR with the
# storage-init image (minio SDK, any S3 API), as the invoking user so the files stay theirs.
bucket_mirror() {
    local direction=$1 dir
    dir=$(cd "$2" && pwd)
    compose run --rm --no-deps -T --user "$(id -u):$(id -g)" -v "$dir:/mirror" storage-init "$direction" /mirror
}
