"""The chaos tier at soak size: N = 32 trainers (8 with --quick), a 60 s database outage, a 1 GiB
checkpoint interrupted by an S3 restart, the server SIGKILLed, the spools' disk full, every server
session terminated under UI load (docs/reliability.md, "Faults").

    python -m bench.chaos_soak [--quick|--full] [--faults "disk_full or terminated"] [--compose]

It runs tests/chaos with larger CHAOS_* settings, so every check of the tier holds here too (no
point lost or duplicated, order kept, runs FINISHED, artifact complete), and saves each fault's
``[chaos]`` line in bench/results/chaos_soak.{md,json}. ``--compose`` adds the compose tier's
faults (tests/compose/test_chaos_faults.py, needs Docker and the stand-in images), the only place
the whole-stack restart runs.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.report import parse_args, print_table, save

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # --quick, --full
    "CHAOS_TRAINERS": ("8", "32"),
    "CHAOS_TRAINING_S": ("90", "300"),
    "CHAOS_DATABASE_OUTAGE_S": ("20", "60"),
    "CHAOS_ARTIFACT_MB": ("256", "1024"),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--faults", metavar="EXPR",
                       help="only the faults whose test names match (pytest -k), e.g. 'postgres'"),
        p.add_argument("--compose", action="store_true", help="the compose tier's faults too (Docker)")))
    settings = {name: sizes[args.full] for name, sizes in SIZES.items()}
    env = {**os.environ, **settings,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "trainer" / "src")])}
    only = ["-k", args.faults] if args.faults else []
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "chaos", "-s", "-q", "-p", "no:cacheprovider",
                             *only, "tests/chaos", *(["tests/compose/test_chaos_faults.py"] if args.compose else [])],
                            cwd=REPO_ROOT, env=env, text=True, capture_output=True)
    print(result.stdout[-20000:], result.stderr[-4000:], sep="\n")
    faults = [line.removeprefix("[chaos] ") for line in result.stdout.splitlines() if line.startswith("[chaos]")]
    table = print_table(f"chaos soak ({', '.join(f'{k}={v}' for k, v in settings.items())}; "
                        f"pytest exit {result.returncode})", ["fault: figures"], [[line] for line in faults])
    name = "chaos_soak" + (f"_{re.sub(r'[^a-z0-9]+', '_', args.faults.lower()).strip('_')}" if args.faults else "")
    save(name, args.full, [table], {"settings": settings, "only": args.faults, "compose": args.compose,
                                    "pytest_exit": result.returncode, "faults": faults})
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
