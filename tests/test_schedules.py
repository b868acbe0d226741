"""Schedules (`@tether.flow(schedule=...)`): cron and interval ticks, each fired once across a
fleet of real worker processes, pause and resume, catch-up after downtime, and the typed
errors of a schedule that cannot work."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import schedule_flows
import tether
from helpers import FakeClock, ProcessPool, retry_until, run_cli, spawn_python
from tether import Status
from tether._core.config import store_for
from tether._runtime import deadlines as _deadlines
from tether._runtime import schedules as _schedules
from tether._runtime.schedules import Firer, parse
from tether.errors import ScheduleNotFound, UsageError

# The test process fires no schedule by itself (an in-process worker of another test would
# otherwise start these flows in its store): tests here give them to a Firer explicitly.
for _flow in schedule_flows.ALL:
    _schedules._declared.pop(_flow.name, None)

WORKER = "import schedule_flows; schedule_flows.run_worker()"
APP = "import threading, schedule_flows, tether; tether.launch(); threading.Event().wait()"
EVERY_SECOND = schedule_flows.every_second.name


def utc(*fields: int) -> float:
    return dt.datetime(*fields, tzinfo=dt.UTC).timestamp()  # type: ignore[misc]


# --- specs --------------------------------------------------------------------------------


def test_cron_with_a_leading_seconds_field_ticks_on_those_seconds() -> None:
    spec = parse("*/20 * * * * *", "f")
    start = utc(2026, 1, 5, 9, 0, 7)
    assert spec.after(start) == utc(2026, 1, 5, 9, 0, 20)
    assert spec.after(utc(2026, 1, 5, 9, 0, 20)) == utc(2026, 1, 5, 9, 0, 40)
    assert spec.latest_at_or_before(start) == utc(2026, 1, 5, 9, 0, 0)
    assert spec.latest_at_or_before(utc(2026, 1, 5, 9, 0, 40)) == utc(2026, 1, 5, 9, 0, 40)


def test_five_field_cron_is_minutes_in_utc() -> None:
    spec = parse("0 9 * * *", "f")
    assert spec.after(utc(2026, 1, 5, 9, 0, 0)) == utc(2026, 1, 6, 9, 0, 0)
    assert spec.latest_at_or_before(utc(2026, 1, 5, 8, 59, 59)) == utc(2026, 1, 4, 9, 0, 0)


def test_interval_ticks_are_aligned_to_the_epoch() -> None:
    spec = parse(dt.timedelta(minutes=5), "f")
    assert spec.text == "every 300s"
    assert parse(dt.timedelta(days=30, seconds=1), "f").text == "every 2592001s"
    assert parse(dt.timedelta(milliseconds=250), "f").text == "every 0.25s"
    assert spec.latest_at_or_before(utc(2026, 1, 5, 9, 7, 30)) == utc(2026, 1, 5, 9, 5)
    assert spec.after(utc(2026, 1, 5, 9, 5)) == utc(2026, 1, 5, 9, 10)


def test_tick_key_is_the_ticks_utc_time() -> None:
    assert _schedules.tick_key(utc(2026, 1, 5, 9)) == "tick:2026-01-05T09:00:00Z"
    assert _schedules.tick_key(utc(2026, 1, 5, 9) + 0.5) == "tick:2026-01-05T09:00:00.500000Z"


# --- typed errors at decoration time ------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"schedule": "0 9 * *"}, "is not a cron expression"),
        ({"schedule": "61 * * * *"}, "is not a cron expression"),
        ({"schedule": "0 9 * * * * *"}, "six with a leading seconds field"),
        ({"schedule": dt.timedelta(0)}, "must be positive"),
        ({"schedule": dt.timedelta(seconds=-5)}, "must be positive"),
        ({"schedule": 60}, "takes a cron string"),
        ({"schedule": "* * * * *", "catchup": "some"}, "catchup= is one of"),
        ({"schedule_args": (1,)}, "go with schedule="),
    ],
)
def test_a_schedule_that_cannot_work_is_refused_when_the_flow_is_defined(
    options: dict[str, object], says: str
) -> None:
    def job() -> None:
        pass

    with pytest.raises(UsageError, match=says):
        tether.flow(**options)(job)  # type: ignore[call-overload]


def test_a_scheduled_flow_must_be_callable_with_its_schedules_arguments() -> None:
    def needs_one(topic: str) -> None:
        pass

    with pytest.raises(UsageError, match=r"cannot be called with its schedule's arguments.*"
                       r"schedule_args="):  # fmt: skip
        tether.flow(schedule="* * * * *")(needs_one)
    with pytest.raises(UsageError, match="unexpected keyword argument 'subject'"):
        tether.flow(schedule="* * * * *", schedule_args=("x",), schedule_kwargs={"subject": "y"})(
            needs_one
        )
    with pytest.raises(UsageError, match="schedule_args is a list or tuple"):
        tether.flow(schedule="* * * * *", schedule_args="abc")(needs_one)


def test_a_ticks_execution_has_the_flows_deadline_from_its_first_start() -> None:
    scheduled = schedule_flows.bounded.scheduled
    assert scheduled is not None
    row = scheduled.make_row(3600.0, 10.0)
    assert row.deadline is None  # counted from the claim that first starts it
    assert _deadlines.after(row.options) == 90


# --- firing, in this process with a clock moved by hand -----------------------------------


def keys_of(flow: str) -> list[str]:
    store = store_for()
    rows = [store.get_execution(r.id) for r in tether.Client().list(flow=flow, limit=1000)]
    return sorted(r.dedup_key or "" for r in rows if r is not None)


def at_second(clock: FakeClock, seconds_into_minute: float) -> None:
    """Move the clock forward to the next time that is this many seconds into a minute."""
    clock.advance((seconds_into_minute - clock.now % 60) % 60 or 60)


def test_a_new_schedule_fires_no_tick_of_the_past(db_url: str, clock: FakeClock) -> None:
    firer = Firer([schedule_flows.report.scheduled])  # type: ignore[list-item]
    assert firer.fire(store_for(), clock()) == []
    [listed] = tether.Client().schedules()
    assert (listed.name, listed.spec, listed.paused) == ("report", "every 60s", False)
    assert listed.next_tick.timestamp() == (clock.now // 60 + 1) * 60


def test_each_tick_calls_the_flow_with_the_schedules_fixed_arguments(
    db_url: str, clock: FakeClock
) -> None:
    firer = Firer([schedule_flows.report.scheduled])  # type: ignore[list-item]
    firer.fire(store_for(), clock())
    at_second(clock, 0)
    [(_, row)] = firer.fire(store_for(), clock())
    assert row.dedup_key == _schedules.tick_key(clock.now)
    handle = tether.Client().resume(row.id)
    assert handle.result(timeout=30) == "dailydaily"


def test_catch_up_after_downtime_fires_only_the_latest_missed_tick(
    db_url: str, clock: FakeClock
) -> None:
    firer = Firer([schedule_flows.report.scheduled])  # type: ignore[list-item]
    firer.fire(store_for(), clock())
    at_second(clock, 10)
    clock.advance(10 * 60)  # ten ticks pass with no worker up
    fired = firer.fire(store_for(), clock())
    latest = clock.now // 60 * 60
    assert [row.dedup_key for _, row in fired] == [_schedules.tick_key(latest)]
    assert firer.fire(store_for(), clock()) == []  # nothing twice
    assert keys_of("report") == [_schedules.tick_key(latest)]


def test_catch_up_all_fires_every_missed_tick_once(db_url: str, clock: FakeClock) -> None:
    firer = Firer([schedule_flows.every_minute_all.scheduled])  # type: ignore[list-item]
    firer.fire(store_for(), clock())
    first = (clock.now // 60 + 1) * 60
    clock.advance(5 * 60)
    firer.fire(store_for(), clock())
    firer.fire(store_for(), clock())
    expected = [_schedules.tick_key(first + 60 * i) for i in range(5)]
    assert keys_of("every_minute_all") == expected


def test_catch_up_none_skips_missed_ticks_and_fires_the_next(db_url: str, clock: FakeClock) -> None:
    firer = Firer([schedule_flows.every_minute_none.scheduled])  # type: ignore[list-item]
    firer.fire(store_for(), clock())
    at_second(clock, 45)
    clock.advance(5 * 60)  # the latest tick is 45 s old: missed
    assert firer.fire(store_for(), clock()) == []
    at_second(clock, 1)  # a worker that is up sees the next one in time
    assert len(firer.fire(store_for(), clock())) == 1
    assert keys_of("every_minute_none") == [_schedules.tick_key(clock.now // 60 * 60)]


def test_two_firers_racing_for_a_tick_make_one_execution(db_url: str, clock: FakeClock) -> None:
    scheduled = schedule_flows.every_minute_all.scheduled
    assert scheduled is not None
    first, second = Firer([scheduled]), Firer([scheduled])
    first.fire(store_for(), clock())
    second.fire(store_for(), clock())
    at_second(clock, 0)
    # The second read the schedule before the first fired: its swap finds it moved.
    row = store_for().get_schedule(scheduled.name)
    assert row is not None
    made = [scheduled.make_row(clock.now, clock.now)]
    assert first.fire(store_for(), clock()) != []
    lost = store_for().fire_schedule(
        scheduled.name,
        expected_last=row.last_tick,
        last_tick=clock.now,
        next_tick=clock.now + 60,
        rows=made,
        now=clock.now,
    )
    assert lost is None
    assert second.fire(store_for(), clock()) == []
    assert keys_of(scheduled.name) == [_schedules.tick_key(clock.now)]


def test_an_execution_of_the_same_tick_is_never_inserted_twice(
    db_url: str, clock: FakeClock
) -> None:
    # Even a swap that succeeds (say, a spec changed back and forth) meets the tick's key.
    scheduled = schedule_flows.every_minute_all.scheduled
    assert scheduled is not None
    Firer([scheduled]).fire(store_for(), clock())
    store = store_for()
    row = store.get_schedule(scheduled.name)
    assert row is not None
    tick = row.last_tick + 60
    inserted = store.fire_schedule(
        scheduled.name, expected_last=row.last_tick, last_tick=tick, next_tick=tick + 60,
        rows=[scheduled.make_row(tick, clock.now)], now=clock.now,
    )  # fmt: skip
    again = store.fire_schedule(
        scheduled.name, expected_last=tick, last_tick=tick, next_tick=tick + 60,
        rows=[scheduled.make_row(tick, clock.now)], now=clock.now,
    )  # fmt: skip
    assert inserted is not None and len(inserted) == 1
    assert again == []
    assert keys_of(scheduled.name) == [_schedules.tick_key(tick)]


def test_ticks_passed_while_paused_are_not_fired_on_resume(db_url: str, clock: FakeClock) -> None:
    firer = Firer([schedule_flows.report.scheduled])  # type: ignore[list-item]
    firer.fire(store_for(), clock())
    client = tether.Client()
    assert client.pause_schedule("report").paused
    at_second(clock, 5)
    clock.advance(3 * 60)  # no worker ran while it was paused
    client.resume_schedule("report")
    assert firer.fire(store_for(), clock()) == []
    at_second(clock, 0)
    assert len(firer.fire(store_for(), clock())) == 1


def test_pausing_an_unknown_schedule_names_the_known_ones(db_url: str, clock: FakeClock) -> None:
    Firer([schedule_flows.report.scheduled]).fire(store_for(), clock())  # type: ignore[list-item]
    with pytest.raises(ScheduleNotFound, match=r"no schedule named 'reprot' \(schedules: report\)"):
        tether.Client().pause_schedule("reprot")
    failed = run_cli(db_url, "schedules", "resume", "reprot")
    assert failed.returncode == 3
    assert "schedules: report" in failed.stderr
    listed = run_cli(db_url, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [shown] = json.loads(listed.stdout)
    assert (shown["name"], shown["spec"], shown["paused"]) == ("report", "every 60s", False)
    assert (
        shown["next_tick"]
        == dt.datetime.fromtimestamp((clock.now // 60 + 1) * 60, dt.UTC).isoformat()
    )


# --- a fleet of real worker processes -----------------------------------------------------


class Workers(ProcessPool):
    def __init__(self, db_url: str, effects: Path) -> None:
        super().__init__()
        self.db_url = db_url
        self.effects = effects

    def start(self, *, cli: bool = False) -> None:
        """A `tether.Worker` in a process of its own, or with `cli` a `tether worker`."""
        argv = ["-m", "tether", "worker", "--create", "--import", "schedule_flows"]
        proc = spawn_python(
            argv if cli else ["-c", WORKER], self.db_url, stderr=subprocess.DEVNULL,
            SIDE_EFFECTS=str(self.effects),
        )  # fmt: skip
        self.add(proc)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(db_url, tmp_path / "effects.log")
    yield pool
    pool.kill_all()


def ran(effects: Path) -> Counter[str]:
    """How many times each step really ran (by `<execution id>/<branch>`)."""
    if not effects.exists():
        return Counter()
    return Counter(line.split()[1] for line in effects.read_text().splitlines())


def succeeded(flow: str) -> list[tether.ExecutionRecord]:
    return tether.Client().list(status=Status.SUCCEEDED, flow=flow, limit=1000)


def test_an_interval_schedule_runs_every_tick_once_across_two_workers(
    workers: Workers,
) -> None:
    workers.start()
    workers.start(cli=True)
    retry_until(lambda: len(succeeded(EVERY_SECOND)) >= 4, timeout=60, what="four ticks")
    assert all(proc.poll() is None for proc in workers.procs)  # both served all along
    workers.kill_all()
    executions = tether.Client().list(flow=EVERY_SECOND, limit=1000)
    keys = keys_of(EVERY_SECOND)
    assert len(keys) == len(set(keys)) == len(executions)  # one execution per tick
    ticks = [dt.datetime.fromisoformat(k.removeprefix("tick:")) for k in keys]
    assert all(t.microsecond == 0 for t in ticks)  # whole seconds: the interval's ticks
    runs = ran(workers.effects)
    done = {e.id for e in executions if e.status is Status.SUCCEEDED}
    assert {f"{e}/{b}" for e in done for b in "ab"} <= set(runs)
    assert set(runs.values()) == {1}, runs  # no tick's step ran twice


def schedule(name: str) -> tether.ScheduleRecord:
    [found] = [s for s in tether.Client().schedules() if s.name == name]
    return found


def test_a_paused_schedule_fires_nothing_until_resumed(workers: Workers, db_url: str) -> None:
    workers.start()
    retry_until(lambda: succeeded(EVERY_SECOND), timeout=60, what="a first tick")
    paused = run_cli(db_url, "schedules", "pause", EVERY_SECOND)
    assert paused.returncode == 0, paused.stderr
    # From the pause on, no swap that fires can succeed: this count is final while paused.
    count = len(tether.Client().list(flow=EVERY_SECOND, limit=1000))
    at_pause = schedule(EVERY_SECOND).last_tick

    def two_ticks_passed() -> bool:
        return schedule(EVERY_SECOND).last_tick >= at_pause + dt.timedelta(seconds=2)

    retry_until(two_ticks_passed, timeout=60, what="two ticks passed while paused")
    assert len(tether.Client().list(flow=EVERY_SECOND, limit=1000)) == count
    listed = run_cli(db_url, "schedules", "list")
    assert EVERY_SECOND in listed.stdout and "paused" in listed.stdout
    resumed = run_cli(db_url, "schedules", "resume", EVERY_SECOND)
    assert resumed.returncode == 0, resumed.stderr
    retry_until(
        lambda: len(tether.Client().list(flow=EVERY_SECOND, limit=1000)) > count,
        timeout=60,
        what="a tick after resume",
    )


def test_a_launched_application_fires_and_runs_its_schedules(workers: Workers) -> None:
    # No worker: the application's own executor (tether.launch()) fires the ticks and runs
    # them, since a queued execution nobody parked would be left to workers.
    app = spawn_python(
        ["-c", APP],
        workers.db_url, stderr=subprocess.DEVNULL, SIDE_EFFECTS=str(workers.effects),
    )  # fmt: skip
    workers.procs.append(app)
    retry_until(lambda: len(succeeded(EVERY_SECOND)) >= 2, timeout=60, what="two ticks run")
    assert set(ran(workers.effects).values()) == {1}


def test_ticks_keep_coming_once_each_after_a_worker_is_killed(workers: Workers) -> None:
    workers.start()
    workers.start()
    retry_until(lambda: len(succeeded(EVERY_SECOND)) >= 2, timeout=60, what="two ticks")
    killed = workers.procs[0]
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    after_kill = len(tether.Client().list(flow=EVERY_SECOND, limit=1000))
    # The survivor fires the next ticks, and takes over what the killed one held (its pid
    # is gone on this host), so every execution ends.
    retry_until(
        lambda: len(succeeded(EVERY_SECOND)) >= after_kill + 2,
        timeout=60,
        what="two more ticks after the kill",
    )
    keys = keys_of(EVERY_SECOND)
    assert len(keys) == len(set(keys)) == len(tether.Client().list(flow=EVERY_SECOND, limit=1000))
    unfinished = {e.id for e in tether.Client().list(flow=EVERY_SECOND, limit=1000)} - {
        e.id for e in succeeded(EVERY_SECOND)
    }
    retry_until(
        lambda: all(tether.Client().get(i).status is Status.SUCCEEDED for i in unfinished),
        timeout=60,
        what="the killed worker's executions to be taken over and finish",
    )
