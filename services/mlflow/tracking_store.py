"""The tracking store the cvops server runs: MLflow 3.17.2's SQL store, with metric writes and run
reads each done in one PostgreSQL statement, searches in two, and the chart view's sampled
histories in one.

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

``get_run`` (the run page, a job resuming, the server's own permission checks) is MLflow's
``_get_run`` with the run's metrics, params and tags loaded eagerly, then its dataset inputs,
model inputs and model outputs: seven queries and an ORM object per row, 81 % of a worker's time
serving it (py-spy). Here one statement returns the run row with each of those as an aggregate,
and the Run is built from MLflow's own entity classes, so what the handler serialises is the
same.

``search_runs`` (the UI's run table, every experiment page) picks the page with MLflow's query,
built from MLflow's own filter and ordering clauses, but without loading each run's metrics,
params and tags as ORM objects (then expiring them all at commit) and without the two queries for
inputs and outputs: 71 % of a worker's time serving a page of 10 typical runs (py-spy). The same
statement as ``get_run`` then reads the page's runs.

``get_metric_history_bulk_interval`` (the chart view: one call per curve, 10 runs each) samples
every run's curve as MLflow does, in one statement where MLflow's store sends two statements per
run.

tests/integration/test_server_tracking_store.py replays the same calls against this store and
MLflow's on one PostgreSQL and requires identical rows, identical runs, identical search pages,
identical sampled histories and identical errors.
"""

import logging
import os

from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LifecycleStage,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunTag,
)
from mlflow.entities.metric import MetricWithRunId
from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR
from mlflow.server.handlers import TrackingStoreRegistryWrapper
from mlflow.store.tracking.dbmodels.models import SqlRun
from mlflow.store.tracking.sqlalchemy_store import (
    SqlAlchemyStore,
    _get_orderby_clauses,
    _get_sqlalchemy_filter_clauses,
    _parse_experiment_ids,
)
from mlflow.utils.mlflow_tags import _get_run_name_from_tags
from mlflow.utils.search_utils import SearchUtils
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_metric,
    _validate_run_id,
)
from sqlalchemy import select, text
from sqlalchemy.orm import raiseload

# gunicorn's own logger: what it writes reaches the server log at the configured level.
_logger = logging.getLogger("gunicorn.error")

# Rows come in as parallel arrays (one bind parameter per column, whatever the batch size). Rows
# take the run's id from the runs table, not from the argument: an id too long for the column
# would fail the statement where MLflow answers "not found".
# DISTINCT ON keeps, per key, the newest point by MLflow's order (step, timestamp, value), the
# earliest in the batch on a tie. The run's stored rows of the batch's keys are locked first, in
# key order (the scalar subquery runs before the upsert's first row), as MLflow's
# ORDER BY … FOR UPDATE locks them, so concurrent writers do not deadlock on them. New keys then go
# in in the order the batch first names them, as MLflow adds them: get_run returns a run's metrics
# in the order its rows were stored (see _READ_RUNS_SQL).
_LOG_METRICS_SQL = text("""
WITH run AS (
    SELECT run_uuid, lifecycle_stage FROM runs WHERE run_uuid = :run_id
), points AS (
    SELECT * FROM unnest(CAST(:keys AS varchar[]), CAST(:metric_values AS float8[]),
                         CAST(:timestamps AS bigint[]), CAST(:steps AS bigint[]),
                         CAST(:is_nans AS boolean[]))
                  WITH ORDINALITY AS p(key, value, timestamp, step, is_nan, position)
    WHERE EXISTS (SELECT 1 FROM run WHERE lifecycle_stage = :active)
), locked AS (
    SELECT key FROM latest_metrics
    WHERE run_uuid = :run_id AND key IN (SELECT key FROM points)
    ORDER BY key FOR UPDATE
), stored AS (
    INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT key, value, timestamp, step, is_nan, run.run_uuid FROM points, run
    ON CONFLICT DO NOTHING
), newest AS (
    INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT key, value, timestamp, step, is_nan, run.run_uuid FROM (
        SELECT DISTINCT ON (key) *, min(position) OVER (PARTITION BY key) AS first_position FROM points
        ORDER BY key, step DESC, timestamp DESC, value DESC, position) AS newest_per_key, run
    WHERE (SELECT count(*) FROM locked) >= 0
    ORDER BY first_position
    ON CONFLICT (key, run_uuid) DO UPDATE
    SET value = excluded.value, timestamp = excluded.timestamp, step = excluded.step,
        is_nan = excluded.is_nan
    WHERE (excluded.step, excluded.timestamp, excluded.value)
          > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)
)
SELECT lifecycle_stage FROM run
""")

