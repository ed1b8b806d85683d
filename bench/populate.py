"""Fill the shared tracking database with an experiment of N runs × 50 params × 20 metrics.

The experiment is created through MLflow's own store (so it is a normal experiment with its
artifact location); runs, tags, params and metrics go in with PostgreSQL COPY in MLflow's schema,
which takes seconds where 10 000 REST log_batch calls would take many minutes on two cores.

Params: ``model`` (one of 10 architectures: the filter the search benchmark uses), ``lr``,
``batch_size`` and ``hp_03`` … ``hp_49``. Metrics: ``val_mAP`` (the sort key), ``loss`` and
``metric_02`` … ``metric_19``, each with ``steps`` history points plus its latest value.
"""
from __future__ import annotations

import contextlib
import io
import random
import time
import uuid

MODELS = [f"arch_{i}" for i in range(10)]
PARAMS_PER_RUN = 50
METRICS_PER_RUN = 20
FILTER_PARAM, FILTER_VALUE, SORT_METRIC = "model", MODELS[3], "val_mAP"


def _param_rows(run_uuid: str, rng: random.Random):
    yield "model", rng.choice(MODELS)
    yield "lr", f"{rng.choice([1e-4, 3e-4, 1e-3, 3e-3, 1e-2]):g}"
    yield "batch_size", str(rng.choice([8, 16, 32, 64]))
    for i in range(3, PARAMS_PER_RUN):
        yield f"hp_{i:02d}", str(rng.randint(0, 1000))


def _metric_names():
    return ["val_mAP", "loss", *[f"metric_{i:02d}" for i in range(2, METRICS_PER_RUN)]]


def _copy(cur, table: str, columns: str, rows: io.StringIO) -> None:
    rows.seek(0)
    cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", rows)


def populate(tracking_uri: str, connect, runs: int, steps: int, experiment_name: str | None = None,
             seed: int = 0) -> tuple[str, float]:
    """Create the experiment and its runs; returns (experiment_id, seconds taken).

    ``connect()`` opens a psycopg2 connection to the tracking database.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    t0 = time.perf_counter()
    store = SqlAlchemyStore(tracking_uri, "mlflow-artifacts:/")
    experiment_id = store.create_experiment(experiment_name or f"scale-{runs}-{uuid.uuid4().hex[:6]}")
    store.engine.dispose()
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    run_rows, tag_rows, param_rows, metric_rows, latest_rows = (io.StringIO() for _ in range(5))
    for n in range(runs):
        run_uuid = uuid.uuid4().hex
        start = now - (runs - n) * 60_000
        run_rows.write(f"{run_uuid}\tscale-run-{n}\tLOCAL\tbench\t\tbench\tFINISHED\t{start}\t{start + 50_000}"
                       f"\t\tactive\tmlflow-artifacts:/{experiment_id}/{run_uuid}/artifacts\t{experiment_id}\n")
        tag_rows.write(f"mlflow.runName\tscale-run-{n}\t{run_uuid}\n")
        for key, value in _param_rows(run_uuid, rng):
            param_rows.write(f"{key}\t{value}\t{run_uuid}\n")
        for key in _metric_names():
            value = 0.0
            for step in range(steps):
                value = rng.random()
                metric_rows.write(f"{key}\t{value!r}\t{start + step * 1000}\t{step}\tf\t{run_uuid}\n")
            latest_rows.write(f"{key}\t{value!r}\t{start + (steps - 1) * 1000}\t{steps - 1}\tf\t{run_uuid}\n")
    with contextlib.closing(connect()) as conn, conn.cursor() as cur:
        _copy(cur, "runs", "run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                           "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id",
              run_rows)
        _copy(cur, "tags", "key, value, run_uuid", tag_rows)
        _copy(cur, "params", "key, value, run_uuid", param_rows)
        _copy(cur, "metrics", "key, value, timestamp, step, is_nan, run_uuid", metric_rows)
        _copy(cur, "latest_metrics", "key, value, timestamp, step, is_nan, run_uuid", latest_rows)
        conn.commit()
        conn.autocommit = True
        cur.execute("ANALYZE")
    return experiment_id, time.perf_counter() - t0
