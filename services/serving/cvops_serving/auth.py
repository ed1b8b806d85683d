"""Callers sign in with their tracking-server login: the server itself checks it.

Each (login, model) pair is checked by asking the tracking server for the registered model with
the caller's credentials: 401 there means a wrong login, 403 no permission to read the model.
Answers are cached for a short while so a busy client costs the tracking server one call per
CVOPS_SERVE_AUTH_CACHE_S, and a removed user or permission stops working within that time.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import requests

CHECK_TIMEOUT_S = 10


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 allowed, 401 unknown login, 403 not allowed to read the model, 502 server unreachable
    message: str = ""


class TrackingServerAuth:
    def __init__(self, tracking_uri: str, cache_s: float):
        self._url = f"{tracking_uri}/api/2.0/mlflow/registered-models/get"
        self._cache_s = cache_s
        self._cache: dict[tuple[str, str], tuple[float, Verdict]] = {}
        self._lock = threading.Lock()
        self._session = requests.Session()

    def check(self, credentials: tuple[str, str] | None, model_name: str) -> Verdict:
        # The password is part of the key only as a digest: a wrong password has its own entry.
        login = "" if credentials is None else hashlib.sha256("\0".join(credentials).encode()).hexdigest()
        key = (login, model_name)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        verdict = self._ask(credentials, model_name)
        if verdict.status != 502:  # an unreachable server is asked again on the next request
            with self._lock:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                self._cache[key] = (now + self._cache_s, verdict)
        return verdict

    def _ask(self, credentials: tuple[str, str] | None, model_name: str) -> Verdict:
        try:
            response = self._session.get(self._url, params={"name": model_name}, auth=credentials,
                                         timeout=CHECK_TIMEOUT_S)
        except requests.RequestException as exc:
            return Verdict(502, f"the tracking server could not check the login ({type(exc).__name__})")
        if response.status_code == 401:
            return Verdict(401, "sign in with your tracking-server login (HTTP basic auth)")
        if response.status_code == 403:
            return Verdict(403, f"your login may not read the registered model {model_name!r}")
        if response.status_code in (200, 404):  # signed in; 404: the server's registry lacks the model
            return Verdict(200)
        return Verdict(502, f"the tracking server answered {response.status_code} while checking the login")