# Each child table comes back as one JSON array (NULL when empty). Metric values travel as text:
# float8's text form round-trips exactly, where JSON numbers would not carry Infinity or NaN.
#
# Lists keep MLflow's order, which is that of the index each of its queries reads through, since
# none of them has an ORDER BY: latest metrics, params and tags by the run_uuid index, i.e. in the
# order the rows were first stored (the aggregates below read the same index for a run, and
# likewise have no ORDER BY); dataset inputs in logging order (inputs' index on the run, rows
# never updated), each one's tags by name (the input_tags primary key); model inputs and outputs
# by model id (the inputs indexes). That order is itself an accident of the plan: where
# PostgreSQL scans a whole small table instead (MLflow's search_runs on a young database), rows
# updated in place (a metric's newer step, an overwritten tag) come in their new physical place.
# Here get_run's order, the one every run lookup and any sizeable database gives, is the rule.
_READ_RUNS_SQL = text("""
SELECT run.run_uuid, run.name, run.experiment_id, run.user_id, run.status, run.start_time, run.end_time,
       run.lifecycle_stage, run.artifact_uri,
       (SELECT json_agg(json_build_array(key, value::text, timestamp, step, is_nan))
          FROM latest_metrics WHERE run_uuid = run.run_uuid) AS metrics,
       (SELECT json_agg(json_build_array(key, value))
          FROM params WHERE run_uuid = run.run_uuid) AS params,
       (SELECT json_agg(json_build_array(key, value))
          FROM tags WHERE run_uuid = run.run_uuid) AS tags,
       (SELECT json_agg(json_build_array(
                   dataset.name, dataset.digest, dataset.dataset_source_type, dataset.dataset_source,
                   dataset.dataset_schema, dataset.dataset_profile,
                   (SELECT json_agg(json_build_array(input_tag.name, input_tag.value) ORDER BY input_tag.name)
                      FROM input_tags AS input_tag WHERE input_tag.input_uuid = input.input_uuid)))
          FROM inputs AS input JOIN datasets AS dataset ON dataset.dataset_uuid = input.source_id
         WHERE input.destination_type = 'RUN' AND input.destination_id = run.run_uuid) AS dataset_inputs,
       (SELECT json_agg(destination_id ORDER BY destination_id)
          FROM inputs WHERE source_type = 'RUN_INPUT' AND source_id = run.run_uuid
                        AND destination_type = 'MODEL_INPUT') AS model_inputs,
       (SELECT json_agg(json_build_array(destination_id, step) ORDER BY destination_id)
          FROM inputs WHERE source_type = 'RUN_OUTPUT' AND source_id = run.run_uuid
                        AND destination_type = 'MODEL_OUTPUT') AS model_outputs
  FROM runs AS run WHERE run.run_uuid = ANY(CAST(:run_ids AS varchar[]))
""")

# The chart view's history, sampled as MLflow samples it (SqlAlchemyStore.
# _sample_rows_with_window_functions), for every requested run in one statement instead of two
# statements and three sorts per run. MLflow keeps the first point of each of NTILE(max_results)'s
# buckets over the run's points ordered by (step, timestamp, value, is_nan), plus the last point
# (_sampled_history). NTILE gives the first total % n buckets total / n + 1 points and the others
# total / n, so where each bucket starts follows from a point's position. Each run is read on its
# own (LATERAL), as MLflow's query reads it: filtering all runs by key first reads every run's
# curve of that name (86 ms against 57 at 4 000 steps, bench/ui_speed.py).
_SAMPLED_HISTORY_SQL = text("""
SELECT asked.run_uuid, point.value, point.timestamp, point.step, point.is_nan, point.sampled, point.last
  FROM (SELECT DISTINCT unnest(CAST(:run_ids AS varchar[])) AS run_uuid) AS asked
 CROSS JOIN LATERAL (
    SELECT value, timestamp, step, is_nan, position,
           CASE WHEN position < large_buckets * (small + 1) THEN position % (small + 1) = 0
                ELSE (position - large_buckets * (small + 1)) % small = 0 END AS sampled,
           position = total - 1 AS last
      FROM (SELECT value, timestamp, step, is_nan, position, total,
                   total / :max_results AS small, total % :max_results AS large_buckets
              FROM (SELECT value, timestamp, step, is_nan,
                           row_number() OVER (ORDER BY step, timestamp, value, is_nan) - 1 AS position,
                           count(*) OVER () AS total
                      FROM metrics
                     WHERE run_uuid = asked.run_uuid AND key = :key
                       AND (CAST(:start_step AS bigint) IS NULL OR step BETWEEN :start_step AND :end_step)
                   ) AS points
           ) AS bucketed
 ) AS point
 WHERE point.sampled OR point.last
 ORDER BY asked.run_uuid, point.position
""")


