"""search_runs at scale: 10 000 runs × 50 params × 20 metrics, stock vs ours, without/with indexes.

    python -m bench.search [--quick|--full] [--runs N]

One experiment is populated (bench/populate.py) in the database both servers share, then each
query below is timed through ``MlflowClient.search_runs`` on both servers, first on MLflow's own
schema, then again after bench/search_indexes.sql is applied (candidate migration-safe
indexes), so every row of the table reads the same data:
* filter by a param, order by a metric (what the issue asks; also what the UI sends when a user
  filters the runs table and sorts by a metric column);
* the UI's default listing (newest first, 100 per page);
* a metric threshold filter.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from bench.populate import FILTER_PARAM, FILTER_VALUE, SORT_METRIC, populate
from bench.report import Deadline, median, parse_args, percentile, print_table, ratio, save
from bench.stack import Endpoint, Stack

INDEXES_SQL = Path(__file__).with_name("search_indexes.sql")
QUERIES = {
    "param filter, metric order": dict(filter_string=f"params.{FILTER_PARAM} = '{FILTER_VALUE}'",
                                       order_by=[f"metrics.{SORT_METRIC} DESC"]),
    "UI default (newest 100)": dict(filter_string="", order_by=["attributes.start_time DESC"]),
    "metric threshold filter": dict(filter_string=f"metrics.{SORT_METRIC} > 0.9",
                                    order_by=[f"metrics.{SORT_METRIC} DESC"]),
}
PAGE = 100


def time_queries(endpoint: Endpoint, experiment_id: str, calls: int, seconds: float) -> dict:
    from mlflow import MlflowClient

    results = {}
    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        for name, query in QUERIES.items():
            client.search_runs([experiment_id], max_results=PAGE, **query)  # warm caches
            samples, deadline = [], Deadline(seconds)
            for _ in range(calls):
                if deadline.passed:
                    break
                t0 = time.perf_counter()
                page = client.search_runs([experiment_id], max_results=PAGE, **query)
                samples.append((time.perf_counter() - t0) * 1000)
            results[name] = {"p50_ms": median(samples), "p95_ms": percentile(samples, 95),
                             "n": len(samples), "rows": len(page)}
    return results


def apply_indexes(stack: Stack) -> float:
    """Run search_indexes.sql the way a migrate step would (autocommit: CONCURRENTLY needs it)."""
    t0 = time.perf_counter()
    with contextlib.closing(stack.tracking_db()) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in filter(str.strip, _statements(INDEXES_SQL.read_text())):
                cur.execute(statement)
            cur.execute("ANALYZE params; ANALYZE latest_metrics")
    return time.perf_counter() - t0


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).split(";")


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--runs", type=int, help="runs in the experiment"))
    runs = args.runs or 10_000
    steps = 5 if args.full else 1
    calls, seconds = (100, 90) if args.full else (20, 20)
    with Stack() as stack:
        experiment_id, populate_s = populate(stack.ours_server.env["MLFLOW_BACKEND_STORE_URI"], stack.tracking_db,
                                             runs, steps)
        print(f"populated {runs} runs in {populate_s:.0f} s", flush=True)
        before = {e.name: time_queries(e, experiment_id, calls, seconds) for e in stack.endpoints}
        index_s = apply_indexes(stack)
        after = {e.name: time_queries(e, experiment_id, calls, seconds) for e in stack.endpoints}

    rows = []
    for query in QUERIES:
        s, o, oi = before["stock"][query], before["ours"][query], after["ours"][query]
        rows.append([query, s["rows"], f"{s['p50_ms']:.0f}", f"{s['p95_ms']:.0f}", f"{o['p50_ms']:.0f}",
                     f"{o['p95_ms']:.0f}", f"{after['stock'][query]['p50_ms']:.0f}", f"{oi['p50_ms']:.0f}",
                     f"{oi['p95_ms']:.0f}", ratio(s["p50_ms"], oi["p50_ms"])])
    table = print_table(
        f"search_runs over {runs} runs × 50 params × 20 metrics ({steps} step(s) each), page of {PAGE}",
        ["query", "rows", "stock p50 ms", "stock p95 ms", "ours p50 ms", "ours p95 ms",
         "stock+indexes p50 ms", "ours+indexes p50 ms", "ours+indexes p95 ms", "stock → ours+indexes"], rows)
    save("search", args.full, [table], {"runs": runs, "steps": steps, "populate_s": populate_s,
                                        "index_build_s": index_s, "before": before, "after": after})


if __name__ == "__main__":
    main()
