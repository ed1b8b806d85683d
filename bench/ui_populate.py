"""A CV team's year of runs (issue 19), written straight into MLflow's PostgreSQL schema with COPY.

20 experiments, 2 000 runs; each run has 200 params (a Detectron2 config), 10 tags, 2 dataset
inputs (the experiment's train and val sets) and 40 metrics: 8 training curves (losses, lr, data
time) with ``steps`` points each, and 32 evaluation metrics (``bbox/…``, ``segm/…``) with 50
points spread over the same steps. Every 20th run has a registered model (its version points at
the run). ``latest_metrics`` holds, per run and key, the point MLflow itself would keep (the
greatest (step, timestamp, value)), since the runs table and the run page read it.

Experiments and registered models go through MLflow's own stores (a few hundred rows, and they
are what a normal client would create); the bulk goes in with COPY. For the metrics table its
primary key, indexes and foreign key are dropped for the load and created again afterwards, with
the definitions read back from the catalog: building an index once is several times faster than
updating three on every row, and the table ends up exactly as MLflow's migrations left it.

    python -m bench.ui_populate --steps 1000      # on a fresh database, prints the seconds taken
"""
from __future__ import annotations

import contextlib
import io
import math
import random
import time
import uuid
from dataclasses import dataclass

EXPERIMENTS = 20
RUNS = 2_000
PARAMS_PER_RUN = 200
EVAL_POINTS = 50
MODEL_EVERY = 20
BACKBONES = [f"build_resnet_fpn_backbone_v{i}" for i in range(10)]
FILTER_PARAM, FILTER_VALUE = "MODEL.BACKBONE.NAME", BACKBONES[3]
SORT_METRIC = "bbox/AP"
LONG_CURVES = ["total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_mask",
               "lr", "data_time"]
EVAL_METRICS = [f"{task}/{name}" for task in ("bbox", "segm")
                for name in ("AP", "AP50", "AP75", "APs", "APm", "APl",
                             *(f"AP-class_{c:02d}" for c in range(10)))]
TAG_KEYS = ["mlflow.runName", "mlflow.user", "mlflow.source.name", "mlflow.source.type",
            "mlflow.source.git.commit", "framework", "task", "backbone", "dataset", "trainer_host"]
RUNS_PER_COPY = 50  # rows of one COPY: ~50 MB of text at 1 000 steps, then it streams the next
METRIC_COLUMNS = "key, value, timestamp, step, is_nan, run_uuid"
assert len(LONG_CURVES) + len(EVAL_METRICS) == 40


@dataclass
class Workload:
    """What ui_populate wrote: enough for the benchmark to address pages and requests."""

    experiment_ids: list[str]
    run_ids: list[str]  # in creation order; run_ids[i] belongs to experiment_ids[i % EXPERIMENTS]
    steps: int
    seconds: float
    metric_rows: int


def param_items(rng: random.Random) -> list[tuple[str, str]]:
    """200 Detectron2-style config entries; the backbone is what the search benchmark filters on."""
    items = [(FILTER_PARAM, rng.choice(BACKBONES)),
             ("SOLVER.BASE_LR", f"{rng.choice([0.0025, 0.005, 0.01, 0.02]):g}"),
             ("SOLVER.IMS_PER_BATCH", str(rng.choice([8, 16, 32]))),
             ("INPUT.MIN_SIZE_TRAIN", str(rng.choice([640, 672, 704, 736, 768, 800])))]
    items += [(f"MODEL.ROI_HEADS.OPTION_{i:03d}", str(rng.randint(0, 1000)))
              for i in range(len(items), PARAMS_PER_RUN)]
    return items


