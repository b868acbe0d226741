-- tether schema v17: the running executions with a cancel requested, for the heartbeat.
--
-- A heartbeat renews only the leases that are due, so it no longer learns of a cancel from
-- renewing every lease it holds each second; it reads this index instead. It holds only the
-- rows with a cancel pending (a row leaves it when its execution ends), so the read costs what
-- is being cancelled, not what runs.
CREATE INDEX IF NOT EXISTS executions_cancel_requests
    ON executions (status, cancel_requested) WHERE status = 'running' AND cancel_requested = 1;
