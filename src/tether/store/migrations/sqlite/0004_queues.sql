-- tether schema v4: queues with priorities and limits, and deduplication keys.

ALTER TABLE executions ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE executions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN dedup_key TEXT;

-- One execution per (flow, key): a second start with the same key finds the first.
CREATE UNIQUE INDEX executions_dedup ON executions (flow, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX executions_by_queue ON executions (queue, status, priority, created_at);

-- Limits of a queue across the whole fleet, written by the workers that serve it.
CREATE TABLE queue_limits (
    name        TEXT PRIMARY KEY,
    concurrency INTEGER,
    rate_limit  INTEGER,
    rate_period DOUBLE PRECISION,
    updated_at  DOUBLE PRECISION NOT NULL
);
