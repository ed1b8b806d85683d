"""The served models: each ``models:/<name>@<alias>`` loaded, and followed as the alias moves.

A background thread resolves every alias each poll interval. When one points at another version,
that version is loaded beside the one serving and then swapped in with one assignment: requests
that started keep the model they picked up, new ones get the new version, none fails. A version
that fails to load is logged and retried on the next poll while the previous one keeps serving.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from cvops.detection_schema import CLASS_NAMES_TAG, InputFormat, class_names_from_tag, model_predict, normalise
from cvops.registry import load_registered_version
from mlflow import MlflowClient

from cvops_serving.config import ModelSpec

log = logging.getLogger("cvops_serving")


@dataclass(frozen=True)
class LoadedVersion:
    name: str
    version: str
    run_model: Callable  # cvops.detection_schema.model_predict of the loaded pyfunc
    input_format: InputFormat
    class_names: dict[int, str]
    # The version's downloaded files: removed once the version is swapped out and the last request
    # that picked it up has answered (the last reference goes), so the disk holds one copy per model.
    files: tempfile.TemporaryDirectory | None = None

    def predict(self, images) -> list[dict]:
        output = self.run_model(self.input_format.model_input(images))
        return normalise(output, images, self.input_format, self.class_names)


def load_version(client: MlflowClient, name: str, version: str) -> LoadedVersion:
    pyfunc, files = load_registered_version(name, version)
    tags = client.get_model_version(name, version).tags
    return LoadedVersion(name, version, model_predict(pyfunc), InputFormat.of(pyfunc),
                         class_names_from_tag(tags.get(CLASS_NAMES_TAG)), files)


@dataclass(frozen=True)
class ModelState:
    spec: ModelSpec
    serving: LoadedVersion | None
    last_error: str | None


class ServedModels:
    def __init__(self, specs: tuple[ModelSpec, ...], client: MlflowClient, poll_interval_s: float,
                 loader: Callable[[MlflowClient, str, str], LoadedVersion] = load_version):
        self._client = client
        self._poll_interval_s = poll_interval_s
        self._loader = loader
        self._states = {spec.name: ModelState(spec, None, None) for spec in specs}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._states

    def serving(self, name: str) -> LoadedVersion | None:
        return self._states[name].serving

    def ready(self) -> bool:
        return all(state.serving is not None for state in self._states.values())

    def status(self) -> dict[str, dict]:
        return {
            name: {"alias": state.spec.alias, "version": state.serving.version if state.serving else None,
                   "ready": state.serving is not None, "last_error": state.last_error}
            for name, state in self._states.items()
        }

    def refresh(self) -> None:
        """Resolve every alias once; load and swap in versions that changed."""
        for name, state in self._states.items():
            try:
                version = self._client.get_model_version_by_alias(name, state.spec.alias).version
                if state.serving is not None and state.serving.version == version:
                    continue
                started = time.monotonic()
                loaded = self._loader(self._client, name, version)
            except Exception as exc:  # a broken version or a server blip must not stop the others
                message = f"{state.spec.uri}: {type(exc).__name__}: {exc}"
                if message != state.last_error:
                    log.error("cannot load %s (the serving version, if any, keeps answering)", message)
                self._states[name] = ModelState(state.spec, state.serving, message[:2000])
                continue
            previous = state.serving.version if state.serving else None
            self._states[name] = ModelState(state.spec, loaded, None)
            log.info("%s: serving version %s (was %s), loaded in %.1f s", state.spec.uri, version,
                     previous or "none", time.monotonic() - started)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self._poll_interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="cvops-alias-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
