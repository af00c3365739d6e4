"""When the scheduler is woken: only when it must look before it would anyway.

A created task wakes it if its phone is free and online (it must start at its start
time) or if it expires before the scheduler's next look; a task for a phone that is
offline or busy waits for the wake that phone's coming online or freeing gives. These
tests run the scheduler's own thread (no adb: phones are marked online by hand) and
wait on conditions with deadlines.
"""
import threading
import time
from pathlib import Path

import pytest

import tikmatrix_lite as tml
from farm import FakeClock, wait_until

SCRIPTS = Path(__file__).resolve().parent / "fixtures" / "policy_scripts"


class Rounds(tml.WakeLoop):
    """A loop whose rounds are counted and say when the next is due (``plan``); a round
    holds while ``hold`` is set, until ``release`` is."""

    def __init__(self, plan):
        super().__init__("rounds", time.time)
        self.plan, self.count = plan, 0
        self.hold, self.release, self.holding = False, threading.Event(), threading.Event()

    def round(self):
        self.count += 1
        if self.hold:
            self.holding.set()
            assert self.release.wait(10)
        return self.plan

    def settled(self, count):
        """Waits until the loop did ``count`` rounds and sleeps; then its state, under its
        lock: (rounds, until when it sleeps, woken since)."""
        wait_until(lambda: self.count >= count and self._waits_until is not False, 10,
                   f"{count} rounds, then a wait")
        with self._cond:
            return self.count, self._waits_until, self._dirty


@pytest.fixture
def loop():
    loops = []

    def make(plan):
        loops.append(Rounds(plan))
        loops[-1]._thread.start()
        return loops[-1]
    yield make
    for one in loops:
        one.release.set()
        one.stop()


def test_wake_by_a_time_after_the_planned_wake_does_not_wake(loop):
    planned = time.time() + 3600
    rounds = loop(planned)
    assert rounds.settled(1) == (1, planned, False)
    rounds.wake_by(planned + 1)
    rounds.wake_by(planned)
    assert rounds.settled(1) == (1, planned, False)   # no round was asked for
    rounds.wake_by(planned - 1)
    assert rounds.settled(2) == (2, planned, False)


def test_wake_by_wakes_a_loop_that_waits_for_events_only(loop):
    rounds = loop(None)
    assert rounds.settled(1) == (1, None, False)
    rounds.wake_by(time.time() + 10 ** 9)
    assert rounds.settled(2)[0] == 2


def test_wake_by_during_a_round_asks_for_another(loop):
    """The round under way may have read the store before the caller's commit."""
    planned = time.time() + 3600
    rounds = loop(planned)
    rounds.settled(1)
    rounds.hold = True
    rounds.wake()
    assert rounds.holding.wait(10)
    rounds.wake_by(planned + 3600)                    # later than any wait: still a round
    rounds.hold = False
    rounds.release.set()
    assert rounds.settled(3)[0] == 3


@pytest.fixture
def lite(tmp_path):
    """A server whose scheduler thread runs, without adb (phones marked by hand)."""
    clock = FakeClock()
    config = tml.Config(db=tmp_path / "w.db", scripts=SCRIPTS, adb_servers=["127.0.0.1:1"])
    lite = tml.Server(config, clock=clock)
    lite.clock = clock
    lite.runner.heartbeat = 3600                     # no adb to ping
    lite.store.upsert_device("p1", state="offline")
    rounds = []
    real_round = lite.scheduler.round
    lite.scheduler.round = lambda: (rounds.append(1), real_round())[1]
    lite.rounds = rounds
    lite.scheduler.start()
    yield lite
    lite.close()


def settled(lite, count):
    """(rounds, until when the scheduler sleeps, woken since) once it did ``count``
    rounds and sleeps."""
    scheduler = lite.scheduler
    wait_until(lambda: len(lite.rounds) >= count and scheduler._waits_until is not False,
               10, f"{count} scheduler rounds, then a wait")
    with scheduler._cond:
        return len(lite.rounds), scheduler._waits_until, scheduler._dirty


def create(lite, **fields):
    return lite.tasks.create({"serials": ["p1"], "script_name": "word",
                              "script_config": {"word": "hi"}, **fields})[0]


def go_online(lite, serial):
    with lite.devices._lock:
        lite.devices._state[serial] = ("device", lite.devices.links[0])
    lite.devices.on_online(serial)


def test_a_task_for_an_offline_phone_waits_for_the_phone_without_a_round(lite):
    assert settled(lite, 1) == (1, None, False)
    task_id = create(lite)
    assert settled(lite, 1) == (1, None, False)       # the phone cannot take it: no round
    go_online(lite, "p1")                            # wakes the scheduler: it starts
    assert wait_until(lambda: lite.store.get_task(task_id)["status"] == tml.COMPLETED, 10,
                      "the task completed")


def test_a_task_for_a_free_phone_wakes_the_scheduler(lite):
    go_online(lite, "p1")
    settled(lite, 2)
    task_id = create(lite)
    assert wait_until(lambda: lite.store.get_task(task_id)["status"] == tml.COMPLETED, 10,
                      "the task completed")


def test_a_task_for_a_busy_phone_starts_when_the_phone_frees(lite):
    go_online(lite, "p1")
    first = create(lite, script_name="wait", script_config={})
    wait_until(lambda: lite.runner.busy("p1"), 10, "p1 busy")
    rounds = settled(lite, 2)[0]
    second = create(lite)
    assert settled(lite, rounds)[0] == rounds          # busy: no round for it
    lite.tasks.stop(first)                           # the phone frees: the second starts
    assert wait_until(lambda: lite.store.get_task(second)["status"] == tml.COMPLETED, 10,
                      "the second task completed")


def test_an_expiry_sooner_than_the_planned_wake_replans_it(lite):
    now = lite.clock.now
    later = create(lite, expire_in=60)
    assert settled(lite, 2)[1:] == (now + 3600, False)
    sooner = create(lite, expire_in=5)                 # sooner than the planned wake
    assert settled(lite, 3)[1:] == (now + 300, False)
    rounds = len(lite.rounds)
    create(lite, expire_in=30)                         # after it: no round
    assert settled(lite, rounds) == (rounds, now + 300, False)
    lite.clock.advance(301)
    lite.wake()
    assert wait_until(lambda: lite.store.get_task(sooner)["error"] == "expired", 10,
                      "the sooner task expired")
    assert lite.store.get_task(later)["status"] == tml.PENDING


def test_a_task_expires_on_time_on_the_real_clock(tmp_path):
    """No hand on the clock: the scheduler's own wait ends at the expiry."""
    config = tml.Config(db=tmp_path / "r.db", scripts=SCRIPTS, adb_servers=["127.0.0.1:1"])
    lite = tml.Server(config)
    try:
        lite.store.upsert_device("p1", state="offline")
        lite.scheduler.start()
        expire_at = time.time() + 0.3
        tasks = [tml.NewTask("p1", "word", {"word": "hi"}, expire_at=expire_at)]
        task_id = lite.store.create_tasks(tasks)[0]
        lite.wake_for_new(tasks)
        row = wait_until(lambda: (lambda r: r["status"] == tml.FAILED and r)(
            lite.store.get_task(task_id)), 10, "the task expired")
        assert row["error"] == "expired" and row["end_time"] >= expire_at
    finally:
        lite.close()
