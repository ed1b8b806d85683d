"""Server cold start to a 200 on /health, on an empty and on a populated database, stock vs ours.

    python -m bench.startup [--quick|--full] [--runs N]

"Cold start" is process launch to the first successful /health: for ours ``entrypoint.sh serve``
(config checks, auth config, gunicorn, app import in each worker), for stock ``mlflow server``.
Schema migration is a separate step in our container (``entrypoint.sh migrate``, timed too: on an
up-to-date database it is what every ``docker compose up`` and upgrade runs). Each server is
started and stopped ``repeats`` times (1 quick, 3 full; median reported), first on the freshly
migrated empty database, then after bench/populate.py added N runs (10 000 by default).

The compose stack's own start (``docker compose up`` to all healthy) is measured by the compose
tests (tests/compose); see docs/performance.md for where its figure comes from.
"""
from __future__ import annotations

import time

from bench.populate import populate
from bench.report import median, parse_args, print_table, ratio, save
from bench.stack import Stack


def _cold_starts(stack: Stack, repeats: int) -> dict[str, list[float]]:
    times = {"stock": [], "ours": [], "ours migrate": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        stack.ours_server.migrate()
        times["ours migrate"].append(time.perf_counter() - t0)
        for name, server in (("stock", stack.stock_server), ("ours", stack.ours_server)):
            times[name].append(server.start())
            server.stop()
    return times


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--runs", type=int, help="runs in the populated database"))
    runs = args.runs or 10_000
    repeats = 3 if args.full else 1
    with Stack(start_servers=False) as stack:
        empty = _cold_starts(stack, repeats)
        _, populate_s = populate(stack.ours_server.env["MLFLOW_BACKEND_STORE_URI"], stack.tracking_db, runs, 1)
        populated = _cold_starts(stack, repeats)

    rows = []
    for label, times in (("empty database", empty), (f"{runs} runs", populated)):
        s, o = median(times["stock"]), median(times["ours"])
        rows.append([label, f"{s:.1f}", f"{o:.1f}", ratio(s, o), f"{median(times['ours migrate']):.1f}"])
    table = print_table(f"Cold start to /health (median of {repeats})",
                        ["database", "stock s", "ours s", "stock/ours", "ours migrate s (separate step)"], rows)
    save("startup", args.full, [table], {"runs": runs, "populate_s": populate_s, "empty": empty,
                                         "populated": populated})


if __name__ == "__main__":
    main()
