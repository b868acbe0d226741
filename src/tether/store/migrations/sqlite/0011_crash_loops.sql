-- tether schema v11: crash loops are bounded.
--
-- takeovers: how many times in a row the holder of the execution stopped without ending it
-- (its process died, its lease ran out) and another took it over, with no progress recorded
-- in between; progress_mark: how many checkpoint calls and waits were recorded when the
-- last takeover looked (more or fewer since: progress, the count starts again); not_before:
-- a queued execution is not claimed before this time (the backoff between takeovers).
ALTER TABLE executions ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN progress_mark INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN not_before REAL;
