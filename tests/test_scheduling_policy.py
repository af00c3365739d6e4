"""The scheduling rules, run synchronously: no adb, no threads to wait for.

``Scheduler.run_next_due`` runs the task that is due first to its end in the test's own
thread (as huey's tests do), with an injected clock; the phones are marked online by
hand, and the scripts never touch them. The end-to-end tests with phones are in
test_scheduler.py.
"""
from pathlib import Path

import pytest

import tikmatrix_lite as tml
from farm import FakeClock

SCRIPTS = Path(__file__).resolve().parent / "fixtures" / "policy_scripts"


@pytest.fixture
def lite(tmp_path):
    clock = FakeClock()
    config = tml.Config(db=tmp_path / "p.db", scripts=SCRIPTS, adb_servers=["127.0.0.1:1"])
    lite = tml.Server(config, clock=clock)           # never started: no adb, no threads
    lite.clock = clock
    yield lite
    lite.close()


def online(lite, *serials):
    for serial in serials:
        lite.store.upsert_device(serial, state="device")
        with lite.devices._lock:
            lite.devices._state[serial] = ("device", lite.devices.links[0])


def task(lite, serial, word, **fields):
    return lite.store.create_tasks([tml.NewTask(
        serial=serial, script_name="word", script_config={"word": word}, **fields)])[0]


def run_all(lite):
    ran = []
    while True:
        task_id = lite.scheduler.run_next_due()
        if task_id is None:
            return ran
        ran.append(task_id)


def said(lite, ids):
    return [lite.store.get_task(i)["result"] for i in ids]


def test_priority_then_start_time_then_id(lite):
    online(lite, "p1")
    now = lite.clock.now
    low_a = task(lite, "p1", "low-a", start_time=now - 5)
    high = task(lite, "p1", "high", priority=50)
    low_b = task(lite, "p1", "low-b")
    mid = task(lite, "p1", "mid", priority=10)
    assert run_all(lite) == [high, mid, low_a, low_b]
    assert all(lite.store.get_task(i)["status"] == tml.COMPLETED for i in (high, low_b))


def test_start_time_waits_for_the_clock(lite):
    online(lite, "p1")
    later = task(lite, "p1", "later", priority=99, start_time=lite.clock.now + 3600)
    now = task(lite, "p1", "now")
    assert run_all(lite) == [now]
    lite.clock.advance(3599)
    assert lite.scheduler.run_next_due() is None           # one second early
    lite.clock.advance(1)
    assert lite.scheduler.run_next_due() == later


def test_rest_interval_between_tasks_of_a_phone(lite):
    online(lite, "p1")
    first = task(lite, "p1", "one", rest_seconds=120)
    second = task(lite, "p1", "two", rest_seconds=120)
    lite.store.upsert_device("p1")                          # never ran: no rest needed
    assert lite.scheduler.run_next_due() == first
    assert lite.scheduler.run_next_due() is None            # resting 2 minutes
    assert lite.scheduler.tick()[1] == pytest.approx(lite.clock.now + 120)
    lite.clock.advance(120)
    assert lite.scheduler.run_next_due() == second


def test_offline_phone_keeps_its_tasks_and_others_run(lite):
    online(lite, "p2")
    lite.store.upsert_device("p1", state="offline")
    waiting = task(lite, "p1", "patient")
    other = task(lite, "p2", "go")
    assert run_all(lite) == [other]
    assert lite.store.get_task(waiting)["status"] == tml.PENDING
    online(lite, "p1")
    assert run_all(lite) == [waiting]


def test_auto_retry_comes_back_after_a_random_wait(lite):
    online(lite, "p1")
    [task_id] = lite.store.create_tasks([tml.NewTask(
        serial="p1", script_name="fail", script_config={}, auto_retry=True,
        max_retry_count=2)])
    assert lite.scheduler.run_next_due() == task_id
    row = lite.store.get_task(task_id)
    assert row["status"] == tml.PENDING and row["retry_count"] == 1
    assert 5 <= row["start_time"] - lite.clock.now <= 60
    assert lite.scheduler.run_next_due() is None
    lite.clock.advance(61)
    assert lite.scheduler.run_next_due() == task_id
    lite.clock.advance(61)
    assert lite.scheduler.run_next_due() == task_id
    row = lite.store.get_task(task_id)
    assert row["status"] == tml.FAILED and row["retry_count"] == 2
    assert row["error"] == "tap: the app crashed"


def test_max_running_holds_back_the_next_task(lite):
    online(lite, "p1", "p2")
    lite.scheduler.max_running = 1
    first, second = task(lite, "p1", "a"), task(lite, "p2", "b")
    with lite.runner._lock:                                  # p1's task is running
        lite.runner._active["p1"] = tml.RunningTask(first, "p1", tml.CancelToken())
    assert lite.scheduler.run_next_due() is None
    del lite.runner._active["p1"]
    assert lite.scheduler.run_next_due() in (first, second)
