"""Throughput under concurrent trainers through the cvops SDK, stock vs ours.

    python -m bench.throughput [--quick|--full] [--trainers 1,4,16,32] [--seconds S]

Each simulated trainer is its own process: ``cvops.start_run(...)``, then every 100 ms one
``run.log_metrics({20 metrics}, step=…)`` for the window (15 s quick, 60 s full), then
``run.flush()`` and ``run.end()``. All trainers start together after every one has its run.

Per server and trainer count it reports:
* sustained metrics/s: metric rows that reached PostgreSQL during the window / window length
  (offered load: trainers × 200/s);
* p95 visibility delay: a prober polls ``GET /api/2.0/mlflow/metrics/get-history`` of up to 4
  trainers every 250 ms; delay = when a step first shows up − the step's enqueue timestamp
  (so it includes up to ~250 ms of polling granularity);
* errors: points logged but never stored, trainers whose final flush failed, and new
  tracebacks in the server log;
* CPU: mean cores busy of the server's process tree and of PostgreSQL's, over the window.
A single client's ``log_batch`` of 1000 metrics in a loop gives the raw ingest reference.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

import psutil
import requests

from bench.report import Deadline, median, parse_args, percentile, print_table, ratio, save
from bench.stack import CpuMeter, Endpoint, Stack

METRICS_PER_STEP = 20
STEP_INTERVAL_S = 0.1
PROBED_TRAINERS = 4
PROBE_INTERVAL_S = 0.25
READY_TIMEOUT_S = 300
FLUSH_TIMEOUT_S = 120
PROBE_METRIC = f"metric_{METRICS_PER_STEP - 1}"  # last of the batch: its arrival means the step arrived


def _trainer(index: int, env: dict, experiment: str, seconds: float, go, results) -> None:
    """One simulated training process (runs in a spawned child)."""
    os.environ.update(env)
    import cvops

    try:
        run = cvops.start_run(experiment=experiment, run_name=f"trainer-{index}")
        results.put(("ready", index, run.run_id))
        if not go.wait(READY_TIMEOUT_S):
            return
        blocked_ms, step = [], 0
        next_step = time.monotonic()
        deadline = Deadline(seconds)
        while not deadline.passed:
            values = {f"metric_{j}": 1.0 / (step + j + 1) for j in range(METRICS_PER_STEP)}
            t0 = time.perf_counter()
            run.log_metrics(values, step=step, timestamp_ms=int(time.time() * 1000))
            blocked_ms.append((time.perf_counter() - t0) * 1000)
            step += 1
            next_step += STEP_INTERVAL_S
            time.sleep(max(0.0, next_step - time.monotonic()))
        flushed = run.flush(timeout_s=FLUSH_TIMEOUT_S)
        run.end()
        results.put(("done", index, run.run_id, step * METRICS_PER_STEP, flushed, percentile(blocked_ms, 99)))
    except Exception as exc:  # reported as an error of this trainer, not a crash of the bench
        results.put(("failed", index, repr(exc)))


@dataclass
class Prober:
    """Polls metric history of a few runs and records each step's enqueue → visible delay."""

    endpoint: Endpoint
    run_ids: list[str]
    delays_ms: list[float] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._seen: dict[str, set[int]] = {r: set() for r in self.run_ids}
        self._session = requests.Session()
        self._session.auth = self.endpoint.auth
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(30)

    def _loop(self):
        url = f"{self.endpoint.url}/api/2.0/mlflow/metrics/get-history"
        while not self._stop.wait(PROBE_INTERVAL_S):
            for run_id in self.run_ids:
                with contextlib.suppress(requests.RequestException, ValueError):
                    response = self._session.get(url, params={"run_id": run_id, "metric_key": PROBE_METRIC},
                                                 timeout=10)
                    now_ms = time.time() * 1000
                    for point in response.json().get("metrics", []):
                        step = int(point.get("step", 0))
                        if step not in self._seen[run_id]:
                            self._seen[run_id].add(step)
                            self.delays_ms.append(now_ms - int(point["timestamp"]))


class ConnectionSampler:
    """Peak PostgreSQL connections per database while trainers run (checks the sizing formula)."""

    def __init__(self, stack: Stack):
        self._conn = stack.postgres.connect()
        self._conn.autocommit = True
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        with self._conn.cursor() as cur:
            while not self._stop.wait(1.0):
                cur.execute("SELECT datname, count(*) FROM pg_stat_activity WHERE datname IS NOT NULL "
                            "GROUP BY datname")
                for name, count in cur.fetchall():
                    self.peak[name] = max(self.peak.get(name, 0), count)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()
        return self.peak