def _sampled_history(rows, max_results):
    """One run's rows of _SAMPLED_HISTORY_SQL as MLflow's sampling returns them."""
    sampled = [row for row in rows if row.sampled]
    last = next((row for row in rows if row.last), None)

    def identity(row):
        return row.step, row.timestamp, None if row.is_nan else row.value, row.is_nan

    if last is not None and (not sampled or identity(sampled[-1]) != identity(last)):
        if len(sampled) >= max_results:
            sampled[-1] = last
        else:
            sampled.append(last)
    return sampled


def _run_from_row(row, with_model_inputs: bool = True) -> Run:
    """The Run that MLflow's SqlRun.to_mlflow_entity plus its input and output lookups build
    (search_runs leaves model inputs out)."""
    tags = [RunTag(key, value) for key, value in row.tags or ()]
    info = RunInfo(run_id=row.run_uuid, run_name=row.name, experiment_id=str(row.experiment_id),
                   user_id=row.user_id, status=row.status, start_time=row.start_time, end_time=row.end_time,
                   lifecycle_stage=row.lifecycle_stage, artifact_uri=row.artifact_uri)
    if not info.run_name and (name_from_tags := _get_run_name_from_tags(tags)):
        info._set_run_name(name_from_tags)
    data = RunData(
        metrics=[Metric(key, float("nan") if is_nan else float(value), timestamp, step)
                 for key, value, timestamp, step, is_nan in row.metrics or ()],
        params=[Param(key, value) for key, value in row.params or ()],
        tags=tags)
    dataset_inputs = [
        DatasetInput(Dataset(name=name, digest=digest, source_type=source_type, source=source, schema=schema,
                             profile=profile),
                     tags=[InputTag(key, value) for key, value in input_tags or ()])
        for name, digest, source_type, source, schema, profile, input_tags in row.dataset_inputs or ()]
    model_inputs = [LoggedModelInput(model_id) for model_id in row.model_inputs or ()] \
        if with_model_inputs else []
    return Run(info, data,
               RunInputs(dataset_inputs=dataset_inputs, model_inputs=model_inputs),
               RunOutputs([LoggedModelOutput(model_id, step) for model_id, step in row.model_outputs or ()]))


