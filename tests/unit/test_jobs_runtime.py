"""`cvops train --`: the images' entrypoint passes the job's exit code and stop signals through."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cvops.jobs.runtime import final_status

UNTRACKED = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def train(*command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvops", "train", "--", *command], env=UNTRACKED,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_exit_code_is_the_commands():
    process = train(sys.executable, "-c", "import sys; print('trained'); sys.exit(3)")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 3 and "trained" in out


def test_missing_command_is_127():
    process = train("definitely-not-a-command-cvops")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 127 and "cannot start" in err


def test_sigterm_reaches_the_training_process():
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saving checkpoint', flush=True), sys.exit(143)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = train(sys.executable, "-c", script)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert "saving checkpoint" in out and process.returncode == 143


@pytest.mark.parametrize("code, stopped, status", [(0, False, "FINISHED"), (1, False, "FAILED"), (143, True, "KILLED"), (0, True, "FINISHED")])
def test_final_status(code, stopped, status):
    assert final_status(code, stopped) == status
