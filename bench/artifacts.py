"""Checkpoint upload/download through the tracking server's artifact proxy vs directly to S3.

    python -m bench.artifacts [--quick|--full] [--size-mb N] [--rounds N]

One checkpoint-sized file (200 MB quick, 1 GiB full) is uploaded and downloaded:
* direct: boto3 ``upload_file`` / ``download_file`` against the S3 endpoint (its default
  multipart transfer), i.e. what a client with S3 keys and network access would get;
* ours: ``MlflowClient.log_artifact`` / ``download_artifacts`` through our server (every byte via
  the proxy; the client needs only the tracking URL);
* stock: the same client calls against the stock server (which advertises multipart transfers:
  above MLflow's 500 MB threshold the client then sends presigned multipart parts straight to S3).
The S3 stand-in is warmed up first with one untimed upload of the same size: the first GiB
that moto holds costs it growing its memory (here 71-84 MiB/s for that upload, 110-147 after),
which would be charged to whichever mode went first. Then each round times every mode once, in
turn (1 round quick, 3 full), and the table gives each mode's median; the file is verified by
SHA-256 after each download. Objects are deleted after each transfer (the stand-in is in memory).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

from bench.report import median, parse_args, print_table, save
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


def warm_up(stack: Stack, source: Path) -> None:
    s3 = stack.s3.client()
    key = f"warm-up/{uuid.uuid4().hex}/{source.name}"
    s3.upload_file(str(source), stack.s3.bucket, key)
    s3.delete_object(Bucket=stack.s3.bucket, Key=key)


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
    args = parse_args(__doc__, lambda p: (
        p.add_argument("--size-mb", type=int, help="checkpoint size in MiB"),
        p.add_argument("--rounds", type=int, help="timed rounds per mode (default 1 quick, 3 full)")))
    size = (args.size_mb or (1024 if args.full else 200)) * 2**20
    rounds = args.rounds or (3 if args.full else 1)
    results = {"direct": [], "ours": [], "stock": []}
    with Stack() as stack:
        work = stack.root / "artifacts"
        work.mkdir()
        source = work / "model_final.pth"
        digest = _make_checkpoint(source, size)
        warm_up(stack, source)
        for _ in range(rounds):
            results["direct"].append(direct(stack, source, work))
            for endpoint in (stack.ours, stack.stock):
                results[endpoint.name].append(through_server(stack, endpoint, source, work, digest))

    mb = size / 2**20
    seconds = {mode: {way: median([r[f"{way}_s"] for r in runs]) for way in ("upload", "download")}
               for mode, runs in results.items()}
    base = seconds["direct"]
    rows = []
    for mode, runs in results.items():
        up, down = seconds[mode]["upload"], seconds[mode]["download"]
        errors = [error for r in runs for error in r["errors"]]
        rows.append([mode, f"{mb / up:.0f}", f"{100 * base['upload'] / up:.0f} %", f"{mb / down:.0f}",
                     f"{100 * base['download'] / down:.0f} %", "yes" if all(r["intact"] for r in runs) else "NO",
                     "; ".join(errors) or "none"])
    table = print_table(f"{mb:.0f} MiB checkpoint upload/download, median of {rounds} round(s) after a warm-up",
                        ["path", "upload MiB/s", "upload % of direct", "download MiB/s",
                         "download % of direct", "intact", "errors"], rows)
    save("artifacts", args.full, [table], {"size_bytes": size, "rounds": rounds, "results": results})


if __name__ == "__main__":
    main()
