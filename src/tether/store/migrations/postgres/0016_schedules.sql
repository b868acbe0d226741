-- tether schema v16: schedules (@tether.flow(schedule=...)), one row per scheduled flow.
--
-- last_tick is the compare-and-swap that fires a tick once across a fleet: a worker moves it
-- from the value it read, in the transaction that inserts the tick's execution (whose
-- dedup_key is the tick). next_tick is what `tether schedules list` shows. Times are epoch
-- seconds. resumed_at: ticks at or before it are not fired (they came due while paused).
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    last_tick DOUBLE PRECISION NOT NULL,
    next_tick DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    resumed_at DOUBLE PRECISION
);
