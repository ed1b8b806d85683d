"""Checkpoint upload/download through the tracking server's artifact proxy vs directly to S3.

    python -m bench.artifacts [--quick|--full] [--size-mb N]

One checkpoint-sized file (200 MB quick, 1 GiB full) is uploaded and downloaded:
* direct: boto3 ``upload_file`` / ``download_file`` against the S3 endpoint (its default
  multipart transfer), i.e. what a client with S3 keys and network access would get;
* ours: ``MlflowClient.log_artifact`` / ``download_artifacts`` through our server (every byte via
  the proxy; the client needs only the tracking URL);
* stock: the same client calls against the stock server (which advertises multipart transfers:
  above MLflow's 500 MB threshold the client then sends presigned multipart parts straight to S3).
Each transfer is timed once per mode after a small warm-up; the file is verified by size and
SHA-256 after each download. Objects are deleted after each mode (the S3 stand-in is in memory).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

from bench.report import parse_args, print_table, save
from bench.stack import Endpoint, Stack
from cvops.tracking.lineage import file_sha256

CHUNK = 16 * 2**20


def _make_checkpoint(path: Path, size: int) -> str:
    block = os.urandom(CHUNK)  # incompressible, like weights
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[: min(CHUNK, size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def _timed(action) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    try:
        action()
    except Exception as exc:  # a timeout or a refused transfer is a result, not a crash
        return time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc)[:200]}"
    return time.perf_counter() - t0, None


def direct(stack: Stack, source: Path, work: Path) -> dict:
    s3 = stack.s3.client()
    key = f"direct/{uuid.uuid4().hex}/{source.name}"
    target = work / "direct-download"
    up, up_err = _timed(lambda: s3.upload_file(str(source), stack.s3.bucket, key))
    down, down_err = _timed(lambda: s3.download_file(stack.s3.bucket, key, str(target)))
    result = {"upload_s": up, "download_s": down, "errors": [e for e in (up_err, down_err) if e],
              "intact": target.exists() and file_sha256(target) == file_sha256(source)}
    target.unlink(missing_ok=True)
    s3.delete_object(Bucket=stack.s3.bucket, Key=key)
    return result


def through_server(stack: Stack, endpoint: Endpoint, source: Path, work: Path, digest: str) -> dict:
    from mlflow import MlflowClient

    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        run_id = client.create_run(client.create_experiment(f"artifacts-{endpoint.name}-{uuid.uuid4().hex[:6]}")
                                   ).info.run_id
        target = work / f"{endpoint.name}-download"
        target.mkdir()
        up, up_err = _timed(lambda: client.log_artifact(run_id, str(source), "checkpoints"))
        downloaded = []
        down, down_err = _timed(lambda: downloaded.append(
            Path(client.download_artifacts(run_id, f"checkpoints/{source.name}", str(target)))))
        downloaded = downloaded[0] if downloaded else target / "missing"
        result = {"upload_s": up, "download_s": down, "errors": [e for e in (up_err, down_err) if e],
                  "intact": downloaded.exists() and file_sha256(downloaded) == digest}
        shutil.rmtree(target)
    bucket = stack.s3.client()
    prefix = endpoint.artifacts_prefix.split("/", 3)[3] if endpoint.artifacts_prefix.count("/") >= 3 else ""
    for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=stack.s3.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            bucket.delete_object(Bucket=stack.s3.bucket, Key=obj["Key"])
    return result


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--size-mb", type=int, help="checkpoint size in MiB"))
    size = (args.size_mb or (1024 if args.full else 200)) * 2**20
    with Stack() as stack:
        work = stack.root / "artifacts"
        work.mkdir()
        source = work / "model_final.pth"
        digest = _make_checkpoint(source, size)
        results = {"direct": direct(stack, source, work)}
        for endpoint in (stack.ours, stack.stock):
            results[endpoint.name] = through_server(stack, endpoint, source, work, digest)

    mb = size / 2**20
    base = results["direct"]
    rows = []
    for mode, r in results.items():
        rows.append([mode, f"{mb / r['upload_s']:.0f}", f"{100 * base['upload_s'] / r['upload_s']:.0f} %",
                     f"{mb / r['download_s']:.0f}", f"{100 * base['download_s'] / r['download_s']:.0f} %",
                     "yes" if r["intact"] else "NO", "; ".join(r["errors"]) or "none"])
    table = print_table(f"{mb:.0f} MiB checkpoint upload/download",
                        ["path", "upload MiB/s", "upload % of direct", "download MiB/s",
                         "download % of direct", "intact", "errors"], rows)
    save("artifacts", args.full, [table], {"size_bytes": size, "results": results})


if __name__ == "__main__":
    main()
