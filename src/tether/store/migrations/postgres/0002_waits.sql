-- tether schema v2 (PostgreSQL): waits (input and timers), and when a waiting execution wakes up.

ALTER TABLE executions ADD COLUMN wake_at DOUBLE PRECISION;

-- Runnable executions are found by status, and waiting ones by when they are due.
CREATE INDEX executions_runnable ON executions (status, wake_at);

-- One row per wait() or sleep() call of an execution; the name is unique per execution.
CREATE TABLE waits (
    execution_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    position     INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    schema_ref   TEXT,
    json_schema  TEXT,
    question     TEXT,
    metadata     TEXT,
    deadline     DOUBLE PRECISION,
    value        TEXT,
    resolved_by  TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    resolved_at  DOUBLE PRECISION,
    PRIMARY KEY (execution_id, name)
);

CREATE INDEX waits_pending ON waits (status, created_at);
