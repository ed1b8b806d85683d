"""The shell blocks of the README and the guides, run as written against the real server.

A newcomer copies these commands; each block that can run without Docker runs here in a fresh
virtualenv, from the repository root (the docs say "from a clone"), with only the documented
placeholders filled in: the example URL becomes the harness server's, `alice` and her password a
real team member's. Lines that need Docker or a cluster are left to the compose tier, which runs
`docker compose up -d`, the image builds and `cvops submit` itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.shell_blocks import REPO_ROOT, shell_blocks

pytestmark = pytest.mark.integration

ELSEWHERE = ("docker ", "kubectl ", "cvops submit", "bash tests/run.sh")  # the compose tier / CI run these
PLACEHOLDER_URL = re.compile(r"https?://mlflow\.(?:example\.com|team\.example)(?::\d+)?")
PLACEHOLDER_PASSWORD = re.compile(r"(MLFLOW_TRACKING_PASSWORD=)(?:'the password you were given'|\.\.\.|…)")


def runnable_here(blocks: list[list[str]]) -> str:
    return "\n".join(line for block in blocks for line in block if not line.lstrip().startswith(ELSEWHERE))


@pytest.fixture(scope="module")
def member(tracking_server) -> tuple[str, str]:
    credentials = ("docs-alice", "alice-pw-" + os.urandom(6).hex())
    tracking_server.create_user(*credentials)
    return credentials


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("docs") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv


def run_as_a_newcomer(script: str, *, tracking_server, member, venv: Path, home: Path) -> subprocess.CompletedProcess:
    username, password = member
    script = PLACEHOLDER_URL.sub(tracking_server.url, script)
    script = re.sub(r"\balice\b", username, script)
    script = PLACEHOLDER_PASSWORD.sub(lambda m: f"{m.group(1)}'{password}'", script)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "AWS_", "CVOPS_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:{env['PATH']}", PYTHONIOENCODING="utf-8")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("document, block_indexes", [
    ("README.md", (1,)),              # a team member: install the SDK, point it at the server, doctor
    ("docs/onboarding.md", None),     # the same, step by step
    ("docs/jobs.md", (0,)),           # the CLI and the example data (the image build runs in compose)
])
def test_documented_commands_run_as_written(document, block_indexes, tracking_server, member, fresh_venv, tmp_path):
    blocks = shell_blocks(document)
    chosen = blocks if block_indexes is None else [blocks[index] for index in block_indexes]
    script = runnable_here(chosen)
    assert script.strip(), f"{document}: no runnable shell block left"
    home = tmp_path / "home"
    home.mkdir()
    result = run_as_a_newcomer(script, tracking_server=tracking_server, member=member, venv=fresh_venv, home=home)
    assert result.returncode == 0, f"{document}:\n{script}\n---\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    if "cvops doctor" in script:
        assert "✗" not in result.stdout, result.stdout
