"""`cvops doctor`: can a training job on this machine track to the team's MLflow server?

Each check prints one line (✓ / ✗ / ! / i / –) with what it found and, when something is
wrong, the likely cause and the fix. The checks run in the order a job meets the problems:
network, TLS, server, host header, login, experiment, metrics, artifacts, S3, clock, GPUs.
A check whose prerequisite failed is skipped rather than left to time out.
"""
from __future__ import annotations

from cvops.doctor.report import CheckResult, Status, render
from cvops.doctor.runner import run_doctor

__all__ = ["CheckResult", "Status", "render", "run_doctor"]
