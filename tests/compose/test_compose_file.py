"""docker-compose.yml reads the same in Compose v2 and docker-compose 1.29.

A team runs `docker compose up -d` (v2); this machine, like many older hosts, has only
docker-compose 1.29. Both resolve the file (`config`, every profile) and must agree on what
matters: the services, their images, environments, ports, volumes, start order and health
checks; both read it with no secret set (the stack generates them), and a secret that is set
reaches only the `secrets` service, never another service's environment. No Docker engine is needed.

Compose v2: `docker compose` where the plugin is installed, else the binary that tests/run.sh
unpacks from Debian's docker-compose 2.x package into .venv/libexec (Debian 12 ships only v1).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.compose

REPO_ROOT = Path(__file__).resolve().parents[2]
V2_FROM_RUN_SH = Path(sys.executable).parent.parent / "libexec" / "docker-compose-v2"
PROFILES = ("--profile", "tls", "--profile", "train", "--profile", "serve")
SECRETS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD",
           "MLFLOW_FLASK_SERVER_SECRET_KEY")


def _compose_v1() -> list[str] | None:
    found = shutil.which("docker-compose")
    if found and subprocess.run([found, "version", "--short"], capture_output=True,
                                text=True).stdout.startswith("1."):
        return [found]
    return None


def _compose_v2() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [str(V2_FROM_RUN_SH)] if V2_FROM_RUN_SH.is_file() else None


@pytest.fixture(scope="module")
def implementations(tmp_path_factory):
    found = {"v1": _compose_v1(), "v2": _compose_v2()}
    missing = [name for name, command in found.items() if command is None]
    if missing:
        pytest.skip(f"Compose {' and '.join(missing)} not installed here (tests/run.sh fetches v2 from "
                    "Debian; v1 is Debian 12's docker-compose package)")
    # An empty env file: the developer's own .env must not decide the outcome.
    empty_env_file = tmp_path_factory.mktemp("compose-config") / "empty.env"
    empty_env_file.touch()
    return {name: [*command, "--env-file", str(empty_env_file)] for name, command in found.items()}


def _environment(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}
    env.update({name: secrets.token_hex(8) for name in SECRETS})
    env["COMPOSE_PROJECT_NAME"] = "cvops-config-check"
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def _config(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "-f", "docker-compose.yml", *PROFILES, "config"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def _volume(entry) -> tuple[str, str, bool]:
    if isinstance(entry, dict):
        return entry["source"], entry["target"], bool(entry.get("read_only"))
    source, target, *mode = entry.split(":")
    return source, target, mode == ["ro"]


def _essentials(service: dict) -> dict:
    """What each implementation must agree on, in one spelling (v2 writes long forms)."""
    command = service.get("command")
    healthcheck = service.get("healthcheck") or {}
    return {
        "image": service.get("image"),
        "build_args": (service.get("build") or {}).get("args"),
        "command": shlex.split(command) if isinstance(command, str) else command,
        "environment": service.get("environment"),
        "profiles": sorted(service.get("profiles") or []),
        "depends_on": {name: spec["condition"] for name, spec in (service.get("depends_on") or {}).items()},
        "healthcheck": "disabled" if healthcheck.get("disable") or healthcheck.get("test") == ["NONE"]
                       else healthcheck.get("test"),
        "ports": sorted((int(p["published"]), int(p["target"])) for p in service.get("ports") or []),
        "volumes": sorted(_volume(v) for v in service.get("volumes") or []),
        "restart": service.get("restart"),
    }


def test_v1_and_v2_resolve_the_same_stack(implementations):
    env = _environment()
    resolved = {}
    for name, command in implementations.items():
        result = _config(command, env)
        assert result.returncode == 0, f"Compose {name} cannot read docker-compose.yml:\n{result.stderr}"
        resolved[name] = yaml.safe_load(result.stdout)["services"]

    assert set(resolved["v1"]) == set(resolved["v2"])
    assert {"postgres", "minio", "storage-init", "migrate", "mlflow", "proxy"} <= set(resolved["v1"])
    for service in resolved["v1"]:
        assert _essentials(resolved["v1"][service]) == _essentials(resolved["v2"][service]), service


def test_both_read_the_stack_with_no_secret_set(implementations):
    env = _environment(**dict.fromkeys(SECRETS))
    for name, command in implementations.items():
        result = _config(command, env)
        assert result.returncode == 0, f"Compose {name} needs a secret set:\n{result.stderr}"
        services = yaml.safe_load(result.stdout)["services"]
        assert services["secrets"]["environment"] == dict.fromkeys(SECRETS, ""), name


def test_a_secret_set_reaches_only_the_secrets_service(implementations):
    env = _environment()
    for name, command in implementations.items():
        services = yaml.safe_load(_config(command, env).stdout)["services"]
        assert {key: services["secrets"]["environment"][key] for key in SECRETS} == {key: env[key] for key in SECRETS}
        for service, spec in services.items():
            if service == "secrets":
                continue
            values = " ".join(str(value) for value in (spec.get("environment") or {}).values())
            leaked = [secret for secret in SECRETS if env[secret] in values]
            assert not leaked, f"Compose {name}: {service} gets {leaked} in its environment"
