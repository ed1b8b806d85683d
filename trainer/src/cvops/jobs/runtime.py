"""`cvops train -- COMMAND`: the trainer images' entrypoint.

It runs the job's command as a child, forwards SIGTERM/SIGINT to it (so `cvops stop` and
`kubectl delete` reach the training loop, whose cvops Run marks itself KILLED), and when the
child is gone makes sure the run the submitter pre-created (``MLFLOW_RUN_ID``) is not left
RUNNING: a job that crashed before the SDK started, or that never used the SDK, still ends as
FAILED/KILLED/FINISHED with its exit code tagged. Tracking problems here only warn.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from cvops.config import ConfigError, load_settings

EXIT_CODE_TAG = "cvops.exit_code"


def final_status(exit_code: int, stop_requested: bool) -> str:
    if exit_code == 0:
        return "FINISHED"
    return "KILLED" if stop_requested else "FAILED"


def close_run_if_open(tracking_uri: str, run_id: str, status: str, exit_code: int) -> str | None:
    """Ends ``run_id`` with ``status`` unless the job already ended it; returns what was done."""
    from cvops.tracking.transport import Transport, TransportError

    transport = Transport(tracking_uri)
    try:
        current = transport.get_run(run_id)["info"]["status"]
        if current != "RUNNING":
            return None
        transport.log_batch(run_id, tags=[(EXIT_CODE_TAG, str(exit_code))])
        transport.update_run(run_id, status, end_ms=int(time.time() * 1000))
        return status
    except TransportError as error:
        print(f"[cvops] could not close run {run_id} as {status}: {error}", file=sys.stderr)
        return None


def run_supervised(command: list[str]) -> int:
    if not command:
        print("cvops train: give the job's command after --, e.g. cvops train -- python train.py", file=sys.stderr)
        return 2
    try:
        child = subprocess.Popen(command)
    except OSError as error:
        print(f"cvops train: cannot start {command[0]!r}: {error.strerror}", file=sys.stderr)
        exit_code = 127
        stop_requested = False
    else:
        stop_requested = False

        def forward(signum, _frame):
            nonlocal stop_requested
            stop_requested = True
            child.send_signal(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, forward)
        returncode = child.wait()
        # A child killed by signal N reports -N; shells report 128+N, and so do we.
        exit_code = 128 - returncode if returncode < 0 else returncode
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"[cvops] not checking the run's final state: {error}", file=sys.stderr)
        return exit_code
    if settings.enabled and settings.resume_run_id:
        closed = close_run_if_open(
            settings.tracking_uri, settings.resume_run_id, final_status(exit_code, stop_requested), exit_code
        )
        if closed:
            print(f"[cvops] the job exited with {exit_code} without ending its run; marked it {closed}", file=sys.stderr)
    return exit_code
