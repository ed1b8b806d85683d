#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls exactly this).
# A flat checklist of idempotent steps: system packages, Docker engine, Python env, pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${CVOPS_VENV:-$ROOT/.venv}
# Machines without a container registry keep a stand-in image builder and the framework wheels in
# ../shared beside the checkout (or where CVOPS_SHARED_DIR points).
SHARED_DIR=${CVOPS_SHARED_DIR:-$ROOT/../shared}
OFFLINE_SETUP=${DOCKER_OFFLINE_SETUP:-}
if [ -z "$OFFLINE_SETUP" ] && [ -f "$SHARED_DIR/docker-offline/setup.sh" ]; then
    OFFLINE_SETUP=$SHARED_DIR/docker-offline/setup.sh
fi
export CVOPS_FRAMEWORK_WHEELS=${CVOPS_FRAMEWORK_WHEELS:-$SHARED_DIR/wheels}

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

install_system_packages() {
    step "System packages (PostgreSQL server for the test harness, Chromium for the browser test)"
    local missing=()
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    if [ ${#missing[@]} -eq 0 ]; then echo "present"; return; fi
    if ! as_root true 2>/dev/null; then
        echo "missing ${missing[*]} and no root: the tests that need them will skip, saying why"; return
    fi
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

STAND_IN_IMAGES="offline/debian:bookworm offline/python:3.11-slim offline/postgres:15 offline/s3:latest"

start_docker_engine() {
    step "Docker engine (compose tests)"
    if docker info >/dev/null 2>&1; then
        echo "engine running"
        # The engine that setup.sh starts keeps its lock open, so a second setup.sh would wait forever.
        # shellcheck disable=SC2086
        if docker image inspect $STAND_IN_IMAGES >/dev/null 2>&1; then echo "stand-in images present"; return; fi
    fi
    if [ -n "$OFFLINE_SETUP" ]; then
        echo "stand-in images: $OFFLINE_SETUP"
        # No registry is reachable here: build the stand-in base images the compose tests use.
        as_root bash "$OFFLINE_SETUP" || echo "docker-offline setup failed: compose tests will skip"
    elif ! docker info >/dev/null 2>&1; then
        echo "no Docker engine: compose tests will skip"
    fi
}

python_environment() {
    step "Python environment ($VENV)"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r requirements-dev.txt -e "./trainer[tfod,jobs,gpu]"
}

framework_environments() {
    step "Framework environments (real Detectron2 and TF OD API for tests/frameworks; cached by recipe)"
    "$VENV/bin/python" -m tests.frameworks.environments
}

debian_mirror() {
    # The machine's own Debian archive, as apt knows it (deb822 .sources or one-line sources.list).
    cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i} /^deb / {print ($2 ~ /^\[/ ? $3 : $2)}' \
        | grep -E '/debian/?$' | head -n 1
}

compose_v2() {
    step "Compose v2 (the compose tier checks that v1 and v2 read docker-compose.yml alike)"
    local target=$VENV/libexec/docker-compose-v2
    if docker compose version >/dev/null 2>&1 || [ -x "$target" ]; then echo "present"; return; fi
    # Debian 12 ships only docker-compose 1.29; Debian 13's docker-compose package is v2, a static binary.
    local mirror=${DEBIAN_MIRROR:-$(debian_mirror)} arch work deb
    if [ -z "$mirror" ]; then echo "no Debian mirror in the apt sources: the v1/v2 comparison will skip"; return; fi
    arch=$(dpkg --print-architecture)
    work=$(mktemp -d)
    if curl -fsSL "$mirror/dists/trixie/main/binary-$arch/Packages.xz" | xz -dc >"$work/Packages" \
        && deb=$(awk '/^Package: docker-compose$/ {found=1} found && /^Filename:/ {print $2; exit}' "$work/Packages") \
        && [ -n "$deb" ] && curl -fsSL -o "$work/compose.deb" "$mirror/$deb" \
        && dpkg-deb -x "$work/compose.deb" "$work/root"; then
        install -D -m 755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$target"
        "$target" version
    else
        echo "could not fetch Compose v2 from $mirror: the v1/v2 comparison will skip"
    fi
    rm -rf "$work"
}

# Free disk a whole pytest run wants: its peak was measured at 18 GB with the compose tier's images
# and volumes beside a framework's model environment; with the compose tier last it is the larger of
# the two (~11 GB, estimated), and this leaves a margin (README.md, "Set up").
PYTEST_PEAK_GB=16

disk_space() {
    step "Disk space (a whole run needs about $PYTEST_PEAK_GB GB free from here)"
    local free_gb
    free_gb=$(df -P -BG "$ROOT" "${TMPDIR:-/tmp}" 2>/dev/null | awk 'NR > 1 {sub("G", "", $4); print $4}' | sort -n | head -n 1)
    df -h "$ROOT" "${TMPDIR:-/tmp}" | uniq
    if [ -n "$free_gb" ] && [ "$free_gb" -lt "$PYTEST_PEAK_GB" ]; then
        echo "WARNING: ${free_gb} GB free: the run may stop with 'No space left on device' (free some, or run one tier)"
    fi
}

run_pytest() {
    step "pytest $*"
    local rc=0
    "$VENV/bin/python" -m pytest "$@" || rc=$?
    # pytest's 5 means "no tests collected": a filter that matches nothing is not a failure of the code.
    [ "$rc" = 5 ] && rc=0
    return "$rc"
}

install_system_packages
start_docker_engine
python_environment
framework_environments
compose_v2
disk_space
run_pytest "$@"
