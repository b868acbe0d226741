-- tether schema v6: find the next queued execution to claim without scanning them all.
CREATE INDEX executions_claim_order ON executions (status, priority DESC, created_at);
