"""Metric ingest capacity under 32 concurrent trainers, stock vs ours: how much each server absorbs
when the trainers send as fast as it answers.

    python -m bench.saturation [--quick|--full] [--clients 32] [--seconds S]

bench.throughput paces its trainers like training jobs (20 metrics every 100 ms each), and at
32 trainers both servers absorb that offered load, so its ratio is 1.0× by construction. Here
every client is a closed loop: it posts the next ``log-batch`` as soon as the previous one is
answered, so the figure is the server's capacity on this machine. Each request has the shape the
cvops SDK sends at that rate (100 metrics: 5 steps × 20 keys, one flush every 0.5 s), each client
to its own run, over its own kept-alive ``requests`` session.

Clients are threads spread over a few processes and only post prebuilt JSON, so they cost little
CPU next to the servers (their CPU is reported). After a warm-up that is not counted, it reports
for the window (15 s quick, 60 s full): metric rows that reached PostgreSQL ÷ window, requests/s,
request p50/p95, errors (non-2xx answers, exceptions, new tracebacks in the server log), and the
cores busy in the server's process tree, PostgreSQL's and the clients'.
"""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid

import requests

from bench.report import median, parse_args, percentile, print_table, ratio, save
from bench.stack import CpuMeter, Endpoint, Stack

KEYS = [f"metric_{k}" for k in range(20)]
STEPS_PER_REQUEST = 5
METRICS_PER_REQUEST = STEPS_PER_REQUEST * len(KEYS)
CLIENT_PROCESSES = 4
WARMUP_S = 3.0
REQUEST_TIMEOUT_S = 60


def _post_until(url: str, auth, run_id: str, window: tuple[float, float], stop_at: float) -> dict:
    """One client: back-to-back log-batch requests; latencies of requests that end in the window."""
    session = requests.Session()
    session.auth = auth
    latencies_ms, errors, step = [], [], 0
    while time.time() < stop_at:
        now_ms = int(time.time() * 1000)
        body = json.dumps({"run_id": run_id, "metrics": [
            {"key": key, "value": 1.0 / (step + s + 1), "timestamp": now_ms, "step": step + s}
            for s in range(STEPS_PER_REQUEST) for key in KEYS]})
        step += STEPS_PER_REQUEST
        t0 = time.time()
        try:
            response = session.post(url, data=body, headers={"Content-Type": "application/json"},
                                    timeout=REQUEST_TIMEOUT_S)
            failure = None if response.ok else f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as exc:
            failure = repr(exc)
        t1 = time.time()
        if window[0] <= t1 <= window[1]:
            latencies_ms.append((t1 - t0) * 1000)
            if failure:
                errors.append(failure)
    return {"latencies_ms": latencies_ms, "errors": errors}


def _client_process(url: str, auth, run_ids: list[str], window: tuple[float, float], stop_at: float,
                    results) -> None:
    outcomes = []
    threads = [threading.Thread(target=lambda r=run_id: outcomes.append(_post_until(url, auth, r, window, stop_at)))
               for run_id in run_ids]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window[0] - time.time()))
    cpu_at_start = time.process_time()
    time.sleep(max(0.0, window[1] - time.time()))
    cpu_in_window = time.process_time() - cpu_at_start
    for thread in threads:
        thread.join()
    results.put({"latencies_ms": [ms for o in outcomes for ms in o["latencies_ms"]],
                 "errors": [e for o in outcomes for e in o["errors"]], "cpu_s": cpu_in_window})


def _create_runs(endpoint: Endpoint, count: int) -> list[str]:
    from mlflow import MlflowClient

    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        experiment_id = client.create_experiment(f"saturation-{endpoint.name}-{uuid.uuid4().hex[:6]}")
        return [client.create_run(experiment_id).info.run_id for _ in range(count)]


def saturate(stack: Stack, endpoint: Endpoint, clients: int, seconds: float) -> dict:
    run_ids = _create_runs(endpoint, clients)
    start = time.time() + 2.0  # every process is up and posting before the warm-up ends
    window = (start + WARMUP_S, start + WARMUP_S + seconds)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    shares = [run_ids[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    procs = [ctx.Process(target=_client_process, daemon=True,
                         args=(f"{endpoint.url}/api/2.0/mlflow/runs/log-batch", endpoint.auth, share, window,
                               window[1] + 1.0, results))
             for share in shares if share]
    for proc in procs:
        proc.start()
    server_cpu, pg_cpu = CpuMeter(endpoint), CpuMeter(stack.postgres_endpoint)
    tracebacks_before = stack.server_log_tracebacks(endpoint)
    time.sleep(max(0.0, window[0] - time.time()))
    stored_before = stack.stored_metric_points(run_ids)
    server_cpu.start(), pg_cpu.start()
    time.sleep(max(0.0, window[1] - time.time()))
    stored_in_window = stack.stored_metric_points(run_ids) - stored_before
    _, server_cores = server_cpu.stop()
    _, pg_cores = pg_cpu.stop()
    outcomes = [results.get(timeout=REQUEST_TIMEOUT_S + 30) for _ in procs]
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    latencies = [ms for o in outcomes for ms in o["latencies_ms"]]
    errors = [e for o in outcomes for e in o["errors"]]
    return {
        "clients": clients, "window_s": seconds, "metrics_per_s": stored_in_window / seconds,
        "requests_per_s": len(latencies) / seconds, "p50_ms": median(latencies), "p95_ms": percentile(latencies, 95),
        "errors": len(errors), "error_examples": errors[:3],
        "server_tracebacks": stack.server_log_tracebacks(endpoint) - tracebacks_before,
        "server_cores": server_cores, "postgres_cores": pg_cores,
        "client_cores": sum(o["cpu_s"] for o in outcomes) / seconds,
    }


def main() -> None:
    args = parse_args(__doc__, lambda p: (
        p.add_argument("--clients", type=int, default=32, help="concurrent closed-loop clients (default 32)"),
        p.add_argument("--seconds", type=float, help="measured window (15 quick, 60 full)")))
    seconds = args.seconds or (60 if args.full else 15)
    with Stack() as stack:
        results = {}
        for endpoint in stack.endpoints:
            print(f"{endpoint.name}: {args.clients} clients for {seconds:.0f} s", flush=True)
            results[endpoint.name] = saturate(stack, endpoint, args.clients, seconds)
    headers = ["server", "metrics/s stored", "requests/s", "p50 ms", "p95 ms", "errors",
               "CPU cores server / PostgreSQL / clients"]
    rows = [[name, f"{r['metrics_per_s']:.0f}", f"{r['requests_per_s']:.0f}", f"{r['p50_ms']:.0f}",
             f"{r['p95_ms']:.0f}", f"{r['errors']} failed, {r['server_tracebacks']} tracebacks",
             f"{r['server_cores']:.2f} / {r['postgres_cores']:.2f} / {r['client_cores']:.2f}"]
            for name, r in results.items()]
    rows.append(["ours / stock", ratio(results["ours"]["metrics_per_s"], results["stock"]["metrics_per_s"]),
                 "", "", "", "", ""])
    table = print_table(f"Ingest capacity: {args.clients} closed-loop clients, log-batch of "
                        f"{METRICS_PER_REQUEST} metrics, {seconds:.0f} s window", headers, rows)
    save("saturation", args.full, [table], {"results": results})


if __name__ == "__main__":
    main()
