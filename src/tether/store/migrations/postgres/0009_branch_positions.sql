-- tether schema v9: positions are text, branch-scoped ("3", "3.1.2", "[key].0").
--
-- A call's identity is its branch path and its sequence within the branch, so concurrent
-- branches cannot swap recorded results (see tether/_core/positions.py). Positions written
-- before this version were single integers: they become the same digits as text, which is
-- what the flow body's calls are still numbered as. Each ALTER rewrites its table (and its
-- indexes) under an exclusive lock: on a large database, run it in a quiet moment.

ALTER TABLE checkpoints ALTER COLUMN position TYPE TEXT USING position::text;
ALTER TABLE events ALTER COLUMN position TYPE TEXT USING position::text;
ALTER TABLE waits ALTER COLUMN position TYPE TEXT USING position::text;
ALTER TABLE memory ALTER COLUMN writer_position TYPE TEXT USING writer_position::text;
