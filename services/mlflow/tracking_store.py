"""The tracking store the cvops server runs: MLflow 3.17.2's SQL store, with metric writes done in
one PostgreSQL statement.

Metrics are what training jobs send most (every trainer, every flush). MLflow's store writes them
through the ORM: it loads the run, reads and row-locks the run's ``latest_metrics`` for the
batch's keys, inserts the points, updates the latest values, and on a duplicate point rolls back
and sorts the batch out again: 7–8 round trips to PostgreSQL and most of the server's CPU per
``log_metric`` (py-spy: 83 % of a worker's busy time; docs/performance.md).

Here the same write is one statement (plus the pool's ping, BEGIN and COMMIT): the points go in
with ``ON CONFLICT DO NOTHING`` on the metrics table's primary key (a repeated point is skipped,
as MLflow skips it), and ``latest_metrics`` is upserted with the batch's newest point per key,
replacing the stored one only when (step, timestamp, value) is strictly greater, which is
MLflow's rule. Both are guarded by the run's lifecycle stage in the same statement, so a missing
or deleted run writes nothing; MLflow's own checks then raise its usual error. Validation,
NaN/inf handling and the deadlock retry are MLflow's own code paths.

tests/integration/test_server_tracking_store.py replays the same calls against this store and
MLflow's on one PostgreSQL and requires identical rows and identical errors.
"""

import logging
import os

from mlflow.entities import LifecycleStage
from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR
from mlflow.server.handlers import TrackingStoreRegistryWrapper
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_metric,
    _validate_run_id,
)
from sqlalchemy import text

# gunicorn's own logger: what it writes reaches the server log at the configured level.
_logger = logging.getLogger("gunicorn.error")

# Rows come in as parallel arrays (one bind parameter per column, whatever the batch size).
# DISTINCT ON keeps, per key, the newest point by MLflow's order (step, timestamp, value), the
# earliest in the batch on a tie; ordering by key makes concurrent writers lock latest_metrics rows
# in the same order, as MLflow's ORDER BY … FOR UPDATE does.
_LOG_METRICS_SQL = text("""
WITH run AS (
    SELECT lifecycle_stage FROM runs WHERE run_uuid = :run_id
), points AS (
    SELECT * FROM unnest(CAST(:keys AS varchar[]), CAST(:metric_values AS float8[]),
                         CAST(:timestamps AS bigint[]), CAST(:steps AS bigint[]),
                         CAST(:is_nans AS boolean[]))
                  WITH ORDINALITY AS p(key, value, timestamp, step, is_nan, position)
    WHERE EXISTS (SELECT 1 FROM run WHERE lifecycle_stage = :active)
), stored AS (
    INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT key, value, timestamp, step, is_nan, :run_id FROM points
    ON CONFLICT DO NOTHING
), newest AS (
    INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT DISTINCT ON (key) key, value, timestamp, step, is_nan, :run_id FROM points
    ORDER BY key, step DESC, timestamp DESC, value DESC, position
    ON CONFLICT (key, run_uuid) DO UPDATE
    SET value = excluded.value, timestamp = excluded.timestamp, step = excluded.step,
        is_nan = excluded.is_nan
    WHERE (excluded.step, excluded.timestamp, excluded.value)
          > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)
)
SELECT lifecycle_stage FROM run
""")


class PostgresMetricWritesStore(SqlAlchemyStore):
    def _log_metrics_once(self, run_id, metrics):
        # One row per metrics-table primary key: the point MLflow would keep.
        points = {}
        for index, metric in enumerate(metrics):
            _validate_metric(metric.key, metric.value, metric.timestamp, metric.step,
                             path="" if len(metrics) == 1 else f"metrics[{index}]")
            is_nan, value = self.sanitize_metric_value(metric.value)
            points.setdefault((metric.key, metric.timestamp, metric.step, value, is_nan), None)
        keys, timestamps, steps, values, is_nans = (list(column) for column in zip(*points)) \
            if points else ([], [], [], [], [])
        with self.ManagedSessionMaker(read_only=False) as session:
            stage = session.execute(_LOG_METRICS_SQL, {
                "run_id": run_id, "active": LifecycleStage.ACTIVE, "keys": keys,
                "metric_values": values, "timestamps": timestamps, "steps": steps, "is_nans": is_nans,
            }).scalar()
            if stage != LifecycleStage.ACTIVE:  # nothing was written; MLflow's checks say why
                self._check_run_is_active(self._get_run(run_uuid=run_id, session=session))

    def log_batch(self, run_id, metrics, params, tags):
        # What trainers send is metrics only; MLflow would load and check the run once more in a
        # session of its own before the metric write (which checks it too).
        if params or tags or any(metric.model_id is not None for metric in metrics):
            return super().log_batch(run_id, metrics, params, tags)
        _validate_run_id(run_id)
        _validate_batch_log_data(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        self._log_metrics(run_id, metrics)


def build(store_uri, artifact_uri):
    """The PostgreSQL store builder registered with MLflow's tracking-store registry."""
    if MLFLOW_ENABLE_WORKSPACES.get():
        # Workspaces scope every run lookup (_get_query); the statement above does not, so
        # workspace servers keep MLflow's store unchanged.
        return TrackingStoreRegistryWrapper._get_sqlalchemy_store(store_uri, artifact_uri)
    _logger.info("tracking store: MLflow's SQL store with single-statement PostgreSQL metric writes")
    return PostgresMetricWritesStore(store_uri, artifact_uri,
                                     read_db_uri=os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR))
