-- tether schema v7 (PostgreSQL): durable memory (tether.memory) over content-addressed blobs.

-- Values stored once by the hash of their JSON text: a chat message appended to a history
-- that is written again every turn is stored the first time only.
CREATE TABLE blobs (
    hash TEXT PRIMARY KEY,
    data TEXT NOT NULL
);

-- One row per version of a key; versions are never changed or removed (a delete writes a
-- tombstone). A value is one blob (`blob`), or a list: the item hashes it adds (`items`, a
-- JSON array) to the list of version `base_version` (none: the whole list), so a list that
-- grows by a few items per write costs a few hashes per write, not the whole list again.
-- `idempotency_key` (execution:position) makes a write made again by a resumed
-- flow find the version it wrote before the crash instead of writing a second one.
CREATE TABLE memory (
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
    created_at       DOUBLE PRECISION NOT NULL,
    writer_execution TEXT,
    writer_position  INTEGER,
    idempotency_key  TEXT,
    PRIMARY KEY (scope, scope_id, key, version)
);

CREATE UNIQUE INDEX memory_idempotency ON memory (idempotency_key);
