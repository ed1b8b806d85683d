"""Artifact bucket bootstrap and mirror for any S3 API (MinIO, RustFS, SeaweedFS, AWS S3).

    storage.py init          create the bucket (idempotent), versioning on, abort stale multipart uploads
    storage.py export DIR    copy every object of the bucket into DIR (infra/backup.sh)
    storage.py import DIR    upload every file under DIR as an object (infra/restore.sh)

Configuration comes from the environment only (the compose file passes it):
S3_ENDPOINT_URL, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION (optional),
S3_MULTIPART_ABORT_DAYS (default 7), S3_WAIT_SECONDS (how long to wait for the endpoint, default 60).
S3_ACCESS_KEY_FILE / S3_SECRET_KEY_FILE name a file holding the key instead (the stack's secrets
volume, so the keys stay out of `docker inspect`).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule
from minio.versioningconfig import VersioningConfig

SECRET_NAMES = ("S3_ACCESS_KEY", "S3_SECRET_KEY")
ABORT_MULTIPART_RULE_ID = "cvops-abort-incomplete-multipart-uploads"
TRANSFER_THREADS = 8
# Codes an S3 implementation answers for an API it does not have (moto, some gateways).
UNSUPPORTED_API_CODES = {"NotImplemented", "MethodNotAllowed", "XNotImplemented"}


def log(message: str) -> None:
    print(f"storage-init: {message}", flush=True)


class ConfigError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"storage-init: {message}")


@dataclass(frozen=True)
class Settings:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str | None
    multipart_abort_days: int
    wait_seconds: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Settings":
        env = {**env, **{name: _read_secret_file(env, name) for name in SECRET_NAMES if env.get(f"{name}_FILE")}}
        missing = [name for name in ("S3_ENDPOINT_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET")
                   if not env.get(name)]
        if missing:
            raise ConfigError(f"set {', '.join(missing)} (see .env.example)")
        return cls(
            endpoint_url=env["S3_ENDPOINT_URL"],
            access_key=env["S3_ACCESS_KEY"],
            secret_key=env["S3_SECRET_KEY"],
            bucket=env["S3_BUCKET"],
            region=env.get("S3_REGION") or None,
            multipart_abort_days=_positive_int(env, "S3_MULTIPART_ABORT_DAYS", 7),
            wait_seconds=float(_positive_int(env, "S3_WAIT_SECONDS", 60)),
        )

    def client(self) -> Minio:
        url = urlsplit(self.endpoint_url)
        if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
            raise ConfigError(
                f"S3_ENDPOINT_URL={self.endpoint_url!r} must look like http(s)://host[:port] "
                "(no path: the bucket is S3_BUCKET)")
        return Minio(url.netloc, access_key=self.access_key, secret_key=self.secret_key,
                     secure=url.scheme == "https", region=self.region)


def _read_secret_file(env: dict[str, str], name: str) -> str:
    path = env[f"{name}_FILE"]
    if env.get(name):
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE={path!r} cannot be read ({exc.strerror}); is the secrets volume mounted?") from exc


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name}={raw!r} must be a whole number >= 1")
    return int(raw)


def wait_for_endpoint(client: Minio, settings: Settings) -> bool:
    """True when the bucket exists. Retries while the endpoint is still starting; fails fast on auth errors."""
    deadline = time.monotonic() + settings.wait_seconds
    while True:
        try:
            return client.bucket_exists(settings.bucket)
        except S3Error:
            raise
        except Exception as exc:  # connection refused / DNS not ready while the store starts
            if time.monotonic() > deadline:
                raise SystemExit(f"storage-init: {settings.endpoint_url} unreachable after "
                                 f"{settings.wait_seconds:.0f}s: {exc}") from exc
            time.sleep(1)


def _apply_optional(what: str, apply) -> None:
    """Apply a bucket setting; an S3 implementation without that API is logged, not fatal."""
    try:
        apply()
    except S3Error as exc:
        if exc.code not in UNSUPPORTED_API_CODES:
            raise
        log(f"WARNING: this S3 endpoint does not implement {what} ({exc.code}); continuing without it")


def init(settings: Settings) -> None:
    client = settings.client()
    if wait_for_endpoint(client, settings):
        log(f"bucket {settings.bucket!r} exists")
    else:
        try:
            client.make_bucket(settings.bucket, location=settings.region)
            log(f"bucket {settings.bucket!r} created")
        except S3Error as exc:  # another init raced us
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            log(f"bucket {settings.bucket!r} exists")

    def enable_versioning() -> None:
        client.set_bucket_versioning(settings.bucket, VersioningConfig(ENABLED))
        log(f"versioning: {client.get_bucket_versioning(settings.bucket).status}")

    def abort_stale_multipart_uploads() -> None:
        current = client.get_bucket_lifecycle(settings.bucket)
        # Keep rules an operator added; replace only ours so a changed day count takes effect.
        kept = [rule for rule in (current.rules if current else []) if rule.rule_id != ABORT_MULTIPART_RULE_ID]
        ours = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=ABORT_MULTIPART_RULE_ID,
                    abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(
                        days_after_initiation=settings.multipart_abort_days))
        client.set_bucket_lifecycle(settings.bucket, LifecycleConfig(kept + [ours]))
        log(f"lifecycle: incomplete multipart uploads aborted after {settings.multipart_abort_days} day(s)")

    _apply_optional("bucket versioning", enable_versioning)
    _apply_optional("bucket lifecycle rules", abort_stale_multipart_uploads)
    log("done")


def _local_path(root: Path, key: str) -> Path:
    target = (root / key).resolve()
    if root.resolve() not in target.parents:
        raise SystemExit(f"storage-init: refusing object key {key!r}: it would be written outside {root}")
    return target


def _transfer(items, action, verb: str) -> None:
    count = size = 0
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        for nbytes in pool.map(action, items):
            count += 1
            size += nbytes
            if count % 500 == 0:
                log(f"{verb} {count} objects ({size / 2**20:.1f} MiB) so far")
    log(f"{verb} {count} objects ({size / 2**20:.1f} MiB)")


def export_bucket(settings: Settings, destination: Path) -> None:
    client = settings.client()
    if not wait_for_endpoint(client, settings):
        raise SystemExit(f"storage-init: bucket {settings.bucket!r} does not exist at {settings.endpoint_url}")
    destination.mkdir(parents=True, exist_ok=True)

    def download(obj) -> int:
        client.fget_object(settings.bucket, obj.object_name, str(_local_path(destination, obj.object_name)))
        return obj.size or 0

    objects = (obj for obj in client.list_objects(settings.bucket, recursive=True)
               if not obj.object_name.endswith("/"))
    _transfer(objects, download, f"exported s3://{settings.bucket} -> {destination}:")


def import_bucket(settings: Settings, source: Path) -> None:
    if not source.is_dir():
        raise SystemExit(f"storage-init: {source} is not a directory")
    init(settings)
    client = settings.client()

    def upload(path: Path) -> int:
        client.fput_object(settings.bucket, path.relative_to(source).as_posix(), str(path))
        return path.stat().st_size

    files = (path for path in sorted(source.rglob("*")) if path.is_file())
    _transfer(files, upload, f"imported {source} -> s3://{settings.bucket}:")


def main(argv: list[str]) -> None:
    commands = {"init": 0, "export": 1, "import": 1}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]]:
        raise SystemExit(__doc__)
    settings = Settings.from_env(dict(os.environ))
    if argv[0] == "init":
        init(settings)
    elif argv[0] == "export":
        export_bucket(settings, Path(argv[1]))
    else:
        import_bucket(settings, Path(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
