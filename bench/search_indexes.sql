-- Candidate indexes for run search at scale, measured before/after by bench/search.py.
-- Result (docs/performance.md): no end-to-end gain at 10 000 runs, where MLflow's Python
-- materialisation of the page dominates; not proposed for the migrate step until a larger
-- experiment shows a gain.
-- Safe to run on a live server and to re-run: IF NOT EXISTS, CONCURRENTLY (no write lock on
-- the table; must run outside a transaction, i.e. with autocommit), and additive only, so
-- MLflow's own alembic migrations are unaffected (they never touch indexes they did not create).
-- A CONCURRENTLY build that fails leaves an INVALID index; re-running after
-- `DROP INDEX CONCURRENTLY IF EXISTS <name>` repairs it.

-- `params.<name> = '<value>'` filters: MLflow's primary key (key, run_uuid) finds every run's
-- param of that name, then reads each heap row to compare the value. A hash index on value
-- turns that into an index lookup of the matching rows only. Hash, not btree: param values may
-- be up to 8000 characters and a btree entry is limited to ~2.7 kB (a long value would then
-- fail log_param); a hash index stores 4 bytes per row. Params are written once per run, so it
-- adds nothing to the metric-logging hot path.
CREATE INDEX CONCURRENTLY IF NOT EXISTS cvops_params_value_hash ON params USING hash (value);

-- `metrics.<name> > x` filters and metric-ordered pages: (key, value) lets PostgreSQL read only
-- the runs past the threshold. latest_metrics rows are updated on every newer metric value,
-- so this costs one index insert per such update: keep it only if metric filters matter.
CREATE INDEX CONCURRENTLY IF NOT EXISTS cvops_latest_metrics_key_value ON latest_metrics (key, value);
