"""What tracking costs a training loop: synchronous MLflow, MLflow's async logging, cvops.

    python -m bench.bench_training_overhead [--quick|--full] [--server stock|ours|both] [--tracking-uri URL]

A fake training loop logs 20 scalars per step, after a 20 ms "step" (time.sleep), three ways:
  (a) sync:   one ``mlflow.log_metric`` per scalar (the usual hook recipe)
  (b) async:  ``mlflow.log_metrics(..., synchronous=False)`` once per step (MLflow's async queue)
  (c) cvops:  ``run.log_metrics(...)`` once per step
plus (none) the same loop untracked, the baseline that shows what the sleeps cost on this machine.
For each it prints the time the *training thread* spends in the logging calls per step
(median / p95 / max) and the end-to-end wall time of a 2 000-step loop including the final
drain (until every point is on the server), and the ratios. Every point is verified on the
server afterwards. ``--quick`` times the sync mode over 100 steps and extrapolates its 2 000-step
wall time (marked "est."); ``--full`` runs all 2 000 steps in every mode.
Without ``--tracking-uri`` it starts the bench stack (bench/stack.py: stock and/or ours).
"""
from __future__ import annotations

import os
import tempfile
import time

import mlflow
from mlflow import MlflowClient

import cvops
from bench.report import median, parse_args, percentile, print_table, save

STEPS = 2_000
STEP_S = 0.020
SCALARS = [f"loss/component_{i}" for i in range(20)]
QUICK_SYNC_STEPS = 100


def _values(step: int) -> dict[str, float]:
    return {name: 1.0 / (step + 1 + i) for i, name in enumerate(SCALARS)}


def _loop(steps: int, log_step) -> tuple[list[float], float]:
    blocked = []
    started = time.perf_counter()
    for step in range(steps):
        time.sleep(STEP_S)
        t0 = time.perf_counter()
        log_step(step, _values(step))
        blocked.append(time.perf_counter() - t0)
    return blocked, time.perf_counter() - started


def mode_none(experiment: str, steps: int) -> dict:
    """The same loop without tracking: what the 20 ms sleeps really cost on this machine."""
    blocked, loop_s = _loop(steps, lambda step, values: None)
    return {"run_id": None, "steps": steps, "blocked": blocked, "loop_s": loop_s, "drain_s": 0.0}


def mode_sync(experiment: str, steps: int) -> dict:
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="sync") as run:
        def log_step(step, values):
            for name, value in values.items():
                mlflow.log_metric(name, value, step=step)
        blocked, loop_s = _loop(steps, log_step)
        drain_started = time.perf_counter()
    return {"run_id": run.info.run_id, "steps": steps, "blocked": blocked, "loop_s": loop_s,
            "drain_s": time.perf_counter() - drain_started}


def mode_async(experiment: str, steps: int) -> dict:
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="async") as run:
        blocked, loop_s = _loop(steps, lambda step, values: mlflow.log_metrics(values, step=step,
                                                                                synchronous=False))
        drain_started = time.perf_counter()
        mlflow.flush_async_logging()
    return {"run_id": run.info.run_id, "steps": steps, "blocked": blocked, "loop_s": loop_s,
            "drain_s": time.perf_counter() - drain_started}


def mode_cvops(experiment: str, steps: int) -> dict:
    run = cvops.start_run(experiment=experiment, run_name="cvops")
    blocked, loop_s = _loop(steps, lambda step, values: run.log_metrics(values, step=step))
    drain_started = time.perf_counter()
    run.end()
    return {"run_id": run.run_id, "steps": steps, "blocked": blocked, "loop_s": loop_s,
            "drain_s": time.perf_counter() - drain_started}


def _verify(tracking_uri: str, result: dict) -> str:
    if result["run_id"] is None:
        return "-"
    client = MlflowClient(tracking_uri)
    history = client.get_metric_history(result["run_id"], SCALARS[-1])
    ok = [m.step for m in history] == list(range(result["steps"]))
    return "all points" if ok else f"MISSING: {len(history)}/{result['steps']}"


def bench_server(name: str, tracking_uri: str, full: bool) -> tuple[str, dict]:
    experiment = f"bench-training-overhead-{int(time.time())}"
    sync_steps = STEPS if full else QUICK_SYNC_STEPS
    results = {
        "none": mode_none(experiment, STEPS),
        "sync": mode_sync(experiment, sync_steps),
        "async": mode_async(experiment, STEPS),
        "cvops": mode_cvops(experiment, STEPS),
    }
    rows, figures = [], {}
    for mode, result in results.items():
        blocked_ms = [b * 1000 for b in result["blocked"]]
        wall = result["loop_s"] + result["drain_s"]
        estimated = result["steps"] != STEPS
        wall_2000 = wall * STEPS / result["steps"]
        figures[mode] = {"blocked_median_ms": median(blocked_ms), "blocked_p95_ms": percentile(blocked_ms, 95),
                         "blocked_max_ms": max(blocked_ms), "wall_2000_s": wall_2000, "estimated": estimated,
                         "drain_s": result["drain_s"], "verified": _verify(tracking_uri, result)}
    ideal = STEPS * STEP_S
    baseline = figures["none"]["wall_2000_s"]
    for mode, f in figures.items():
        blocked_ratio = ("-" if mode == "none"
                         else f"{figures['sync']['blocked_median_ms'] / f['blocked_median_ms']:.0f}×")
        rows.append([
            mode, f"{f['blocked_median_ms']:.3f}", f"{f['blocked_p95_ms']:.3f}", f"{f['blocked_max_ms']:.1f}",
            f"{f['wall_2000_s']:.1f}{' (est.)' if f['estimated'] else ''}", f"{f['drain_s']:.2f}",
            f"{f['wall_2000_s'] / baseline:.2f}×", blocked_ratio, f["verified"],
        ])
    table = print_table(
        f"Training-loop overhead on {name} ({tracking_uri}): 20 scalars/step, {STEPS} steps of {STEP_S * 1000:.0f} ms "
        f"(ideal wall {ideal:.0f} s)",
        ["mode", "blocked/step median ms", "p95 ms", "max ms", "wall 2000 steps s", "final drain s",
         "wall / untracked", "sync median / mode median", "on server"], rows)
    return table, figures


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: (
        p.add_argument("--server", choices=["stock", "ours", "both"], default="both"),
        p.add_argument("--tracking-uri", help="measure against this server instead of starting the bench stack"),
    ))
    spool = tempfile.mkdtemp(prefix="cvops-bench-spool-")
    os.environ.update({"CVOPS_SPOOL_DIR": spool, "CVOPS_SYSTEM_METRICS": "0"})
    tables, data = [], {}
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
        table, data["given"] = bench_server("the given server", args.tracking_uri, args.full)
        tables.append(table)
    else:
        from bench.stack import Stack

        with Stack() as stack:
            endpoints = {"stock": stack.stock, "ours": stack.ours}
            chosen = ["stock", "ours"] if args.server == "both" else [args.server]
            for name in chosen:
                endpoint = endpoints[name]
                with endpoint.as_client():
                    mlflow.set_tracking_uri(endpoint.url)
                    table, data[name] = bench_server(f"{name} server", endpoint.url, args.full)
                    tables.append(table)
    save("training_overhead", args.full, tables, data)


if __name__ == "__main__":
    main()
