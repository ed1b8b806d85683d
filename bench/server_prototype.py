"""Server changes proposed to the server's owner, measured here before they land in services/mlflow.

``prototype_entrypoint(dir, changes)`` copies services/mlflow into ``dir`` and makes its gunicorn
config call :func:`apply` after MLflow's own patches, so ``entrypoint.sh serve`` runs unchanged
otherwise. ``CVOPS_PROTOTYPE`` (comma-separated) picks the changes:

* ``admin-cache``: basic-auth's ``_before_request`` asks the auth database whether the caller is
  an admin on *every* request (``sender_is_admin`` -> ``store.get_user``: a pool checkout with a
  pre-ping round trip, a SELECT and a COMMIT), although the credential check just above is served
  from MLflow's per-worker auth cache. Answering it from that cache (same TTL, same invalidation on
  user changes) drops one database conversation per request.
* ``no-pre-ping``: MLflow creates its engines with ``pool_pre_ping=True``: one extra round trip on
  every connection checkout (several per request). Without it a connection broken by a PostgreSQL
  restart fails one request instead (pool_recycle still bounds connection age).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cached_sender_is_admin(auth, original):
    from flask import request

    def sender_is_admin():
        credentials = request.authorization
        if auth._USER_AUTH_CACHE is not None and credentials is not None:
            key = auth._auth_cache_key(credentials.username, credentials.password)
            with auth._USER_AUTH_CACHE_LOCK:
                user = auth._USER_AUTH_CACHE.get(key)
            if user is not None:
                return user.is_admin
        return original()

    return sender_is_admin


def _engines_without_pre_ping():
    from mlflow.server import auth, handlers

    for store in (auth.store, handlers._get_tracking_store()):
        store.engine.pool._pre_ping = False


def apply() -> None:
    changes = set(filter(None, os.environ.get("CVOPS_PROTOTYPE", "").split(",")))
    if "no-pre-ping" in changes:
        _engines_without_pre_ping()
    if "admin-cache" in changes:
        from mlflow.server import auth

        auth.sender_is_admin = _cached_sender_is_admin(auth, auth.sender_is_admin)


def prototype_entrypoint(target: Path) -> Path:
    """A copy of services/mlflow whose gunicorn workers also run :func:`apply`."""
    shutil.copytree(REPO_ROOT / "services" / "mlflow", target, dirs_exist_ok=True)
    conf = target / "gunicorn.conf.py"
    conf.write_text(conf.read_text() + (
        "\n\n_shipped_post_worker_init = post_worker_init\n\n"
        "def post_worker_init(worker):\n"
        "    _shipped_post_worker_init(worker)\n"
        f"    sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "    from bench import server_prototype\n"
        "    server_prototype.apply()\n"
    ))
    return target / "entrypoint.sh"
