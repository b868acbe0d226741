-- tether schema v8 (PostgreSQL): fewer index writes per checkpoint and per claim, and claims
-- that do not walk every waiting or running execution.
--
-- A claim and a finish change `status`, so those UPDATEs are never HOT: each writes an entry
-- into every index of executions that is not partial (a partial index only gets the rows its
-- WHERE matches). So the claim's indexes are partial, one per way of being runnable, and the
-- claim names each status as a literal so that the planner can prove their WHERE. They replace
-- indexes on every row that led with `status`: one of those, (status, priority DESC,
-- created_at), also served the claim's ORDER BY for waiting rows, so a prepared claim (a
-- generic plan) walked every waiting execution in priority order looking for a due one.
--
-- The status is left out of the partial indexes' columns (SQLite's keep it, see there): their
-- WHERE fixes it already, and in a query that locks no rows (runnable()) PostgreSQL leaves a
-- condition the WHERE implies out of the index condition, so a leading status column would
-- have it read the whole index.
--
-- Both tables are locked first: DROP INDEX takes the strongest lock, and taking it after the
-- weaker lock of CREATE INDEX could deadlock with a worker's transaction. The indexes are built
-- inside the migration's transaction (not CONCURRENTLY), so on a large table workers wait for
-- the build.
LOCK TABLE executions, checkpoints IN ACCESS EXCLUSIVE MODE;

-- Redundant: the primary key (execution_id, position) serves every lookup by execution. One
-- index entry less per checkpoint written.
DROP INDEX IF EXISTS checkpoints_by_execution_status;

-- Queued executions in claim order (replaces executions_claim_order, which held every row).
DROP INDEX IF EXISTS executions_claim_order;
CREATE INDEX IF NOT EXISTS executions_queued
    ON executions (priority DESC, created_at) WHERE status = 'queued';

-- Timers: waiting executions by when they are due (replaces executions_runnable). A claim
-- takes the earliest due ones from it (see CLAIM_WINDOW in _sql.py); next_due() reads its
-- first entry. A wait for input without a deadline has no wake_at and no entry.
DROP INDEX IF EXISTS executions_runnable;
CREATE INDEX IF NOT EXISTS executions_due
    ON executions (wake_at) WHERE status = 'waiting' AND wake_at IS NOT NULL;

-- Running executions by when their lease expires: a claim reads the expired ones (dead
-- owners) only. The price: lease_expires is now an indexed column, so a renewal that moves it
-- is not a HOT update (an entry into each index that is not partial, and into this one). The
-- heartbeat beats every second but moves a lease on only once less than lease_seconds is
-- left (renew's refresh_before; it extends it to 4/3 of that), so most beats stay HOT.
CREATE INDEX IF NOT EXISTS executions_lease_expiry
    ON executions (lease_expires) WHERE status = 'running';

-- Finished executions by status and end, for prune (`status IN (...) AND finished_at < ?`
-- implies the WHERE). Replaces executions_by_finished, which held every row.
DROP INDEX IF EXISTS executions_by_finished;
CREATE INDEX IF NOT EXISTS executions_finished
    ON executions (status, finished_at) WHERE finished_at IS NOT NULL;