class PostgresTrackingStore(SqlAlchemyStore):
    def get_run(self, run_id):
        # In MLflow's managed session, so what goes wrong is MLflow's error (PostgreSQL unreachable
        # or the session ended mid-call: TEMPORARILY_UNAVAILABLE, a 503). Not on an autocommit
        # connection: switching a pooled connection's isolation level back talks to PostgreSQL
        # outside any error handling, so a session ended under the call was a 500 and leaked the
        # pool's slot; and measured side by side it saved nothing.
        with self.ManagedSessionMaker() as session:
            row = session.execute(_READ_RUNS_SQL, {"run_ids": [run_id]}).one_or_none()
        if row is None:
            return super().get_run(run_id)  # raises MLflow's "not found"
        return _run_from_row(row)

    def get_metric_history_bulk_interval(self, run_ids, metric_key, max_results, start_step, end_step):
        if (start_step is None) != (end_step is None):
            return super().get_metric_history_bulk_interval(run_ids, metric_key, max_results, start_step, end_step)
        max_results = max(1, max_results)
        with self.ManagedSessionMaker() as session:
            rows_by_run = {}
            for row in session.execute(_SAMPLED_HISTORY_SQL, {
                    "run_ids": list(run_ids), "key": metric_key, "max_results": max_results,
                    "start_step": start_step, "end_step": end_step}):
                rows_by_run.setdefault(row.run_uuid, []).append(row)
        # In the order the runs were asked for, a run asked for twice twice, as MLflow's loop does.
        return [MetricWithRunId(run_id=run_id, metric=Metric(key=metric_key,
                                                              value=float("nan") if row.is_nan else row.value,
                                                              timestamp=row.timestamp, step=row.step))
                for run_id in run_ids
                for row in _sampled_history(rows_by_run.get(run_id, ()), max_results)]

    def _search_runs(self, experiment_ids, filter_string, run_view_type, max_results, order_by, page_token):
        self._validate_max_results_param(max_results, allow_null=True)
        with self.ManagedSessionMaker() as session:
            page, offset = self._page_query(session, experiment_ids, filter_string, run_view_type, order_by,
                                            page_token, max_results)
            run_ids = [run.run_uuid for run in session.execute(page).scalars()]
            rows = {row.run_uuid: row for row in session.execute(_READ_RUNS_SQL, {"run_ids": run_ids})}
        runs = [_run_from_row(rows[run_id], with_model_inputs=False) for run_id in run_ids]
        if max_results is not None and len(runs) > max_results:  # one more than a page was asked for
            return runs[:max_results], SearchUtils.create_page_token(offset + max_results)
        return runs, None

    def _page_query(self, session, experiment_ids, filter_string, run_view_type, order_by, page_token,
                    max_results):
        """MLflow's search query for a page of runs (and one more, to tell whether a next page
        exists), without loading what the runs hold; and the page's offset. Arguments are checked
        in MLflow's order, so a request with two mistakes gets the same error."""
        parsed_filters = SearchUtils.parse_search_filter(filter_string)
        cases_orderby, parsed_orderby, sorting_joins = _get_orderby_clauses(order_by, session)
        attribute_filters, non_attribute_filters, dataset_filters = _get_sqlalchemy_filter_clauses(
            parsed_filters, session, self._get_dialect())
        # DISTINCT over the whole run and the ordering cases, as MLflow's, so duplicates from the
        # joins collapse the same way; raiseload: the runs' collections are read by _READ_RUNS_SQL.
        runs = select(SqlRun, *cases_orderby).options(raiseload("*"))
        for joined in non_attribute_filters:
            runs = runs.join(joined)
        for joined in dataset_filters:
            runs = runs.join(joined, SqlRun.run_uuid == joined.c.destination_id)
        for joined in sorting_joins:
            runs = runs.outerjoin(joined)
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        experiment_ids = self._filter_experiment_ids(session, _parse_experiment_ids(experiment_ids))
        runs = (runs.distinct()
                .filter(SqlRun.experiment_id.in_(experiment_ids),
                        SqlRun.lifecycle_stage.in_(set(LifecycleStage.view_type_to_stages(run_view_type))),
                        *attribute_filters)
                .order_by(*parsed_orderby)
                .offset(offset))
        return (runs if max_results is None else runs.limit(max_results + 1)), offset

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
        try:
            self._log_metrics(run_id, metrics)
        except MlflowException:
            raise
        except Exception as error:  # a value no float holds (10**400): OverflowError
            # MLflow's log_batch checks the run before it meets the value, and wraps what is not
            # its own error (its log_metric does neither: the same value gives a bare error there).
            with self.ManagedSessionMaker() as session:
                self._check_run_is_active(self._get_run(run_uuid=run_id, session=session))
            raise MlflowException(error, INTERNAL_ERROR) from error


def build(store_uri, artifact_uri):
    """The PostgreSQL store builder registered with MLflow's tracking-store registry."""
    if MLFLOW_ENABLE_WORKSPACES.get():
        # Workspaces scope every run lookup (_get_query); the statements above do not, so
        # workspace servers keep MLflow's store unchanged.
        return TrackingStoreRegistryWrapper._get_sqlalchemy_store(store_uri, artifact_uri)
    _logger.info("tracking store: MLflow's SQL store with "
                 "single-statement PostgreSQL metric writes and run reads")
    return PostgresTrackingStore(store_uri, artifact_uri,
                                 read_db_uri=os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR))
