-- tether schema v3 (PostgreSQL): live progress of running executions, and log lookups by kind.

-- JSON: the checkpoint calls running right now ({"position", "name", "since"}), written by
-- the lease heartbeat, so watchers see progress without a write per checkpoint.
ALTER TABLE executions ADD COLUMN progress TEXT;

CREATE INDEX checkpoints_by_execution_status ON checkpoints (execution_id, status);
CREATE INDEX executions_by_finished ON executions (status, finished_at);
