"""`cvops doctor`: check that this machine can track training runs to the MLflow server."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that this machine can track training runs to the MLflow server",
        description=(
            "Checks, in order: DNS/TCP, TLS, server version, host header, login, experiment "
            "creation, a metric and an artifact round trip (without S3 credentials), clock "
            "skew and GPUs. Exits 0 only when a training job here can track."
        ),
    )
    parser.add_argument(
        "--tracking-uri",
        help="server URL (default: MLFLOW_TRACKING_URI); credentials come from "
        "MLFLOW_TRACKING_USERNAME/PASSWORD or ~/.mlflow/credentials",
    )
    parser.add_argument(
        "--artifact-mb",
        type=_positive_int,
        default=4,
        help="size of the artifact round trip used to measure throughput (default: 4)",
    )
    parser.set_defaults(func=_run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _run(args: argparse.Namespace) -> int:
    from cvops.doctor import run_doctor

    return run_doctor(args.tracking_uri, artifact_mb=args.artifact_mb)
