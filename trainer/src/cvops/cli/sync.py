"""``cvops sync <spool-dir>``: upload tracking data spooled while the server was out of reach.

Takes one spool directory (as printed by the training process) or a directory of spools (the
default spool root, ``~/.cache/cvops/spool``). Safe to run again and to interrupt: what was
acknowledged is never sent twice, and a finished spool is removed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_RETRIES = 5


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sync", help="upload spooled tracking data to the MLflow server",
        description=__doc__.split("\n\n")[0].replace("``", "'"),
    )
    parser.add_argument("spool", type=Path, help="a spool directory, or a directory containing spools")
    parser.add_argument("--tracking-uri", help="server to upload to (default: MLFLOW_TRACKING_URI)")
    parser.set_defaults(func=run)


def find_spools(path: Path) -> list[Path]:
    if (path / "segments").is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if (p / "segments").is_dir())


def run(args: argparse.Namespace) -> int:
    from cvops.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"cvops sync: {exc}", file=sys.stderr)
        return 2
    tracking_uri = args.tracking_uri or settings.tracking_uri
    if not tracking_uri:
        print("cvops sync: no server: set MLFLOW_TRACKING_URI or pass --tracking-uri", file=sys.stderr)
        return 2
    if not args.spool.is_dir():
        print(f"cvops sync: {args.spool} is not a directory", file=sys.stderr)
        return 2
    spools = find_spools(args.spool)
    if not spools:
        print(f"cvops sync: nothing to sync in {args.spool}", file=sys.stderr)
        return 0
    failed = 0
    for spool_dir in spools:
        failed += not sync_spool(spool_dir, tracking_uri, settings.request_timeout_s)
    return 1 if failed else 0


def sync_spool(directory: Path, tracking_uri: str, timeout_s: float, out=sys.stderr) -> bool:
    """Replay one spool to ``tracking_uri`` with progress on ``out``; True when nothing is left."""
    from cvops.tracking.replay import drain_spool
    from cvops.tracking.spool import SpoolLocked
    from cvops.tracking.transport import Transport

    started = time.monotonic()
    print(f"cvops sync: {directory}: sending to {tracking_uri}", file=out)

    def progress(sent: int, total: int) -> None:
        print(f"cvops sync: {sent}/{total} records sent ({time.monotonic() - started:.0f} s)", file=out)

    try:
        result = drain_spool(directory, Transport(tracking_uri, timeout_s), retries=_RETRIES, progress=progress)
    except SpoolLocked as exc:
        print(f"cvops sync: skipping {directory}: {exc} (its training process will send it)", file=out)
        return False
    if result.rejected:
        print(f"cvops sync: the server refused {result.rejected} records (see warnings above)", file=out)
    if result.error:
        print(f"cvops sync: the server is unreachable ({result.error}); {result.remaining} records remain in "
              f"{directory}; run the same command again later", file=out)
        return False
    print(f"cvops sync: {directory}: done, {result.sent} records sent"
          + ("; spool removed" if result.removed else ""), file=out)
    return True
