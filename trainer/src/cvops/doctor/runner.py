"""Runs the checks in order, skipping those whose prerequisites failed."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, TextIO

from cvops.doctor import checks
from cvops.doctor.report import CheckResult, Status, render


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[checks.Probe], CheckResult]
    requires: tuple[str, ...] = ()


CHECKS = (
    Check("network", checks.check_network),
    Check("tls", checks.check_tls, requires=("network",)),
    Check("server", checks.check_server, requires=("tls",)),
    Check("host", checks.check_host_header, requires=("server",)),
    Check("login", checks.check_auth, requires=("host",)),
    Check("experiment", checks.check_experiment, requires=("login",)),
    Check("metrics", checks.check_metrics, requires=("experiment",)),
    Check("artifacts", checks.check_artifacts, requires=("metrics",)),
    Check("s3-free", checks.check_no_s3_credentials, requires=("artifacts",)),
    Check("clock", checks.check_clock, requires=("server",)),
    Check("gpus", checks.check_gpus),
)


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except UnicodeEncodeError:
        return False
    return True


def _run_one(check: Check, probe: checks.Probe) -> CheckResult:
    try:
        return check.run(probe)
    except Exception as error:  # noqa: BLE001 - one broken check must not hide the others
        return CheckResult(
            check.name,
            Status.FAIL,
            f"the check itself crashed: {type(error).__name__}: {checks._short(error)}",
            "please report this with the line above",
        )


def run_doctor(
    tracking_uri: str | None = None, *, artifact_mb: int = 4, out: TextIO | None = None
) -> int:
    """Print one line per check; return 0 only if a training job here can track."""
    import mlflow

    out = out or sys.stdout
    unicode = _can_encode(out, "✓✗→–")
    probe = checks.Probe(tracking_uri or mlflow.get_tracking_uri(), artifact_mb=artifact_mb)
    print(f"cvops doctor: {probe.tracking_uri} (MLflow client {mlflow.__version__})", file=out)
    passed: set[str] = set()
    results: list[CheckResult] = []
    for check in CHECKS:
        missing = [name for name in check.requires if name not in passed]
        if missing:
            result = CheckResult(check.name, Status.SKIP, f"skipped: needs {missing[0]}")
        else:
            result = _run_one(check, probe)
        if result.status in (Status.PASS, Status.WARN, Status.INFO):
            passed.add(check.name)
        results.append(result)
        print(render(result, unicode=unicode), file=out, flush=True)
    print(render(checks.cleanup(probe), unicode=unicode), file=out)
    failures = [r for r in results if r.failed]
    if failures:
        print(
            f"{len(failures)} problem(s): fix the first failed line, then run `cvops doctor` again.",
            file=out,
        )
        return 1
    print(f"Ready: training jobs on this machine can track to {probe.tracking_uri}", file=out)
    return 0