def eval_steps(steps: int) -> list[int]:
    """The 50 steps at which a run was evaluated, spread over its training curve."""
    return [max(0, (i + 1) * steps // EVAL_POINTS - 1) for i in range(EVAL_POINTS)]


def metric_points(start_ms: int, steps: int, rng: random.Random):
    """(key, value, timestamp, step) of one run's 40 metrics, in logging order per key."""
    for curve_index, key in enumerate(LONG_CURVES):
        scale = 2.5 / (curve_index + 1)
        for step in range(steps):
            yield key, scale / (1 + step / 200) + rng.random() * 0.05 * scale, start_ms + step * 1000, step
    for key in EVAL_METRICS:
        ceiling = rng.uniform(30, 60)
        for point, step in enumerate(eval_steps(steps)):
            yield key, ceiling * (1 - math.exp(-(point + 1) / 10)), start_ms + step * 1000 + 500, step


def latest_points(points) -> dict[str, tuple]:
    """Per key, the point MLflow keeps in latest_metrics: the greatest (step, timestamp, value)."""
    latest = {}
    for key, value, timestamp, step in points:
        kept = latest.get(key)
        if kept is None or (step, timestamp, value) > (kept[3], kept[2], kept[1]):
            latest[key] = (key, value, timestamp, step)
    return latest


class _Tables:
    """Tab-separated COPY text for each bulk table, a few runs at a time."""

    NAMES = ("runs", "tags", "params", "metrics", "latest_metrics", "inputs", "input_tags")

    def __init__(self):
        self.buffers = {name: io.StringIO() for name in self.NAMES}

    def add_run(self, run_uuid: str, number: int, experiment_id: str, start_ms: int, steps: int,
                datasets: list[tuple[str, str]], rng: random.Random) -> int:
        w = {name: buffer.write for name, buffer in self.buffers.items()}
        name = f"frcnn-{number:04d}"
        w["runs"](f"{run_uuid}\t{name}\tLOCAL\ttrain_net.py\t\\N\tcv-team\tFINISHED\t{start_ms}"
                  f"\t{start_ms + steps * 1000 + 60_000}\t\\N\tactive"
                  f"\tmlflow-artifacts:/{experiment_id}/{run_uuid}/artifacts\t{experiment_id}\n")
        params = dict(param_items(rng))
        tags = dict(zip(TAG_KEYS, [name, "cv-team", "train_net.py", "LOCAL", uuid.UUID(int=rng.getrandbits(128)).hex,
                                   "detectron2", "detection", params[FILTER_PARAM], "shapes-v1",
                                   f"gpu-node-{number % 8}"]))
        w["tags"]("".join(f"{key}\t{value}\t{run_uuid}\n" for key, value in tags.items()))
        w["params"]("".join(f"{key}\t{value}\t{run_uuid}\n" for key, value in params.items()))
        points = list(metric_points(start_ms, steps, rng))
        w["metrics"]("".join(f"{k}\t{v!r}\t{t}\t{s}\tf\t{run_uuid}\n" for k, v, t, s in points))
        w["latest_metrics"]("".join(f"{k}\t{v!r}\t{t}\t{s}\tf\t{run_uuid}\n"
                                    for k, v, t, s in latest_points(points).values()))
        for dataset_uuid, context in datasets:
            input_uuid = uuid.UUID(int=rng.getrandbits(128)).hex
            w["inputs"](f"{input_uuid}\tDATASET\t{dataset_uuid}\tRUN\t{run_uuid}\t0\n")
            w["input_tags"](f"{input_uuid}\tmlflow.data.context\t{context}\n")
        return len(points)

    def copy_into(self, cur) -> None:
        columns = {
            "runs": "run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, "
                    "end_time, source_version, lifecycle_stage, artifact_uri, experiment_id",
            "tags": "key, value, run_uuid", "params": "key, value, run_uuid",
            "metrics": METRIC_COLUMNS, "latest_metrics": METRIC_COLUMNS,
            "inputs": "input_uuid, source_type, source_id, destination_type, destination_id, step",
            "input_tags": "input_uuid, name, value",
        }
        for name in self.NAMES:  # runs first: the other tables' foreign keys point at them
            buffer = self.buffers[name]
            buffer.seek(0)
            cur.copy_expert(f"COPY {name} ({columns[name]}) FROM STDIN", buffer)
            self.buffers[name] = io.StringIO()


@contextlib.contextmanager
def _indexes_built_after(cur, table: str):
    """Drop the table's constraints and indexes for a bulk load, then create the same ones again."""
    cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass",
                (table,))
    constraints = cur.fetchall()
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname <> ALL(%s)",
                (table, [name for name, _ in constraints]))
    indexes = cur.fetchall()
    for name, _ in constraints:
        cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f'DROP INDEX "{name}"')
    yield
    cur.execute("SET maintenance_work_mem = '512MB'")
    for _, definition in indexes:
        cur.execute(definition)
    for name, definition in constraints:
        cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def populate(tracking_uri: str, connect, steps: int, runs: int = RUNS, seed: int = 0,
             progress=print) -> Workload:
    """Fill an empty tracking database (migrated by MLflow) with the workload.

    ``tracking_uri`` is the SQLAlchemy URI of the database, ``connect()`` opens a psycopg2
    connection to it.
    """
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    t0 = time.perf_counter()
    rng = random.Random(seed)
    store = SqlAlchemyStore(tracking_uri, "mlflow-artifacts:/")
    experiment_ids = [store.create_experiment(f"detectron2-team-{i:02d}") for i in range(EXPERIMENTS)]
    store.engine.dispose()
    run_ids = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(runs)]
    now_ms = int(time.time() * 1000)
    datasets = {experiment_id: [(uuid.UUID(int=rng.getrandbits(128)).hex, context, name)
                                for context, name in (("training", "shapes-train"), ("validation", "shapes-val"))]
                for experiment_id in experiment_ids}
    metric_rows = 0
    with contextlib.closing(connect()) as conn, conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        cur.copy_expert(
            "COPY datasets (dataset_uuid, experiment_id, name, digest, dataset_source_type, dataset_source, "
            "dataset_schema, dataset_profile) FROM STDIN",
            io.StringIO("".join(
                f"{dataset_uuid}\t{experiment_id}\t{name}\t{dataset_uuid[:8]}\ts3"
                f'\t{{"uri": "s3://datasets/{name}"}}\t{{"mlflow_colspec": []}}\t{{"num_rows": 5000}}\n'
                for experiment_id, sets in datasets.items() for dataset_uuid, _, name in sets)))
        with _indexes_built_after(cur, "metrics"):
            tables = _Tables()
            for number, run_uuid in enumerate(run_ids):
                experiment_id = experiment_ids[number % EXPERIMENTS]
                start_ms = now_ms - (runs - number) * (steps * 1000 + 120_000)
                metric_rows += tables.add_run(run_uuid, number, experiment_id, start_ms, steps,
                                              [(u, c) for u, c, _ in datasets[experiment_id]], rng)
                if (number + 1) % RUNS_PER_COPY == 0 or number + 1 == runs:
                    tables.copy_into(cur)
                    if (number + 1) % (RUNS_PER_COPY * 8) == 0:
                        progress(f"  {number + 1} runs, {metric_rows:,} metric rows, "
                                 f"{time.perf_counter() - t0:.0f} s", flush=True)
            progress(f"  building the metrics table's indexes, {time.perf_counter() - t0:.0f} s", flush=True)
        conn.commit()
    registry = RegistryStore(tracking_uri)
    for number in range(0, runs, MODEL_EVERY):
        name = f"shapes-detector-{number // MODEL_EVERY:03d}"
        registry.create_registered_model(name)
        registry.create_model_version(name, f"runs:/{run_ids[number]}/model", run_id=run_ids[number])
    registry.engine.dispose()
    with contextlib.closing(connect()) as conn:
        conn.autocommit = True
        conn.cursor().execute("VACUUM ANALYZE")
    return Workload(experiment_ids, run_ids, steps, time.perf_counter() - t0, metric_rows)


def main() -> None:
    """Populate a throw-away stack's database at one size and print how long it took."""
    import argparse

    from bench.stack import Stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="points of each of the 8 training curves")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    with Stack(start_servers=False) as stack:
        workload = populate(stack.ours_server.env["MLFLOW_BACKEND_STORE_URI"], stack.tracking_db,
                            args.steps, args.runs)
    print(f"{args.runs} runs × {args.steps} steps: {workload.metric_rows:,} metric rows "
          f"in {workload.seconds:.0f} s")


if __name__ == "__main__":
    main()
