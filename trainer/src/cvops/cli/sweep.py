"""Hyperparameter sweeps: `cvops sweep SPEC` (run or --resume), `cvops sweep status SPEC`, and
for a cluster `cvops sweep --render k8s SPEC` with the pods' `--setup` and `--worker` modes."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="run a hyperparameter sweep (Optuna study on the stack's PostgreSQL), every trial a tracked run",
        description=(
            "`cvops sweep SPEC` creates the study and the sweep's parent run and runs trials, "
            "`parallelism` at a time, as local processes or containers (`trials_in`); `--resume` "
            "continues a study (also from a second process or host at the same time). `cvops sweep "
            "status SPEC` lists the trials. `--render k8s` prints the sweep as Kubernetes objects "
            "whose pods share the study. Reference: docs/sweeps.md."
        ),
    )
    sweep.add_argument("action_or_spec", metavar="[status] SPEC", help="the sweep spec (YAML), after `status` to list trials")
    sweep.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    mode = sweep.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the spec's existing study")
    mode.add_argument(
        "--render", choices=("k8s",),
        help="print the sweep as Kubernetes objects (a ConfigMap and an Indexed Job, YAML) instead of running it",
    )
    mode.add_argument(
        "--setup", action="store_true",
        help="create the study and its parent run, or find them, and exit (the rendered pods' init container)",
    )
    mode.add_argument(
        "--worker", action="store_true",
        help="run one trial of the existing study here, in this directory and environment, and exit (a rendered pod)",
    )
    sweep.add_argument("--trials", type=int, help="the study's trial budget (overrides the spec's `trials`)")
    sweep.add_argument("--tracking-uri", help="with --render: the tracking URL as pods see it (else the job's kubernetes.tracking_uri)")
    sweep.add_argument("-o", "--output", help="with --render: write the YAML to this file instead of stdout")
    sweep.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from cvops.config import ConfigError
    from cvops.jobs.kubernetes import RenderError
    from cvops.jobs.spec import JobSpecError
    from cvops.sweeps.runner import SweepError

    status = args.action_or_spec == "status"
    path = args.spec if status else args.action_or_spec
    if path is None or (args.spec is not None and not status):
        print("usage: cvops sweep [--resume|--render k8s|--setup|--worker] SPEC | cvops sweep status SPEC",
              file=sys.stderr)
        return 2
    try:
        from cvops.sweeps.spec import load_sweep_spec

        spec = load_sweep_spec(path)
        if args.trials:
            spec = spec.model_copy(update={"trials": args.trials})
        if status:
            from cvops.sweeps.status import print_status

            return print_status(spec, sys.stdout)
        if args.render:
            return _render(spec, args.tracking_uri, args.output)
        from cvops.sweeps import runner

        if args.setup:
            return runner.setup_sweep(spec)
        if args.worker:
            return runner.run_worker(spec)
        return runner.run_sweep(spec, resume=args.resume)
    except (JobSpecError, SweepError, ConfigError, RenderError) as error:
        print(f"cvops: {error}", file=sys.stderr)
        return 2


def _render(spec, tracking_uri: str | None, output: str | None) -> int:
    from cvops.jobs.plan import offline_provenance
    from cvops.sweeps.kubernetes import manifests_yaml, render_sweep
    from cvops.sweeps.spec import template_job

    text = manifests_yaml(render_sweep(spec, offline_provenance(template_job(spec)), tracking_uri))
    if output:
        with open(output, "w") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
    return 0
