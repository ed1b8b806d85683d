"""Dataset lineage: a content digest of a dataset, cheap to recompute when nothing changed.

The digest of a directory is SHA-256 over its files in sorted relative-path order (each file
contributes its relative path and its own SHA-256), so renaming, adding, removing or editing
any file changes it. Each file's SHA-256 is cached in SQLite under the cvops cache directory,
keyed by (absolute path, mtime, size): re-running on an unchanged 100 GB dataset only stats it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE

log = logging.getLogger("cvops")

_CHUNK = 4 * 1024 * 1024
_PROGRESS_EVERY_S = 10.0
CONTEXT_TAG = "mlflow.data.context"
SHA256_INPUT_TAG = "cvops.sha256"


@dataclass(frozen=True)
class DatasetDigest:
    sha256: str
    files: int
    bytes: int


class DigestCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS file_digest (path TEXT PRIMARY KEY, mtime_ns INTEGER,"
                         " size INTEGER, sha256 TEXT)")

    def get(self, path: str, mtime_ns: int, size: int) -> str | None:
        row = self._db.execute("SELECT sha256 FROM file_digest WHERE path=? AND mtime_ns=? AND size=?",
                               (path, mtime_ns, size)).fetchone()
        return row[0] if row else None

    def put(self, path: str, mtime_ns: int, size: int, sha256: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO file_digest VALUES (?, ?, ?, ?)", (path, mtime_ns, size, sha256))

    def close(self) -> None:
        self._db.commit()
        self._db.close()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_digest(path: Path, cache_dir: Path, files: Sequence[Path] | None = None) -> DatasetDigest:
    """SHA-256 over the files under ``path`` (or of the file itself), with cached per-file digests.
    ``files`` (under ``path``) limits it to those: an evaluation set that is one split's annotation
    file and the images it names, where the folder also holds the training split."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    if files is not None:
        files = sorted({Path(file).resolve() for file in files})
        outside = [file for file in files if file != path and path not in file.parents]
        if outside:
            raise ValueError(f"dataset files must lie under {path}; {outside[0]} does not")
    elif path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
    cache = DigestCache(Path(cache_dir) / "dataset-digests.sqlite")
    total = hashlib.sha256()
    nbytes = 0
    last_report = time.monotonic()
    try:
        for index, file in enumerate(files, 1):
            stat = file.stat()
            key = str(file)
            sha = cache.get(key, stat.st_mtime_ns, stat.st_size)
            if sha is None:
                sha = file_sha256(file)
                cache.put(key, stat.st_mtime_ns, stat.st_size, sha)
            relative = file.name if file == path else file.relative_to(path).as_posix()
            total.update(f"{relative}\0{sha}\n".encode())
            nbytes += stat.st_size
            if time.monotonic() - last_report > _PROGRESS_EVERY_S:
                last_report = time.monotonic()
                log.warning("cvops: hashing dataset %s: %d/%d files, %.1f GiB", path, index, len(files),
                            nbytes / 1024**3)
    finally:
        cache.close()
    return DatasetDigest(total.hexdigest(), len(files), nbytes)


def dataset_input(path_or_uri: str | os.PathLike, name: str, context: str, cache_dir: Path,
                  files: Sequence[Path] | None = None) -> dict:
    """The ``DatasetInput`` (as the REST API's JSON) for ``mlflow.log_input``'s REST call;
    ``files``: only these files under a local path make the digest (:func:`dataset_digest`)."""
    text = os.fspath(path_or_uri)
    is_remote = "://" in text and not text.startswith("file://")
    if is_remote:
        # A remote dataset is identified by its URI; cvops cannot read it to hash contents.
        sha = hashlib.sha256(text.encode()).hexdigest()
        source_type, source, profile = _remote_source(text), text, {"digest_of": "uri"}
    else:
        local = Path(text.removeprefix("file://")).expanduser().resolve()
        digest = dataset_digest(local, cache_dir, files)
        sha, source_type, source = digest.sha256, "local", local.as_uri()
        profile = {"digest_of": "content", "files": digest.files, "bytes": digest.bytes}
    source_json = json.dumps({"url": source} if source_type == "http" else {"uri": source})
    return {
        "tags": [{"key": CONTEXT_TAG, "value": context}, {"key": SHA256_INPUT_TAG, "value": sha}],
        "dataset": {
            "name": name,
            "digest": sha[:MAX_DATASET_DIGEST_SIZE],
            "source_type": source_type,
            "source": source_json,
            "profile": json.dumps(profile),
        },
    }


def _remote_source(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower()
    return "http" if scheme in ("http", "https") else scheme
