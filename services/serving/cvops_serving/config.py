"""The serving container's environment contract, read once (docs/serving.md "Configuration")."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

DEFAULT_ALIAS = "champion"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    alias: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


@dataclass(frozen=True)
class Settings:
    tracking_uri: str
    username: str | None
    password: str | None
    models: tuple[ModelSpec, ...]
    poll_interval_s: float
    auth_cache_s: float


def _value(environ: Mapping[str, str], name: str) -> str | None:
    """NAME, or the contents of the file NAME_FILE names (the compose stack's secrets volume)."""
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as secret:
                return secret.read().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from None
    return environ.get(name) or None


def parse_models(value: str) -> tuple[ModelSpec, ...]:
    """``name[@alias],...`` -> specs; the alias defaults to ``champion``."""
    specs = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, _, alias = entry.partition("@")
        if not name.strip():
            raise ConfigError(f"CVOPS_SERVE_MODELS: entry {entry!r} has no model name (expected name[@alias])")
        specs.append(ModelSpec(name.strip(), alias.strip() or DEFAULT_ALIAS))
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"CVOPS_SERVE_MODELS names {', '.join(duplicated)} more than once: a URL serves one version")
    if not specs:
        raise ConfigError("CVOPS_SERVE_MODELS is empty: name at least one registered model (name[@alias],...)")
    return tuple(specs)


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name) or str(default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def from_environ(environ: Mapping[str, str] = os.environ) -> Settings:
    tracking_uri = environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ConfigError("MLFLOW_TRACKING_URI is required: the tracking server whose registry holds the models")
    username = _value(environ, "MLFLOW_TRACKING_USERNAME")
    password = _value(environ, "MLFLOW_TRACKING_PASSWORD")
    if bool(username) != bool(password):
        raise ConfigError("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or their *_FILE): both or neither")
    return Settings(
        tracking_uri=tracking_uri.rstrip("/"),
        username=username,
        password=password,
        models=parse_models(environ.get("CVOPS_SERVE_MODELS", "")),
        poll_interval_s=_positive_float(environ, "CVOPS_SERVE_POLL_INTERVAL_S", 10.0),
        auth_cache_s=_positive_float(environ, "CVOPS_SERVE_AUTH_CACHE_S", 30.0),
    )
