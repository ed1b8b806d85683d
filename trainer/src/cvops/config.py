"""The one place cvops reads ``os.environ``.

Every setting is read and validated here, once, into an immutable :class:`Settings`; a bad
value raises :class:`ConfigError` naming the variable and what it accepts. The rest of the
package receives a ``Settings`` and never looks at the environment itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# The standard tag schema (docs/sdk.md, "Tag schema"): one set of names for every framework.
STANDARD_TAGS = ("task", "framework", "backbone", "dataset", "env", "team", "git_commit", "image", "hardware")
TAG_ENV_PREFIX = "CVOPS_TAG_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """An environment variable has a value cvops cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    tracking_uri: str | None = None
    experiment_name: str | None = None
    resume_run_id: str | None = None
    run_name: str | None = None
    tracking_username: str | None = None
    disabled: bool = False
    spool_dir: Path = Path.home() / ".cache" / "cvops" / "spool"
    spool_max_bytes: int = 2 * 1024**3
    flush_interval_s: float = 0.5
    exit_flush_timeout_s: float = 30.0
    request_timeout_s: float = 10.0
    cache_dir: Path = Path.home() / ".cache" / "cvops"
    system_metrics: bool = False
    in_container: bool = False
    image: str | None = None
    image_digest: str | None = None
    image_id: str | None = None
    git_commit: str | None = None
    seed: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    export_on: str = "off"

    @property
    def enabled(self) -> bool:
        return not self.disabled and bool(self.tracking_uri)

    @property
    def not_tracked_reason(self) -> str | None:
        if self.disabled:
            return "CVOPS_DISABLED is set"
        if not self.tracking_uri:
            return "MLFLOW_TRACKING_URI is not set"
        return None


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off")


def _number(environ: Mapping[str, str], name: str, default, kind=float, minimum=0):
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


_SIZE_SUFFIXES = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(environ: Mapping[str, str], name: str, default: int) -> int:
    """Bytes, with an optional K/M/G/T suffix (binary): ``CVOPS_SPOOL_MAX_BYTES=20G``."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower().removesuffix("ib").removesuffix("b")
    multiplier = _SIZE_SUFFIXES.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in _SIZE_SUFFIXES else text
    try:
        value = int(float(digits) * multiplier)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a size; use bytes or a K/M/G/T suffix, e.g. 20G") from None
    if value < 1024 * 1024:
        raise ConfigError(f"{name}={raw!r} is below the 1 MiB minimum")
    return value


def _optional(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _tracking_uri(environ: Mapping[str, str]) -> str | None:
    uri = _optional(environ, "MLFLOW_TRACKING_URI")
    if uri and "://" not in uri and not uri.startswith(("databricks", "file:", "/")):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri!r} has no scheme; use e.g. https://mlflow.example.org or http://host:5000"
        )
    return uri


EXPORT_WHEN = ("off", "register", "promote")


def export_when(environ: Mapping[str, str]) -> str:
    """``CVOPS_EXPORT``: when a registered model is exported (cvops.export): ``register`` by the
    adapters that register it, ``promote`` by cvops.registry.promote once it is promoted."""
    value = (_optional(environ, "CVOPS_EXPORT") or "off").lower()
    if value not in EXPORT_WHEN:
        raise ConfigError(f"CVOPS_EXPORT={environ['CVOPS_EXPORT']!r} is not one of {', '.join(EXPORT_WHEN)}")
    return value


def _tags(environ: Mapping[str, str]) -> dict[str, str]:
    """``CVOPS_TAG_TEAM=vision`` -> ``{"team": "vision"}``; any name, the standard ones documented."""
    return {
        name[len(TAG_ENV_PREFIX):].lower(): value
        for name, value in environ.items()
        if name.startswith(TAG_ENV_PREFIX) and value.strip() and len(name) > len(TAG_ENV_PREFIX)
    }


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every cvops setting from ``environ`` (default: ``os.environ``) and validate it."""
    env = os.environ if environ is None else environ
    username = _optional(env, "MLFLOW_TRACKING_USERNAME")
    password = _optional(env, "MLFLOW_TRACKING_PASSWORD")
    if bool(username) != bool(password):
        missing = "MLFLOW_TRACKING_PASSWORD" if username else "MLFLOW_TRACKING_USERNAME"
        raise ConfigError(f"{missing} is not set while its partner is; basic auth needs both")
    cache_dir = Path(_optional(env, "CVOPS_CACHE_DIR") or Path.home() / ".cache" / "cvops").expanduser()
    in_container = _flag(env, "CVOPS_IN_CONTAINER", default=Path("/.dockerenv").exists())
    seed = _number(env, "CVOPS_SEED", None, kind=int, minimum=0)
    return Settings(
        tracking_uri=_tracking_uri(env),
        experiment_name=_optional(env, "MLFLOW_EXPERIMENT_NAME"),
        resume_run_id=_optional(env, "MLFLOW_RUN_ID"),
        run_name=_optional(env, "CVOPS_RUN_NAME") or _optional(env, "MLFLOW_RUN_NAME"),
        tracking_username=username,
        disabled=_flag(env, "CVOPS_DISABLED", default=False),
        spool_dir=Path(_optional(env, "CVOPS_SPOOL_DIR") or cache_dir / "spool").expanduser(),
        spool_max_bytes=_size(env, "CVOPS_SPOOL_MAX_BYTES", 2 * 1024**3),
        flush_interval_s=_number(env, "CVOPS_FLUSH_INTERVAL_S", 0.5, minimum=0.01),
        exit_flush_timeout_s=_number(env, "CVOPS_EXIT_FLUSH_TIMEOUT_S", 30.0),
        request_timeout_s=_number(env, "CVOPS_REQUEST_TIMEOUT_S", 10.0, minimum=0.1),
        cache_dir=cache_dir,
        system_metrics=_flag(env, "CVOPS_SYSTEM_METRICS", default=in_container),
        in_container=in_container,
        image=_optional(env, "CVOPS_IMAGE"),
        image_digest=_optional(env, "CVOPS_IMAGE_DIGEST"),
        image_id=_optional(env, "CVOPS_IMAGE_ID"),
        git_commit=_optional(env, "CVOPS_GIT_COMMIT") or _optional(env, "GIT_COMMIT"),
        seed=seed,
        tags=_tags(env),
        export_on=export_when(env),
    )
