"""Per-call latency from the MLflow Python client on a keep-alive session, stock vs ours.

    python -m bench.latency [--quick|--full] [--variants] [--profile]

Each MlflowClient call (log_metric, log_param, set_tag, get_run, search_runs) is timed on its own,
after a warm-up, against both servers in turn; MLflow's client reuses one pooled requests session,
so every call after the first rides a kept-alive connection. Reads fetch runs of a fixed, typical
size (a detection run: 50 params, 20 summary metrics, 10 tags; search_runs returns 10 of them),
so their cost does not grow with what the write calls added. Writes go to runs of their own, and
log_param moves to a fresh run every 50 params: MLflow loads all of a run's params on each
log_param, so 500 params on one run would time a run no training job has. A raw ``requests.Session`` GET of
/health and POST of log-metric separate what the server costs from what the client library adds.

--variants also starts ours with auth off, to price the authentication layer, and calls ours as a
user who is not an admin (MLflow then checks that user's permission on every call).
--profile records ours with py-spy while it serves log_metric (speedscope file in results/).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import requests

from bench.report import RESULTS_DIR, Deadline, median, parse_args, percentile, print_table, ratio, save
from bench.stack import VENV_BIN, Endpoint, Stack

WARMUP_CALLS = 5
BLOCK_CALLS = 10
TYPICAL_RUNS = 10
TYPICAL_PARAMS, TYPICAL_METRICS, TYPICAL_TAGS = 50, 20, 10


def _typical_runs(client, experiment_id: str) -> str:
    """TYPICAL_RUNS runs of a detection job's size in the experiment; returns the last run's id."""
    from mlflow.entities import Metric, Param, RunTag

    for _ in range(TYPICAL_RUNS):
        run_id = client.create_run(experiment_id).info.run_id
        client.log_batch(run_id,
                         metrics=[Metric(f"metric_{k}", 0.5, 0, 100) for k in range(TYPICAL_METRICS)],
                         params=[Param(f"param_{k}", str(k)) for k in range(TYPICAL_PARAMS)],
                         tags=[RunTag(f"tag_{k}", str(k)) for k in range(TYPICAL_TAGS)])
    return run_id


def _operations(client, write_run_id: str, param_run_ids: list[str], read_run_id: str, read_experiment_id: str):
    """Each op takes a call number that is unique per server (params are write-once)."""
    return {
        "log_metric": lambda i: client.log_metric(write_run_id, "loss", 0.5 + i * 1e-3, step=i),
        "log_param": lambda i: client.log_param(param_run_ids[i // TYPICAL_PARAMS], f"param_{i}", str(i)),
        "set_tag": lambda i: client.set_tag(write_run_id, f"tag_{i % 50}", str(i)),
        "get_run": lambda i: client.get_run(read_run_id),
        "search_runs": lambda i: client.search_runs([read_experiment_id], max_results=TYPICAL_RUNS),
    }


def _raw_operations(endpoint: Endpoint, run_id: str):
    session = requests.Session()
    session.auth = endpoint.auth
    base = f"{endpoint.url}/api/2.0/mlflow"

    def post_metric(i):
        r = session.post(f"{base}/runs/log-metric", timeout=30, json={
            "run_id": run_id, "key": "raw_loss", "value": 1.0, "timestamp": int(time.time() * 1000), "step": i})
        r.raise_for_status()

    def health(i):
        session.get(f"{endpoint.url}/health", timeout=30).raise_for_status()

    return {"raw POST log-metric": post_metric, "raw GET /health": health}


def _prepare(endpoint: Endpoint, calls: int):
    """The timed operations for one server, each bound to its own experiment and run, warmed up."""
    from mlflow import MlflowClient

    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        tag = f"{endpoint.name}-{uuid.uuid4().hex[:8]}"
        write_experiment_id = client.create_experiment(f"latency-writes-{tag}")
        write_run_id = client.create_run(write_experiment_id).info.run_id
        # Call numbers run from -WARMUP_CALLS to a little past `calls` (see measure()); Python's
        # negative indexes give the warm-up calls the last runs.
        param_run_ids = [client.create_run(write_experiment_id).info.run_id
                         for _ in range(calls // TYPICAL_PARAMS + 3)]
        read_experiment_id = client.create_experiment(f"latency-reads-{tag}")
        read_run_id = _typical_runs(client, read_experiment_id)
        ops = {**_operations(client, write_run_id, param_run_ids, read_run_id, read_experiment_id),
               **_raw_operations(endpoint, write_run_id)}
        for op in ops.values():
            for i in range(WARMUP_CALLS):
                op(-1 - i)
    return ops


def measure(endpoints: list[Endpoint], calls: int, seconds: float) -> dict[str, dict[str, list[float]]]:
    """Rotate the servers in blocks of back-to-back calls.

    Back to back, because that is how a client's calls arrive and it is what exposes per-
    connection effects (TCP delayed ACKs once the kernel sees a request/response ping-pong);
    rotating, so load from other processes on a shared machine falls on every server alike. The
    first call of each block follows an idle connection and is not counted.
    """
    ops = {e.name: _prepare(e, calls) for e in endpoints}
    samples = {e.name: {op: [] for op in ops[e.name]} for e in endpoints}
    for op in ops[endpoints[0].name]:
        deadline = Deadline(seconds)
        for block_start in range(0, calls, BLOCK_CALLS):
            if deadline.passed:
                break
            for endpoint in endpoints:
                with endpoint.as_client():
                    for i in range(block_start, block_start + BLOCK_CALLS + 1):
                        t0 = time.perf_counter()
                        ops[endpoint.name][op](i + block_start // BLOCK_CALLS)
                        if i > block_start:
                            samples[endpoint.name][op].append((time.perf_counter() - t0) * 1000)
    return samples


def profile_ours(endpoint: Endpoint, seconds: float, out_path) -> str:
    """py-spy the gunicorn workers while the client hammers log_metric; returns the file written."""
    from mlflow import MlflowClient

    py_spy = shutil.which("py-spy", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if not py_spy:
        return "py-spy not installed (pip install -r bench/requirements.txt)"
    recorder = subprocess.Popen(
        [py_spy, "record", "--format", "speedscope", "--output", str(out_path), "--duration", str(int(seconds)),
         "--rate", "200", "--subprocesses", "--pid", str(endpoint.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)
    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        run_id = client.create_run(client.create_experiment(f"profile-{uuid.uuid4().hex[:8]}")).info.run_id
        deadline = Deadline(seconds - 1)
        for i in range(100_000):
            if deadline.passed:
                break
            client.log_metric(run_id, "loss", 0.5, step=i)
    recorder.wait(seconds + 30)
    return str(out_path)


def main() -> None:
    args = parse_args(__doc__, lambda p: (
        p.add_argument("--variants", action="store_true", help="also ours with auth off, and as a plain user"),
        p.add_argument("--profile", action="store_true", help="py-spy record ours under log_metric load")))
    calls, seconds = (500, 120) if args.full else (60, 30)
    with Stack() as stack:
        endpoints = stack.endpoints
        if args.variants:
            endpoints += [stack.start_variant("ours_auth_off", {"MLFLOW_AUTH": "off"}), stack.ours_as_plain_user()]
        results = measure(endpoints, calls, seconds)
        profile = profile_ours(stack.ours, 20, RESULTS_DIR / "ours-log_metric.speedscope.json") \
            if args.profile else None

    ops = list(results["stock"])
    headers = ["call", "stock median ms", "stock p95 ms", "ours median ms", "ours p95 ms", "median ratio"]
    extra = [name for name in results if name not in ("stock", "ours")]
    headers += [f"{name} median ms" for name in extra]
    rows = []
    for op in ops:
        s, o = results["stock"][op], results["ours"][op]
        rows.append([op, f"{median(s):.1f}", f"{percentile(s, 95):.1f}", f"{median(o):.1f}",
                     f"{percentile(o, 95):.1f}", ratio(median(s), median(o)),
                     *[f"{median(results[name][op]):.1f}" for name in extra]])
    table = print_table(f"Per-call latency, MlflowClient on a kept-alive session ({calls} calls/op max)",
                        headers, rows)
    if profile:
        print(f"py-spy profile: {profile}")
    summary = {name: {op: {"median_ms": median(v), "p95_ms": percentile(v, 95), "n": len(v)}
                      for op, v in per_op.items()} for name, per_op in results.items()}
    save("latency", args.full, [table], {"results": summary, "profile": profile})


if __name__ == "__main__":
    main()
