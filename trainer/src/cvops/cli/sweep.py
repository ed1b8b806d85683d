"""Hyperparameter sweeps: `cvops sweep SPEC` (run or --resume) and `cvops sweep status SPEC`."""
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
            "status SPEC` lists the trials. Reference: docs/sweeps.md."
        ),
    )
    sweep.add_argument("action_or_spec", metavar="[status] SPEC", help="the sweep spec (YAML), after `status` to list trials")
    sweep.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    sweep.add_argument("--resume", action="store_true", help="continue the spec's existing study")
    sweep.add_argument("--trials", type=int, help="the study's trial budget (overrides the spec's `trials`)")
    sweep.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from cvops.config import ConfigError
    from cvops.jobs.spec import JobSpecError
    from cvops.sweeps.runner import SweepError

    status = args.action_or_spec == "status"
    path = args.spec if status else args.action_or_spec
    if path is None or (args.spec is not None and not status):
        print("usage: cvops sweep [--resume] SPEC | cvops sweep status SPEC", file=sys.stderr)
        return 2
    try:
        from cvops.sweeps.spec import load_sweep_spec

        spec = load_sweep_spec(path)
        if status:
            from cvops.sweeps.status import print_status

            return print_status(spec, sys.stdout)
        from cvops.sweeps.runner import run_sweep

        return run_sweep(spec, resume=args.resume, budget=args.trials)
    except (JobSpecError, SweepError, ConfigError) as error:
        print(f"cvops: {error}", file=sys.stderr)
        return 2
