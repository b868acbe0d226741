-- tether schema v9: positions are text, branch-scoped ("3", "3.1.2", "[key].0").
--
-- A call's identity is its branch path and its sequence within the branch, so concurrent
-- branches cannot swap recorded results (see tether/_core/positions.py). Positions written
-- before this version were single integers: they become the same digits as text, which is
-- what the flow body's calls are still numbered as.
--
-- SQLite cannot change a column's type, and an INTEGER column would turn "3.1" into the
-- number 3.1 (and "3.10" into 3.1 too): the four tables are rebuilt with TEXT positions.

CREATE TABLE checkpoints_v9 (
    execution_id TEXT NOT NULL,
    position     TEXT NOT NULL,
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
INSERT INTO checkpoints_v9 (execution_id, position, name, fingerprint, status, result, error,
                            attempts, started_at, finished_at, metadata)
    SELECT execution_id, CAST(position AS TEXT), name, fingerprint, status, result, error,
           attempts, started_at, finished_at, metadata
    FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_v9 RENAME TO checkpoints;

CREATE TABLE events_v9 (
    id           INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL,
    position     TEXT,
    at           REAL NOT NULL,
    level        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL,
    data         TEXT
);
INSERT INTO events_v9 (id, execution_id, position, at, level, kind, message, data)
    SELECT id, execution_id, CAST(position AS TEXT), at, level, kind, message, data FROM events;
DROP TABLE events;
ALTER TABLE events_v9 RENAME TO events;
CREATE INDEX events_by_execution ON events (execution_id, id);

CREATE TABLE waits_v9 (
    execution_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    position     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    schema_ref   TEXT,
    json_schema  TEXT,
    question     TEXT,
    metadata     TEXT,
    deadline     REAL,
    value        TEXT,
    resolved_by  TEXT,
    created_at   REAL NOT NULL,
    resolved_at  REAL,
    PRIMARY KEY (execution_id, name)
);
INSERT INTO waits_v9 (execution_id, name, position, kind, status, schema_ref, json_schema,
                      question, metadata, deadline, value, resolved_by, created_at, resolved_at)
    SELECT execution_id, name, CAST(position AS TEXT), kind, status, schema_ref, json_schema,
           question, metadata, deadline, value, resolved_by, created_at, resolved_at
    FROM waits;
DROP TABLE waits;
ALTER TABLE waits_v9 RENAME TO waits;
CREATE INDEX waits_pending ON waits (status, created_at);

CREATE TABLE memory_v9 (
    scope            TEXT NOT NULL,
    scope_id         TEXT NOT NULL,
    key              TEXT NOT NULL,
    version          INTEGER NOT NULL,
    deleted          INTEGER NOT NULL DEFAULT 0,
    blob             TEXT,
    base_version     INTEGER,
    items            TEXT,
    length           INTEGER,
    size             INTEGER NOT NULL,
    created_at       REAL NOT NULL,
    writer_execution TEXT,
    writer_position  TEXT,
    idempotency_key  TEXT,
    PRIMARY KEY (scope, scope_id, key, version)
) WITHOUT ROWID;
INSERT INTO memory_v9 (scope, scope_id, key, version, deleted, blob, base_version, items,
                       length, size, created_at, writer_execution, writer_position,
                       idempotency_key)
    SELECT scope, scope_id, key, version, deleted, blob, base_version, items, length, size,
           created_at, writer_execution, CAST(writer_position AS TEXT), idempotency_key
    FROM memory;
DROP TABLE memory;
ALTER TABLE memory_v9 RENAME TO memory;
CREATE UNIQUE INDEX memory_idempotency ON memory (idempotency_key);
