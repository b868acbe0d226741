-- tether schema v1: executions, their checkpoint calls, and events.
-- Stored values are JSON text written by tether._serde; times are Unix seconds (REAL).

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
    lease_expires    REAL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    parent_id        TEXT,
    replay_of        TEXT,
    metadata         TEXT,
    options          TEXT
);

CREATE INDEX executions_by_status ON executions (status, created_at);
CREATE INDEX executions_by_flow ON executions (flow, created_at);
CREATE INDEX executions_by_created ON executions (created_at);

-- One row per checkpoint call. A rowid table with the (execution, position) key as its
-- primary key index: results are ~1 KB, and measured here a rowid table appends them
-- faster than a WITHOUT ROWID tree, which is meant for small rows.
CREATE TABLE checkpoints (
    execution_id TEXT NOT NULL,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       TEXT NOT NULL,
    result       TEXT,
    error        TEXT,
    attempts     TEXT,
    started_at   REAL NOT NULL,
    finished_at  REAL NOT NULL,
    metadata     TEXT,
    PRIMARY KEY (execution_id, position)
);

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL,
    position     INTEGER,
    at           REAL NOT NULL,
    level        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL,
    data         TEXT
);

CREATE INDEX events_by_execution ON events (execution_id, id);
