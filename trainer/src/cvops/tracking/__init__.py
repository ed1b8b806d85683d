"""Run lifecycle, tag schema, non-blocking batching worker, disk spool and its replay."""
from cvops.tracking.names import sanitize_metric_name
from cvops.tracking.run import DisabledRun, Run, start_run

__all__ = ["DisabledRun", "Run", "sanitize_metric_name", "start_run"]
