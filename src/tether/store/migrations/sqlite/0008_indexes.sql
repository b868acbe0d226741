-- tether schema v8: fewer index writes per checkpoint and per claim, and claims that do not
-- walk every waiting or running execution.
--
-- The same indexes as the PostgreSQL schema, with one difference: here the partial indexes
-- of the claim also start with `status`. Without statistics (tether does not ANALYZE) SQLite
-- rates an index by its columns alone, and would rather take executions_by_status (status,
-- created_at) for `status = 'waiting'` and sort every waiting row; an index that matches the
-- status *and* the time range (or the claim order) wins.
--
-- An UPDATE here rewrites its row's entries in the indexes that hold a changed column: a claim
-- or a finish (which change the status) now rewrites those of executions_by_status and
-- executions_by_queue and of the partial indexes its row leaves or enters, no longer those of
-- three more indexes of every row; a lease renewal now rewrites one (executions_lease_expiry).

-- Redundant: the primary key (execution_id, position) serves every lookup by execution. One
-- index entry less per checkpoint written.
DROP INDEX IF EXISTS checkpoints_by_execution_status;

-- Queued executions in claim order (replaces executions_claim_order, which held every row).
DROP INDEX IF EXISTS executions_claim_order;
CREATE INDEX IF NOT EXISTS executions_queued
    ON executions (status, priority DESC, created_at) WHERE status = 'queued';

-- Timers: waiting executions by when they are due (replaces executions_runnable). A claim
-- takes the earliest due ones from it (see CLAIM_WINDOW in _sql.py); next_due() reads its
-- first entry. A wait for input without a deadline has no wake_at and no entry.
DROP INDEX IF EXISTS executions_runnable;
CREATE INDEX IF NOT EXISTS executions_due
    ON executions (status, wake_at) WHERE status = 'waiting' AND wake_at IS NOT NULL;

-- Running executions by when their lease expires: a claim reads the expired ones (dead
-- owners) only.
CREATE INDEX IF NOT EXISTS executions_lease_expiry
    ON executions (status, lease_expires) WHERE status = 'running';

-- Finished executions by status and end, for prune (`status IN (...) AND finished_at < ?`
-- implies the WHERE). Replaces executions_by_finished, which held every row.
DROP INDEX IF EXISTS executions_by_finished;
CREATE INDEX IF NOT EXISTS executions_finished
    ON executions (status, finished_at) WHERE finished_at IS NOT NULL;
