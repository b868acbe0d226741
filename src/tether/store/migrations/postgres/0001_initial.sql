-- tether schema v1 (PostgreSQL): executions, their checkpoint calls, and events.
-- The same tables as the SQLite schema; times are Unix seconds (DOUBLE PRECISION).

CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    flow             TEXT NOT NULL,
    import_path      TEXT NOT NULL,
    script           TEXT,
    args             TEXT NOT NULL,
    status           TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    owner            TEXT,
    lease_token      TEXT,
    lease_expires    DOUBLE PRECISION,
    attempt          INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION,
    parent_id        TEXT,
    replay_of        TEXT,
    metadata         TEXT,
    options          TEXT
);

CREATE INDEX executions_by_status ON executions (status, created_at);
CREATE INDEX executions_by_flow ON executions (flow, created_at);
CREATE INDEX executions_by_created ON executions (created_at);

CREATE TABLE checkpoints (
    execution_id TEXT NOT NULL,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       TEXT NOT NULL,
    result       TEXT,
    error        TEXT,
    attempts     TEXT,
    started_at   DOUBLE PRECISION NOT NULL,
    finished_at  DOUBLE PRECISION NOT NULL,
    metadata     TEXT,
    PRIMARY KEY (execution_id, position)
);

CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    execution_id TEXT NOT NULL,
    position     INTEGER,
    at           DOUBLE PRECISION NOT NULL,
    level        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL,
    data         TEXT
);

CREATE INDEX events_by_execution ON events (execution_id, id);
