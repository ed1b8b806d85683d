"""Training jobs: `cvops submit | ps | logs | stop`, and `cvops train` (the images' entrypoint)."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="run a training job spec in a container, tracked on the cvops stack",
        description=(
            "Runs the job spec's container on this host's Docker engine, on the cvops compose "
            "network (or against --tracking-uri), with the tracking URL, credentials, git commit "
            "and image digest injected. Prints the run's MLflow link first, then streams the "
            "log; exits with the job's exit code. Ctrl-C detaches, the job keeps running."
        ),
    )
    submit.add_argument("job_file", help="the job spec (YAML; reference: docs/jobs.md)")
    submit.add_argument(
        "--tracking-uri",
        help="track here instead of the running compose stack; a localhost URL puts the job on the host network",
    )
    submit.add_argument("--network", help="Docker network for the job (default: the stack's network)")
    busy = submit.add_mutually_exclusive_group()
    busy.add_argument("--wait-for-gpu", action="store_true", help="wait until the requested GPUs are free")
    busy.add_argument(
        "--fail-if-busy", action="store_true", help="fail at once when the requested GPUs are in use (default)"
    )
    submit.add_argument("--detach", "-d", action="store_true", help="print the run link and return; do not stream")
    submit.add_argument(
        "--render",
        choices=("k8s", "docker"),
        help="print the job instead of running it: a Kubernetes batch/v1 Job (YAML) or a `docker run` line",
    )
    submit.set_defaults(func=_submit)

    ps = subparsers.add_parser("ps", help="list cvops job containers on this host")
    ps.add_argument("--all", "-a", action="store_true", help="include finished jobs")
    ps.set_defaults(func=_ps)

    logs = subparsers.add_parser("logs", help="show a job's log (RUN: its run id or a prefix of it)")
    logs.add_argument("run")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming while the job runs")
    logs.add_argument("--tail", default="all", help="only the last N lines")
    logs.set_defaults(func=_logs)

    stop = subparsers.add_parser("stop", help="stop a running job; its run ends as KILLED")
    stop.add_argument("run")
    stop.add_argument("--timeout", type=int, default=30, help="seconds between SIGTERM and SIGKILL (default 30)")
    stop.set_defaults(func=_stop)

    train = subparsers.add_parser(
        "train",
        help="run a job's command inside its container (the trainer images' entrypoint)",
        description="Runs COMMAND, forwards stop signals to it and closes the pre-created run if COMMAND did not.",
    )
    train.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- python train.py")
    train.set_defaults(func=_train)


def _fail(error: Exception) -> int:
    print(f"cvops: {error}", file=sys.stderr)
    return 2


def _submit(args: argparse.Namespace) -> int:
    from cvops.jobs.docker_backend import SubmitError, SubmitOptions, submit
    from cvops.jobs.gpus import GpuError
    from cvops.jobs.kubernetes import RenderError
    from cvops.jobs.spec import JobSpecError, load_job_spec

    try:
        spec = load_job_spec(args.job_file)
        if args.render:
            print(_render(spec, args.render, args.tracking_uri, args.network), end="")
            return 0
        options = SubmitOptions(
            tracking_uri=args.tracking_uri, network=args.network, wait_for_gpu=args.wait_for_gpu, detach=args.detach
        )
        return submit(spec, options)
    except (JobSpecError, SubmitError, GpuError, RenderError, ValueError) as error:
        return _fail(error)


def _render(spec, kind: str, tracking_uri: str | None, network: str | None) -> str:
    from cvops.jobs.plan import Placement, Tracking, docker_cli_args, docker_run_kwargs, offline_provenance

    provenance = offline_provenance(spec)
    if kind == "k8s":
        import yaml

        from cvops.jobs.kubernetes import render_job

        return yaml.safe_dump(render_job(spec, provenance, tracking_uri), sort_keys=False)
    import shlex

    from cvops.jobs.spec import check_host_paths

    check_host_paths(spec)
    # Values that belong to the caller's environment are passed by name (`--env NAME`).
    from_caller = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    if not tracking_uri:
        from_caller.add("MLFLOW_TRACKING_URI")
    tracking = Tracking(uri=tracking_uri or "-", username="-", password="-")
    kwargs = docker_run_kwargs(spec, provenance, tracking, Placement(network=network))
    return shlex.join(docker_cli_args(kwargs, secret_names=frozenset(from_caller))) + "\n"


def _ps(args: argparse.Namespace) -> int:
    from cvops.jobs.docker_backend import SubmitError, docker_client, job_rows

    try:
        rows = job_rows(docker_client(), args.all)
    except SubmitError as error:
        return _fail(error)
    from cvops.cli.table import print_table

    print_table(rows, ("RUN", "JOB", "FRAMEWORK", "STATUS", "GPUS", "CREATED", "CONTAINER"), sys.stdout)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from cvops.jobs.docker_backend import SubmitError, docker_client, find_job, stream_logs

    try:
        container = find_job(docker_client(), args.run)
    except SubmitError as error:
        return _fail(error)
    tail = int(args.tail) if args.tail != "all" else "all"
    try:
        stream_logs(container, lambda line: (sys.stdout.write(line), sys.stdout.flush()), follow=args.follow, tail=tail)
    except KeyboardInterrupt:
        return 130
    return 0


def _stop(args: argparse.Namespace) -> int:
    from cvops.jobs.docker_backend import SubmitError, docker_client, stop_job

    try:
        return stop_job(docker_client(), args.run, args.timeout)
    except SubmitError as error:
        return _fail(error)


def _train(args: argparse.Namespace) -> int:
    from cvops.jobs.runtime import run_supervised

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run_supervised(command)
