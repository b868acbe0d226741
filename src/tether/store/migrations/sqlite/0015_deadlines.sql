-- tether schema v15: deadlines.
--
-- deadline: the time (the clock of waits and timers, epoch seconds) past which the
-- execution is cancelled as timed out, by whichever process claims it then (a suspension
-- sets wake_at no later than it, so a parked execution is claimed at its deadline like a
-- due timer). NULL: none, or a relative one not yet fixed (it counts from the first start:
-- the options hold it until then). Delayed starts need no column: not_before (0011) already
-- keeps a queued execution from being claimed before a time.
ALTER TABLE executions ADD COLUMN deadline REAL;