def run_trainers(stack: Stack, endpoint: Endpoint, trainers: int, seconds: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    env = {k: v for k, v in endpoint.client_env().items() if v}
    env.update({"CVOPS_SPOOL_DIR": str(stack.root / "spool"), "CVOPS_SYSTEM_METRICS": "0",
                "CVOPS_CACHE_DIR": str(stack.root / "cache")})
    experiment = f"throughput-{endpoint.name}-{trainers}-{uuid.uuid4().hex[:6]}"
    procs = [ctx.Process(target=_trainer, args=(i, env, experiment, seconds, go, results), daemon=True)
             for i in range(trainers)]
    for p in procs:
        p.start()
    run_ids, failures = [], []
    deadline = Deadline(READY_TIMEOUT_S)
    while len(run_ids) + len(failures) < trainers and not deadline.passed:
        with contextlib.suppress(Exception):
            message = results.get(timeout=5)
            (run_ids if message[0] == "ready" else failures).append(message[2])
    server_cpu, pg_cpu = CpuMeter(endpoint), CpuMeter(stack.postgres_endpoint)
    prober = Prober(endpoint, [r for r in run_ids if r][:PROBED_TRAINERS])
    tracebacks_before = stack.server_log_tracebacks(endpoint)
    stored_before = stack.stored_metric_points(run_ids)
    server_cpu.start(), pg_cpu.start(), prober.start()
    connections = ConnectionSampler(stack)
    t0 = time.monotonic()
    go.set()
    time.sleep(seconds)
    window = time.monotonic() - t0
    stored_in_window = stack.stored_metric_points(run_ids) - stored_before
    _, server_cores = server_cpu.stop()
    _, pg_cores = pg_cpu.stop()
    done = []
    deadline = Deadline(FLUSH_TIMEOUT_S + 60)
    while len(done) + len(failures) < trainers and not deadline.passed:
        with contextlib.suppress(Exception):
            message = results.get(timeout=5)
            (done if message[0] == "done" else failures).append(message)
    prober.stop()
    peak_connections = connections.stop()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    logged = sum(m[3] for m in done)
    stored = stack.stored_metric_points(run_ids)
    return {
        "trainers": trainers, "window_s": window, "offered_per_s": trainers * METRICS_PER_STEP / STEP_INTERVAL_S,
        "sustained_per_s": stored_in_window / window, "logged": logged, "stored": stored,
        "lost": max(0, logged - stored), "failed_trainers": len(failures) + sum(1 for m in done if not m[4]),
        "server_tracebacks": stack.server_log_tracebacks(endpoint) - tracebacks_before,
        "delay_p50_ms": median(prober.delays_ms), "delay_p95_ms": percentile(prober.delays_ms, 95),
        "delay_samples": len(prober.delays_ms),
        "log_metrics_p99_blocked_ms": max((m[5] for m in done), default=float("nan")),
        "server_cores": server_cores, "postgres_cores": pg_cores, "peak_connections": peak_connections,
    }


def _server_connections(result: dict) -> int:
    """Connections to the tracking and auth databases (the sampler's own is to 'postgres')."""
    return sum(n for name, n in result["peak_connections"].items() if name.startswith("mlflow_bench"))


def log_batch_reference(endpoint: Endpoint, batches: int, seconds: float) -> float:
    """metrics/s of one client calling log_batch(1000 metrics) back to back."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        run_id = client.create_run(client.create_experiment(f"log-batch-{uuid.uuid4().hex[:8]}")).info.run_id
        sent, deadline, t0 = 0, Deadline(seconds), time.perf_counter()
        for step in range(batches):
            if deadline.passed:
                break
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(f"m{j}", float(j), now, step) for j in range(1000)])
            sent += 1000
        return sent / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args(__doc__, lambda p: (
        p.add_argument("--trainers", default="1,4,16,32", help="comma-separated trainer counts"),
        p.add_argument("--seconds", type=float, help="window per trainer count (15 quick, 60 full)")))
    counts = [int(n) for n in args.trainers.split(",")]
    seconds = args.seconds or (60 if args.full else 15)
    batches, batch_seconds = (200, 60) if args.full else (20, 15)
    results: dict[str, list[dict]] = {"stock": [], "ours": []}
    reference = {}
    with Stack() as stack:
        for endpoint in stack.endpoints:
            reference[endpoint.name] = log_batch_reference(endpoint, batches, batch_seconds)
            for n in counts:
                print(f"{endpoint.name}: {n} trainers for {seconds:.0f} s", flush=True)
                results[endpoint.name].append(run_trainers(stack, endpoint, n, seconds))

    headers = ["trainers", "offered /s", "stock metrics/s", "ours metrics/s", "ratio",
               "stock p95 delay ms", "ours p95 delay ms", "stock errors", "ours errors",
               "stock CPU (server+PG cores)", "ours CPU (server+PG cores)", "peak PG connections stock/ours"]
    rows = []
    for s, o in zip(results["stock"], results["ours"]):
        errors = lambda r: f"{r['lost']} lost, {r['failed_trainers']} failed, {r['server_tracebacks']} tracebacks"
        rows.append([s["trainers"], f"{s['offered_per_s']:.0f}", f"{s['sustained_per_s']:.0f}",
                     f"{o['sustained_per_s']:.0f}", ratio(o["sustained_per_s"], s["sustained_per_s"]),
                     f"{s['delay_p95_ms']:.0f}", f"{o['delay_p95_ms']:.0f}", errors(s), errors(o),
                     f"{s['server_cores']:.2f}+{s['postgres_cores']:.2f}",
                     f"{o['server_cores']:.2f}+{o['postgres_cores']:.2f}",
                     f"{_server_connections(s)}/{_server_connections(o)}"])
    table = print_table(f"Concurrent cvops trainers, {METRICS_PER_STEP} metrics every "
                        f"{STEP_INTERVAL_S * 1000:.0f} ms, {seconds:.0f} s window", headers, rows)
    ref = print_table("Single client log_batch(1000 metrics) back to back",
                      ["server", "metrics/s"], [[name, f"{v:.0f}"] for name, v in reference.items()])
    save("throughput", args.full, [table, ref], {"trainers": results, "log_batch_reference": reference,
                                                  "cpu_count": psutil.cpu_count()})


if __name__ == "__main__":
    main()
