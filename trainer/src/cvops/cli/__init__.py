"""`cvops` command line: one sub-command module per concern, registered here.

Each module exposes ``register(subparsers)`` and sets ``func`` on its parser; heavy
imports happen inside the command, so ``cvops --help`` stays fast on a laptop.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = ("sync", "jobs", "sweep", "doctor", "tfod", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvops", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
