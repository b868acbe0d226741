-- tether schema v13: the executions list reads each listed execution's first pending input
-- wait from an index of that execution's pending input waits.
--
-- Without it SQLite (which has no statistics: tether does not ANALYZE) answered the list's
-- per-row lookup from waits_pending (status, created_at), walking every pending wait of the
-- store for each row listed: 100 ms for a page of 50 with 10,000 executions waiting. Only
-- pending input waits have an entry, so creating or resolving a wait writes at most one.
CREATE INDEX IF NOT EXISTS waits_pending_input
    ON waits (execution_id, created_at) WHERE status = 'pending' AND kind = 'input';
