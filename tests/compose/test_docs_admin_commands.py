"""docs/server.md's admin commands, run as written against the compose stack: the admin password
comes from the stack itself (`cvops-admin-password`), not from a variable the shell lacks. Only
the stack's own URL and compose command stand in for `http://localhost:5000` and `docker compose`
(this project runs under its own name and port, and the machine may have Compose v1)."""
from __future__ import annotations

import uuid

import pytest
import requests

from tests.harness.shell_blocks import shell_blocks

pytestmark = pytest.mark.compose


def test_the_admin_block_of_the_server_guide_runs_as_written(compose_stack):
    # The users block; the admin-password rotation block would change the password every other
    # test of this session's stack logs in with.
    [block] = [block for block in shell_blocks("docs/server.md") if any("users/create" in line for line in block)]
    user = f"alice{uuid.uuid4().hex[:6]}"
    script = "\n".join(block)
    script = script.replace("docker compose", " ".join(compose_stack.compose_cmd))
    script = script.replace("http://localhost:5000", compose_stack.url).replace("alice", user)
    result = compose_stack.run("bash", "-euo", "pipefail", "-c", script, check=False)
    assert result.returncode == 0, f"{script}\n---\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "features_enabled" in result.stdout  # server-info answered

    # What the block did, seen by the new user: logged in with the changed password, an admin.
    me = requests.get(f"{compose_stack.url}/api/2.0/mlflow/users/get", params={"username": user},
                      auth=(user, "a-new-long-password"), timeout=10)
    assert me.status_code == 200 and me.json()["user"]["is_admin"] is True
