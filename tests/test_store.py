"""The Store on its own, synchronously: schema, lifecycle compare-and-sets, concurrency."""
from __future__ import annotations

import collections
import datetime
import json
import random
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "store.db"


@pytest.fixture
def open_store(db_path, clock):
    """open_store(path=db_path, clock=clock) -> a Store closed at the end of the test."""
    opened = []

    def make(path=None, clock_=None):
        store = tml.Store(path or db_path, clock_ or clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def st(open_store):
    return open_store()


def new(serial="d1", **kw):
    kw.setdefault("script_name", "echo")
    kw.setdefault("script_config", {"text": "x"})
    return tml.NewTask(serial=serial, **kw)


def rows(store):
    return [dict(r) for r in store.query("SELECT * FROM tasks ORDER BY id")]


class FixedRng:
    """Stands in for random: uniform() returns a chosen value and remembers its bounds."""

    def __init__(self, value):
        self.value = value
        self.calls = []

    def uniform(self, low, high):
        self.calls.append((low, high))
        return self.value


# ---------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------

def test_migrations_from_empty_file(st, db_path):
    assert st.schema_version() == len(tml.MIGRATIONS)
    raw = sqlite3.connect(str(db_path))
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(tml.MIGRATIONS)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tasks", "task_log", "devices", "accounts"} <= tables
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master "
                                             "WHERE type='index'")}
        assert "tasks_one_running_per_device" in indexes
    finally:
        raw.close()


def test_wal_mode(st, db_path):
    assert st.query_one("PRAGMA journal_mode")[0].lower() == "wal"
    raw = sqlite3.connect(str(db_path))
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        raw.close()
    assert st.query_one("PRAGMA busy_timeout")[0] > 0


def test_reopening_keeps_data(open_store, db_path, clock):
    first = open_store()
    ids = first.create_tasks([new("d1"), new("d2", priority=3)])
    first.upsert_device("d1", state="device", model="Pixel")
    assert first.save_account("alice", "d1", "tiktok", "com.zhiliaoapp.musically", True, True)
    first.add_log(ids[0], "hello")
    before = rows(first)
    first.close()
    second = open_store()
    assert second.schema_version() == len(tml.MIGRATIONS)
    assert rows(second) == before
    assert second.get_device("d1")["model"] == "Pixel"
    assert second.get_account("alice")["serial"] == "d1"
    assert [r["line"] for r in second.task_log(ids[0])] == ["hello"]
    assert second.migrate() == len(tml.MIGRATIONS)           # idempotent
    assert rows(second) == before
    assert second.create_tasks([new()]) == [ids[-1] + 1]


def test_newer_schema_is_a_config_error(db_path, clock):
    raw = sqlite3.connect(str(db_path))
    raw.execute("CREATE TABLE future (x)")
    raw.execute(f"PRAGMA user_version={len(tml.MIGRATIONS) + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(tml.ConfigError, match="newer"):
        tml.Store(db_path, clock)
    raw = sqlite3.connect(str(db_path))
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(tml.MIGRATIONS) + 1
        assert raw.execute("SELECT name FROM sqlite_master WHERE name='tasks'").fetchone() \
            is None
    finally:
        raw.close()


def test_lite_refuses_a_newer_database(db_path, make_config):
    raw = sqlite3.connect(str(db_path))
    raw.execute(f"PRAGMA user_version={len(tml.MIGRATIONS) + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(tml.ConfigError, match="schema version"):
        tml.Server(make_config(db=db_path), with_devices=False)


def test_create_tasks_is_all_or_nothing(st):
    st.create_tasks([new()])
    with pytest.raises(sqlite3.IntegrityError):
        st.create_tasks([new("d1"), new("d2"), new(None)])      # third breaks NOT NULL
    assert len(rows(st)) == 1
    ids = st.create_tasks([new("d1"), new("d2")])
    assert len(rows(st)) == 3
    assert ids == [2, 3]                          # the failed batch used no ids


def test_created_tasks_take_the_clock(st, clock):
    [task_id] = st.create_tasks([new()])
    row = st.get_task(task_id)
    assert row["created_at"] == T0 and row["start_time"] == T0 and row["status"] == 0
    [later] = st.create_tasks([new(start_time=T0 + 600)])
    assert st.get_task(later)["start_time"] == T0 + 600


# ---------------------------------------------------------------------------
# claim_next
# ---------------------------------------------------------------------------

def test_claim_order_priority_then_start_time_then_id(st, clock):
    ids = st.create_tasks([
        new(priority=0, start_time=T0 - 10),      # 0
        new(priority=5, start_time=T0 - 5),       # 1
        new(priority=5, start_time=T0 - 20),      # 2
        new(priority=5, start_time=T0 - 20),      # 3: same as 2, higher id
        new(priority=-1, start_time=T0 - 100),    # 4
        new("other", priority=100, start_time=T0 - 100),
    ])
    order = []
    for _ in range(5):
        row = st.claim_next("d1", T0)
        assert row is not None and row["status"] == 1 and row["started_at"] == T0
        order.append(row["id"])
        assert st.finish(row["id"], ok=True) == "completed"
    assert order == [ids[2], ids[3], ids[1], ids[0], ids[4]]
    assert st.claim_next("d1", T0) is None
    assert st.get_task(ids[5])["status"] == 0                 # another device's task


def test_future_start_time_is_not_claimed(st):
    [task_id] = st.create_tasks([new(start_time=T0 + 60)])
    assert st.claim_next("d1", T0) is None
    assert st.claim_next("d1", T0 + 59.9) is None
    assert st.due_times() == {"d1": T0 + 60}
    assert st.claim_next("d1", T0 + 60)["id"] == task_id


def test_rest_interval_since_the_previous_task(st, clock):
    st.upsert_device("d1", state="device")
    [first] = st.create_tasks([new(start_time=T0 - 1000)])
    assert st.claim_next("d1", T0)["id"] == first
    clock.now = T0 + 10
    assert st.finish(first, ok=True) == "completed"
    assert st.get_device("d1")["last_task_end"] == T0 + 10
    [second] = st.create_tasks([new(start_time=T0 - 1000, rest_seconds=120)])
    assert st.due_times() == {"d1": T0 + 130}
    assert st.claim_next("d1", T0 + 129) is None
    assert st.get_task(second)["status"] == 0
    assert st.claim_next("d1", T0 + 130)["id"] == second


def test_rest_is_per_task_and_a_rested_task_may_go_first(st, clock):
    st.upsert_device("d1", state="device")
    [warm] = st.create_tasks([new()])
    st.claim_next("d1", T0)
    st.finish(warm, ok=True)                                   # last_task_end = T0
    [resting, ready] = st.create_tasks([new(priority=9, rest_seconds=300),
                                        new(priority=0, rest_seconds=0)])
    assert st.claim_next("d1", T0 + 1)["id"] == ready


def test_one_running_task_per_device(st):
    ids = st.create_tasks([new("d1"), new("d1"), new("d2")])
    assert st.claim_next("d1", T0)["id"] == ids[0]
    assert st.claim_next("d1", T0) is None                    # the index refuses a second
    assert st.get_task(ids[1])["status"] == 0
    assert st.claim_next("d2", T0)["id"] == ids[2]            # other devices are free
    with pytest.raises(sqlite3.IntegrityError):
        with st.write() as conn:
            conn.execute("UPDATE tasks SET status=1 WHERE id=?", (ids[1],))
    assert st.running_count() == 2
    st.finish(ids[0], ok=False, error="boom")
    assert st.claim_next("d1", T0 + 1)["id"] == ids[1]


def test_claim_for_device_without_devices_row(st):
    [task_id] = st.create_tasks([new("ghost")])
    assert st.get_device("ghost") is None
    assert st.claim_next("ghost", T0)["id"] == task_id


# ---------------------------------------------------------------------------
# compare-and-set lifecycle
# ---------------------------------------------------------------------------

def test_finish_completed_and_gone(st, clock):
    st.upsert_device("d1")
    [task_id, pending] = st.create_tasks([new(), new("d2")])
    st.claim_next("d1", T0)
    clock.now = T0 + 5
    assert st.finish(task_id, ok=True, result={"n": 1}) == "completed"
    row = st.get_task(task_id)
    assert (row["status"], row["progress"], row["end_time"]) == (2, 100, T0 + 5)
    assert json.loads(row["result"]) == {"n": 1}
    assert st.finish(task_id, ok=False, error="late") == "gone"
    assert st.get_task(task_id)["status"] == 2 and st.get_task(task_id)["error"] == ""
    assert st.finish(pending, ok=True) == "gone"
    assert st.get_task(pending)["status"] == 0
    assert st.finish(999, ok=True) == "gone"


def test_finish_failed(st):
    [task_id] = st.create_tasks([new()])
    st.claim_next("d1", T0)
    assert st.finish(task_id, ok=False, error="element not found") == "failed"
    row = st.get_task(task_id)
    assert (row["status"], row["error"], row["retry_count"]) == (3, "element not found", 0)
    assert st.finish(task_id, ok=False, error="again") == "gone"


def test_cancel_pending_twice(st):
    [task_id, running] = st.create_tasks([new("d1"), new("d2")])
    assert st.cancel_pending(task_id) is True
    assert st.cancel_pending(task_id) is False
    row = st.get_task(task_id)
    assert (row["status"], row["error"]) == (3, tml.STOPPED_BY_USER)
    st.claim_next("d2", T0)
    assert st.cancel_pending(running) is False
    assert st.get_task(running)["status"] == 1
    assert st.cancel_pending(12345) is False


def test_retry_limits(st):
    [task_id] = st.create_tasks([new(max_retry_count=2)])
    assert st.retry(task_id) is False                         # pending: not failed
    for expected in (1, 2):
        st.claim_next("d1", T0)
        assert st.finish(task_id, ok=False, error="boom") == "failed"
        assert st.retry(task_id) is True
        row = st.get_task(task_id)
        assert (row["status"], row["retry_count"], row["error"]) == (0, expected, "")
    st.claim_next("d1", T0)
    st.finish(task_id, ok=False, error="boom")
    assert st.retry(task_id) is False                         # 2/2
    assert st.get_task(task_id)["status"] == 3
    assert st.retry_all() == []


def test_retry_keeps_a_start_time_that_is_still_ahead(st):
    [task_id] = st.create_tasks([new(start_time=T0 + 3600)])
    assert st.cancel_pending(task_id)                         # stopped before it ran
    assert st.retry(task_id)
    assert st.get_task(task_id)["start_time"] == T0 + 3600
    assert st.claim_next("d1", T0) is None                    # still waits for its time
    assert st.claim_next("d1", T0 + 3600)["id"] == task_id


def test_a_failed_commit_rolls_back_and_later_writes_commit(st):
    """A COMMIT that fails (here a deferred foreign-key check; on a Pi, a full SD card)
    must not leave the writer inside a transaction that later writes would join."""
    with pytest.raises(sqlite3.IntegrityError):
        with st.write() as conn:
            conn.execute("PRAGMA defer_foreign_keys=ON")
            conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (999, 0, 'x')")
    [task_id] = st.create_tasks([new()])
    assert st.get_task(task_id) is not None                   # seen by another connection
    assert st.query("SELECT COUNT(*) FROM task_log")[0][0] == 0


def test_retry_all(st):
    ids = st.create_tasks([new(f"d{i}") for i in range(4)])
    for i, task_id in enumerate(ids):
        st.claim_next(f"d{i}", T0)
    st.finish(ids[0], ok=False, error="a")
    st.finish(ids[1], ok=False, error="b")
    st.finish(ids[2], ok=True)
    with st.write() as conn:
        conn.execute("UPDATE tasks SET retry_count=max_retry_count WHERE id=?", (ids[1],))
    assert st.retry_all() == [ids[0]]
    assert [st.get_task(i)["status"] for i in ids] == [0, 3, 2, 1]


def test_auto_retry_waits_5_to_60_seconds_until_the_limit(st, clock):
    [task_id] = st.create_tasks([new(auto_retry=True, max_retry_count=2)])
    rng = FixedRng(17.0)
    for attempt in (1, 2):
        row = st.claim_next("d1", clock.now)
        assert row["id"] == task_id
        clock.advance(3)
        assert st.finish(task_id, ok=False, error="flaky", rng=rng) == "retrying"
        assert rng.calls[-1] == (5, 60)
        row = st.get_task(task_id)
        assert (row["status"], row["retry_count"], row["error"]) == (0, attempt, "")
        assert row["start_time"] == clock.now + 17.0
        assert st.claim_next("d1", clock.now + 16.9) is None
        clock.advance(17)
    assert st.claim_next("d1", clock.now)["id"] == task_id
    assert st.finish(task_id, ok=False, error="flaky for good", rng=rng) == "failed"
    row = st.get_task(task_id)
    assert (row["status"], row["retry_count"], row["error"]) == (3, 2, "flaky for good")
    assert len(rng.calls) == 2
    lines = [r["line"] for r in st.task_log(task_id)]
    assert len([l for l in lines if "auto-retry" in l]) == 2


def test_auto_retry_with_a_real_rng_stays_in_bounds(st, clock):
    ids = st.create_tasks([new(f"d{i}", auto_retry=True) for i in range(20)])
    rng = random.Random(1234)
    for i, task_id in enumerate(ids):
        st.claim_next(f"d{i}", T0)
        assert st.finish(task_id, ok=False, error="x", rng=rng) == "retrying"
        delay = st.get_task(task_id)["start_time"] - T0
        assert 5 <= delay <= 60


def test_stop_by_user_is_never_auto_retried(st):
    [task_id] = st.create_tasks([new(auto_retry=True, max_retry_count=10)])
    st.claim_next("d1", T0)
    rng = FixedRng(10)
    assert st.finish(task_id, ok=False, error=tml.STOPPED_BY_USER, allow_auto_retry=False,
                     rng=rng) == "failed"
    row = st.get_task(task_id)
    assert (row["status"], row["error"], row["retry_count"]) == (3, tml.STOPPED_BY_USER, 0)
    assert rng.calls == []


def test_no_auto_retry_unless_asked(st):
    [task_id] = st.create_tasks([new(auto_retry=False)])
    st.claim_next("d1", T0)
    assert st.finish(task_id, ok=False, error="x", rng=FixedRng(5)) == "failed"


def test_recover_interrupted_changes_nothing_else(st, clock):
    for serial in ("d1", "d2", "d3"):
        st.upsert_device(serial, state="device")
    ids = st.create_tasks([new("d1"), new("d2"), new("d3"), new("d1"), new("d3"),
                           new("d2", start_time=T0 + 999)])
    st.claim_next("d1", T0)                                   # ids[0] running
    st.claim_next("d2", T0)                                   # ids[1] running
    st.claim_next("d3", T0)
    st.finish(ids[2], ok=True, result=[1])                    # completed
    st.claim_next("d3", T0 + 1)
    st.finish(ids[4], ok=False, error="boom")                 # failed
    st.set_progress(ids[0], 40, "halfway")       # in memory: the recovery's write keeps it
    before = {r["id"]: dict(st.get_task(r["id"])) for r in rows(st)}
    assert before[ids[0]]["progress"] == 40
    devices_before = [dict(r) for r in st.query("SELECT * FROM devices ORDER BY serial")]
    clock.advance(3600)
    assert sorted(st.recover_interrupted()) == [ids[0], ids[1]]
    after = {r["id"]: r for r in rows(st)}
    assert set(after) == set(before)
    for task_id in (ids[0], ids[1]):
        changed = {k for k in before[task_id] if before[task_id][k] != after[task_id][k]}
        # rev: the revision every update moves (kept pages of tasks see it changed)
        assert changed == {"status", "end_time", "error", "message", "rev"}
        assert after[task_id]["message"] == "failed: " + tml.INTERRUPTED   # how it ended
        assert after[task_id]["status"] == 3
        assert after[task_id]["error"] == tml.INTERRUPTED
        assert after[task_id]["end_time"] == T0 + 3600
    for task_id in (ids[2], ids[3], ids[4], ids[5]):
        assert after[task_id] == before[task_id]
    assert [dict(r) for r in st.query("SELECT * FROM devices ORDER BY serial")] == \
        devices_before
    assert st.recover_interrupted() == []
    assert st.retry(ids[0]) is True                           # retryable


def test_clear_deletes_only_the_given_finished_states(st):
    ids = st.create_tasks([new(f"d{i}") for i in range(5)])
    for i in range(1, 5):
        st.claim_next(f"d{i}", T0)
    st.finish(ids[2], ok=True)
    st.finish(ids[3], ok=False, error="x")
    st.finish(ids[4], ok=True)
    st.add_log(ids[2], "a line")
    assert sorted(st.clear([3])) == [ids[3]]
    assert sorted(r["id"] for r in rows(st)) == [ids[0], ids[1], ids[2], ids[4]]
    assert sorted(st.clear([2, 3])) == [ids[2], ids[4]]
    assert [(r["id"], r["status"]) for r in rows(st)] == [(ids[0], 0), (ids[1], 1)]
    assert st.task_log(ids[2]) == []                          # the log goes with the task
    assert st.clear([2, 3]) == []


def test_stats_and_list_filters(st, clock):
    ids = st.create_tasks([new("d1"), new("d2", script_name="follow", username="alice")])
    clock.advance(10)
    ids += st.create_tasks([new("d1", source="ui")])
    st.claim_next("d2", T0)
    assert st.stats() == {"total": 3, "pending": 2, "running": 1, "completed": 0,
                          "failed": 0}
    found, total = st.list_tasks(serial="d1")
    assert [r["id"] for r in found] == [ids[2], ids[0]] and total == 2
    found, total = st.list_tasks(created_from=T0 + 5)
    assert [r["id"] for r in found] == [ids[2]]
    found, total = st.list_tasks(statuses=[0], page=2, page_size=1)
    assert [r["id"] for r in found] == [ids[0]] and total == 2
    assert st.list_tasks(username="alice")[1] == 1
    assert st.list_tasks(source="ui")[1] == 1


def test_accounts_are_unique_without_case(st):
    assert st.save_account("Alice", "d1", "tiktok", "com.zhiliaoapp.musically", True, True)
    assert not st.save_account("alice", "d2", "tiktok", "com.zhiliaoapp.musically", True,
                               True)
    assert st.get_account("ALICE")["serial"] == "d1"
    assert not st.save_account("nobody", "d1", "tiktok", "x.y", True, False)
    with pytest.raises(sqlite3.IntegrityError):
        with st.write() as conn:
            conn.execute("INSERT INTO accounts (username, serial, platform, package,"
                         " created_at) VALUES ('x', 'd1', 'facebook', 'a.b', 0)")


def test_upsert_device_refuses_unknown_fields(st):
    with pytest.raises(ValueError):
        st.upsert_device("d1", colour="red")
    assert st.get_device("d1") is None


# ---------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------

def run_threads(count, target):
    errors = []
    barrier = threading.Barrier(count)

    def wrapped(index):
        try:
            barrier.wait(timeout=10)
            target(index)
        except BaseException as exc:          # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    return errors


def test_eight_threads_create_and_finish_without_locking_errors(db_path):
    store = tml.Store(db_path)                    # the real clock
    per_thread = 30
    try:
        def work(index):
            serial = f"dev{index}"
            store.upsert_device(serial, state="device")
            for n in range(per_thread):
                [task_id] = store.create_tasks([new(serial, script_config={"n": n})])
                row = store.claim_next(serial, store.clock() + 1)
                assert row is not None and row["id"] == task_id
                store.set_progress(task_id, 50, "half")
                store.add_log(task_id, f"line {n}")
                assert store.finish(task_id, ok=n % 2 == 0, error="odd") in (
                    "completed", "failed")
                store.list_tasks(serial=serial)          # readers beside the writers
                store.stats()

        errors = run_threads(8, work)
        assert errors == []
        stats = store.stats()
        assert stats["total"] == 8 * per_thread
        assert stats["completed"] == 8 * per_thread // 2
        assert stats["failed"] == 8 * per_thread // 2
        assert stats["pending"] == stats["running"] == 0
        assert store.query_one("SELECT COUNT(*) FROM task_log")[0] == 8 * per_thread
    finally:
        store.close()


class _Line(collections.deque):
    """Store._creates that sets ``full`` once ``size`` creates wait in it."""

    def __init__(self, size):
        super().__init__()
        self.size, self.full = size, threading.Event()

    def append(self, job):
        super().append(job)
        if len(self) >= self.size:
            self.full.set()


def creates_in_line(st, tasks_of):
    """create_tasks(tasks_of(i)) in one thread each, all started while the write lock is
    held, so they are in line together when it is let go; returns each one's ids or
    error, and the store's commit count before the lock was let go."""
    answers, line = {}, _Line(len(tasks_of))
    st._creates = line

    def create(index):
        try:
            answers[index] = st.create_tasks(tasks_of[index])
            for task_id in answers[index]:       # answered only once on disk
                assert on_disk(st.path, "SELECT 1 FROM tasks WHERE id=?", (task_id,))
        except Exception as exc:                  # noqa: BLE001 - the test looks at it
            answers[index] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(tasks_of))]
    with st.write():
        for thread in threads:
            thread.start()
        assert line.full.wait(10), "the creates did not get in line"
        commits = st._changes
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a create hung"
    return answers, commits + 1                 # + the commit of the write held above


@pytest.mark.parametrize("read", ["list_devices", "device_summary"])
def test_a_device_s_row_reads_only_its_running_and_pending_tasks(st, read):
    """list_devices and device_summary (read for every create's device event) find the
    running task in the index of running tasks, and count pending ones in tasks_due:
    never a walk over all the phone's tasks, whatever other index on serial it has."""
    st.upsert_device("d1", state="device")
    said = []
    st._reader().set_trace_callback(said.append)
    getattr(st, read)("d1")
    st._reader().set_trace_callback(None)
    plan = [row[3] for row in st.query("EXPLAIN QUERY PLAN " + said[-1])]
    on_tasks = [step for step in plan if step.split()[1] == "tasks"]
    assert len(on_tasks) == 2, plan
    assert all("tasks_one_running_per_device" in s or "tasks_due" in s for s in on_tasks)


def test_a_device_summary_is_the_listed_row_s_event_fields(st):
    st.upsert_device("d1", state="device", alias="left", groups='["shelf"]', battery=80)
    [running, _] = st.create_tasks([new("d1"), new("d1")])
    st.claim_next("d1", T0 + 1)
    listed, summary = st.list_devices("d1")[0], st.device_summary("d1")
    assert tml.EventHub.device_event("d1", summary) == tml.EventHub.device_event("d1", listed)
    assert (summary["running_task_id"], summary["pending_count"]) == (running, 1)
    assert st.device_summary("nobody") is None


def test_a_lone_create_with_the_writer_free_forms_no_line(st, monkeypatch):
    """No create in line and the writer free: the create writes at once (a line costs
    a lock and a hand-over per call); one that finds the writer busy waits in line."""
    made = []
    job = tml._CreateJob
    monkeypatch.setattr(tml, "_CreateJob", lambda tasks: made.append(tasks) or job(tasks))
    [first] = st.create_tasks([new()])
    assert made == [] and st.get_task(first) is not None
    answers, _ = creates_in_line(st, [[new("d2")]])
    assert len(made) == 1 and st.get_task(answers[0][0])["serial"] == "d2"


def test_creates_in_line_are_written_together_each_with_its_own_ids(st):
    """Group commit: creates that wait while another write holds the lock are written in
    one statement by the first of them, and each gets its own ids once committed."""
    tasks_of = [[new(f"d{i}")] * (1 + i % 3) for i in range(6)]
    answers, commits = creates_in_line(st, tasks_of)
    assert st._changes == commits + 1                        # one write for all six
    for index, ids in answers.items():
        assert [r["serial"] for r in map(st.get_task, ids)] == [f"d{index}"] * len(ids)
    assert sorted(i for ids in answers.values() for i in ids) == [r["id"] for r in rows(st)]
    assert st.stats()["pending"] == sum(map(len, tasks_of))


def test_a_create_in_line_that_breaks_fails_alone(st):
    """A create whose task the database refuses gets its own error; the others in line
    with it are written."""
    tasks_of = [[new("d0")], [new("d1"), new(None)], [new("d2")]]
    answers, _ = creates_in_line(st, tasks_of)
    assert isinstance(answers[1], sqlite3.IntegrityError)
    assert [r["serial"] for r in rows(st)] == ["d0", "d2"]
    assert [r["id"] for r in rows(st)] == answers[0] + answers[2]


def test_a_write_of_creates_in_line_that_fails_answers_each_and_writes_none(st):
    """A full disk fails the write of all the creates in line: each is told, none is
    written, and the creates after them are written as usual."""
    st.create_tasks([new()])
    pages = st.query_one("PRAGMA page_count")[0]
    st._writer.execute(f"PRAGMA max_page_count={pages}")     # a full disk
    answers, _ = creates_in_line(st, [[new(f"d{i}", message="x" * 4000)] for i in range(3)])
    assert all(isinstance(a, tml.StorageFull) for a in answers.values()), answers
    assert len(rows(st)) == 1
    st._writer.execute("PRAGMA max_page_count=1073741823")
    assert len(st.create_tasks([new()])) == 1


def test_concurrent_claims_never_run_a_task_twice(db_path):
    """8 threads race to claim tasks of 4 devices: every task runs exactly once and no
    device ever has two running tasks."""
    store = tml.Store(db_path)
    try:
        store.create_tasks([new(f"d{i % 4}") for i in range(120)])
        claimed, lock = [], threading.Lock()

        def work(index):
            idle_rounds = 0
            while idle_rounds < 50:
                row = store.claim_next(f"d{index % 4}", store.clock() + 1)
                if row is None:
                    idle_rounds += 1
                    if store.stats()["pending"] == 0:
                        return
                    continue
                running = store.query_one("SELECT COUNT(*) FROM tasks WHERE serial=? AND "
                                          "status=1", (row["serial"],))[0]
                assert running == 1
                with lock:
                    claimed.append(row["id"])
                assert store.finish(row["id"], ok=True) == "completed"

        errors = run_threads(8, work)
        assert errors == []
        assert sorted(claimed) == list(range(1, 121))
        assert store.stats()["completed"] == 120
    finally:
        store.close()


def test_two_store_objects_on_one_file(db_path):
    """Two Store objects (as two processes would be) writing at once: the busy timeout
    makes them wait their turn instead of failing with 'database is locked'."""
    first, second = tml.Store(db_path), tml.Store(db_path)
    try:
        def work(index):
            store = (first, second)[index % 2]
            for _ in range(25):
                store.create_tasks([new(f"s{index}")] * 2)
                store.upsert_device(f"s{index}", state="device")

        assert run_threads(8, work) == []
        assert first.stats()["total"] == second.stats()["total"] == 8 * 25 * 2
    finally:
        first.close()
        second.close()


# -- a full disk -------------------------------------------------------------------------
def test_a_full_disk_is_said_and_nothing_is_half_written(small_disk, make_config, make_app,
                                                         make_client):
    config = make_config(db=small_disk.path / "full.db")
    client = make_client(make_app(config))
    client.app.lite.store.upsert_device("phone1", state="device")
    body = {"serials": ["phone1"], "script_name": "echo", "script_config": {"text": "hi"}}
    assert client.post_json("/api/v1/task", body).json["code"] == 0
    small_disk.fill()
    reply = client.post_json("/api/v1/task", body,
                             expect_errors=True)
    assert reply.status_int == 500 and reply.json["code"] == 50001
    assert "database or disk is full" in reply.json["message"]
    assert client.get("/api/v1/task/stats").json["data"]["total"] == 1
    small_disk.free()
    assert client.post_json("/api/v1/task", body).json["code"] == 0   # writes work again
    assert client.get("/api/v1/task/stats").json["data"]["total"] == 2


def test_disk_full_in_a_store_write_raises_storage_full(small_disk, clock):
    st = tml.Store(small_disk.path / "s.db", clock)
    try:
        small_disk.fill()
        with pytest.raises(tml.StorageFull) as exc:
            st.create_tasks([tml.NewTask("p1", "echo", {"x": "y" * 1000})] * 20)
        assert exc.value.code == 50001 and "disk is full" in exc.value.message
        assert st.stats()["total"] == 0
        small_disk.free()
        assert len(st.create_tasks([tml.NewTask("p1", "echo", {})])) == 1
    finally:
        st.close()


# ---------------------------------------------------------------------------
# schema 1 -> 2: an existing database keeps its tasks
# ---------------------------------------------------------------------------

def make_schema_1_database(path, clock):
    """A file as the program of schema version 1 left it, with tasks in every state."""
    raw = sqlite3.connect(str(path), isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    for statement in tml._split_sql(tml.MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute("PRAGMA user_version=1")
    raw.execute("INSERT INTO devices (serial, first_seen, last_task_end) VALUES ('d1', ?, ?)",
                (clock.now, clock.now - 100))
    for n, (serial, status, username) in enumerate([
            ("d1", 0, None), ("d1", 1, None), ("d1", 2, "alice"), ("d2", 3, "bob"),
            ("d2", 0, "bob"), ("d2", 2, None)]):
        raw.execute("INSERT INTO tasks (serial, username, script_name, script_config, status,"
                    " start_time, created_at) VALUES (?,?,?,?,?,?,?)",
                    (serial, username, "echo", '{"n": %d}' % n, status, clock.now - 10,
                     clock.now + n))
    raw.execute("INSERT INTO task_log (task_id, at, line) VALUES (2, ?, 'old line')",
                (clock.now,))
    before = [tuple(r) for r in raw.execute("SELECT * FROM tasks ORDER BY id")]
    raw.close()
    return before


def test_schema_1_database_opens_and_keeps_its_tasks(open_store, db_path, clock):
    before = make_schema_1_database(db_path, clock)
    assert on_disk(db_path, "PRAGMA page_size") == [(4096,)]
    st = open_store()
    assert st.schema_version() == len(tml.MIGRATIONS) >= 2
    assert st.query_one("PRAGMA page_size")[0] == tml.PAGE_SIZE      # rewritten once
    assert st.query_one("PRAGMA journal_mode")[0] == "wal"
    rows = st.query("SELECT * FROM tasks ORDER BY id")
    assert [tuple(r)[:len(before[0])] for r in rows] == before    # schema 3 adds columns
    assert {(r["external"], r["creator"], r["expire_at"]) for r in rows} == {(0, None, None)}
    assert st.stats() == {"total": 6, "pending": 2, "running": 1, "completed": 2,
                          "failed": 1}
    assert st.list_tasks(serial="d2")[1] == 3
    assert st.list_tasks(username="bob", statuses=[0])[1] == 1
    assert [r["line"] for r in st.task_log(2)] == ["old line"]
    indexes = {r[0] for r in st.query("SELECT name FROM sqlite_master WHERE type='index'"
                                      " AND name LIKE 'tasks%'")}
    assert {"tasks_status", "tasks_script", "tasks_source", "tasks_username"} \
        .isdisjoint(indexes)
    assert st.due_times() == {"d1": clock.now - 10, "d2": clock.now - 10}
    assert st.claim_next("d2", clock.now)["id"] == 5         # d1 still has one running
    assert sorted(st.recover_interrupted()) == [2, 5]
    assert_counts_match(st)


# ---------------------------------------------------------------------------
# a running task's log and progress wait in memory for the next write
# ---------------------------------------------------------------------------

def on_disk(db_path, sql, params=()):
    """What another process would read from the file."""
    raw = sqlite3.connect(str(db_path))
    try:
        return raw.execute(sql, params).fetchall()
    finally:
        raw.close()


def disk_log(db_path, task_id):
    return [r[0] for r in on_disk(db_path, "SELECT line FROM task_log WHERE task_id=?"
                                           " ORDER BY id", (task_id,))]


def claimed_task(st, serial="d1"):
    [task_id] = st.create_tasks([new(serial)])
    assert st.claim_next(serial, T0 + 1)["id"] == task_id
    return task_id


def test_running_task_log_and_progress_are_read_from_memory(st, db_path):
    task_id = claimed_task(st)
    st.add_log(task_id, "started")
    st.set_progress(task_id, 40, "halfway")
    st.add_log(task_id, "40% halfway")
    assert disk_log(db_path, task_id) == []                     # nothing written yet
    assert on_disk(db_path, "SELECT progress, message FROM tasks WHERE id=?",
                   (task_id,)) == [(0, "")]
    assert [r["line"] for r in st.task_log(task_id)] == ["started", "40% halfway"]
    assert (st.get_task(task_id)["progress"], st.get_task(task_id)["message"]) == \
        (40, "halfway")
    [listed], _ = st.list_tasks()
    assert (listed["progress"], listed["message"]) == (40, "halfway")
    assert tml.task_to_json(listed)["progress"] == 40


def test_any_write_flushes_the_running_tasks(st, db_path):
    task_id = claimed_task(st)
    st.add_log(task_id, "one")
    st.set_progress(task_id, 10, "ten")
    st.create_tasks([new("d9")])                                # someone else's write
    assert disk_log(db_path, task_id) == ["one"]
    assert on_disk(db_path, "SELECT progress, message FROM tasks WHERE id=?",
                   (task_id,)) == [(10, "ten")]
    assert [r["line"] for r in st.task_log(task_id)] == ["one"]  # not twice


@pytest.mark.parametrize("end", ["completed", "failed", "stopped", "interrupted",
                                 "deleted", "retrying"])
def test_every_end_of_a_running_task_keeps_its_log(st, db_path, end):
    task_id = claimed_task(st)
    st.add_log(task_id, "started on d1")
    st.set_progress(task_id, 70, "almost")
    if end == "completed":
        assert st.finish(task_id, ok=True) == "completed"
    elif end == "failed":
        assert st.finish(task_id, ok=False, error="boom") == "failed"
    elif end == "stopped":
        assert st.finish(task_id, ok=False, error=tml.STOPPED_BY_USER,
                         allow_auto_retry=False) == "failed"
    elif end == "interrupted":
        assert st.recover_interrupted() == [task_id]
    elif end == "retrying":
        with st.write() as conn:
            conn.execute("UPDATE tasks SET auto_retry=1 WHERE id=?", (task_id,))
        assert st.finish(task_id, ok=False, error="flaky") == "retrying"
    else:
        assert st.delete_task(task_id)
        assert disk_log(db_path, task_id) == []                 # gone with its task
        assert st.task_log(task_id) == []
        return
    assert disk_log(db_path, task_id)[0] == "started on d1"
    if end != "completed":
        assert on_disk(db_path, "SELECT progress FROM tasks WHERE id=?",
                       (task_id,)) == [(70,)]
    # after its end a task's lines go straight to the file
    st.add_log(task_id, "after the end")
    assert disk_log(db_path, task_id)[-1] == "after the end"
    assert st._live == {}


def test_a_rolled_back_write_keeps_the_lines_for_the_next(st, db_path):
    task_id = claimed_task(st)
    st.add_log(task_id, "kept")
    with pytest.raises(RuntimeError):
        with st.write():
            raise RuntimeError("the write fails")
    assert [r["line"] for r in st.task_log(task_id)] == ["kept"]
    st.finish(task_id, ok=True)
    assert disk_log(db_path, task_id) == ["kept"]


def test_a_write_whose_begin_fails_lets_go_of_the_lock(st, db_path):
    """BEGIN refused (another program holds the file's write lock): the error reaches
    the caller, and the store's lock is free for the next write, of any thread."""
    st._writer.execute("PRAGMA busy_timeout=0")
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        with st.write():
            pass
    other.execute("ROLLBACK")
    other.close()
    st._writer.execute("PRAGMA busy_timeout=30000")
    written = []
    writer = threading.Thread(target=lambda: written.append(st.create_tasks([new()])))
    writer.start()
    writer.join(10)
    assert len(written) == 1 and st.get_task(written[0][0]) is not None


def test_a_write_lets_go_of_the_lock_even_when_its_rollback_fails(st, monkeypatch):
    """Writing the waiting lines fails, and so does the ROLLBACK after it: the error
    reaches the caller, and the lock is still let go (another thread's write goes on)."""
    task_id = claimed_task(st)
    st.add_log(task_id, "waiting")

    def fails(*args):
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(st, "_flush_live", fails)
    monkeypatch.setattr(st, "_rolled_back", fails)
    with pytest.raises(sqlite3.OperationalError, match="I/O"):
        with st.write():
            pass
    monkeypatch.undo()
    st._writer.rollback()
    assert not st._write_lock._is_owned() and st._local.write_depth == 0
    written = []
    writer = threading.Thread(target=lambda: written.append(st.create_tasks([new("d2")])))
    writer.start()
    writer.join(10)
    assert len(written) == 1


def test_a_write_whose_waiting_lines_cannot_be_written_keeps_them(st, db_path):
    """The log lines waiting in memory fail to go to a full disk at the start of a
    write: StorageFull, nothing written, the lock free, and the lines kept for later."""
    st.upsert_device("d1", state="device")
    task_id = claimed_task(st)
    st.add_log(task_id, "x" * 4000)
    pages = st.query_one("PRAGMA page_count")[0]
    st._writer.execute(f"PRAGMA max_page_count={pages}")     # a full disk
    with pytest.raises(tml.StorageFull):
        with st.write() as conn:
            conn.execute("UPDATE devices SET alias='never' WHERE serial='d1'")
    assert not st._write_lock._is_owned() and not st._writer.in_transaction
    assert [r["line"] for r in st.task_log(task_id)] == ["x" * 4000]
    st._writer.execute("PRAGMA max_page_count=1073741823")
    assert st.finish(task_id, ok=True) == "completed"
    assert disk_log(db_path, task_id) == ["x" * 4000]
    assert on_disk(db_path, "SELECT alias FROM devices WHERE serial='d1'") == [("",)]


@pytest.mark.parametrize("ending", ["complete", "fail", "retry"])
@pytest.mark.parametrize("returning", [True, False])
def test_a_task_ends_by_one_compare_and_set_with_or_without_returning(
        st, monkeypatch, returning, ending, clock):
    """complete() and fail() find the task's phone by their compare-and-set (an
    auto-retry by the row it reads): the phone rests from now, and a task that is not
    running (pending, or ended already) is left alone."""
    if returning and not tml.SQLITE_HAS_RETURNING:
        pytest.skip(f"sqlite {sqlite3.sqlite_version} has no RETURNING")
    monkeypatch.setattr(tml, "SQLITE_HAS_RETURNING", returning)
    st.upsert_device("d1", state="device")
    running, pending = st.create_tasks([new("d1", auto_retry=True), new("d1")])
    assert st.claim_next("d1", clock())["id"] == running
    clock.advance(7)

    def end(task_id):
        return st.finish(task_id, ok=ending == "complete", error="broke", result={"n": 1},
                         allow_auto_retry=ending == "retry", rng=random.Random(1))
    assert end(pending) == "gone"
    assert st.get_task(pending)["status"] == tml.PENDING
    assert st.list_devices("d1")[0]["last_task_end"] is None
    assert end(running) == {"complete": "completed", "fail": "failed",
                            "retry": "retrying"}[ending]
    task = st.get_task(running)
    assert task["status"] == {"complete": tml.COMPLETED, "fail": tml.FAILED,
                              "retry": tml.PENDING}[ending]
    if ending != "retry":
        assert (task["end_time"], tml._load_json(task["result"])) == (clock(), {"n": 1})
    assert st.list_devices("d1")[0]["last_task_end"] == clock()
    assert end(running) == "gone"
    assert_counts_match(st)


def test_a_create_reads_its_phones_rows_only_for_a_listener(st, monkeypatch):
    """The rows a create tells on_written (its tasks, its phones as it leaves them) are
    made only when something listens: a store without an events hub reads nothing."""
    st.upsert_device("d1", state="device")
    reads = []
    summary = st.device_summary
    monkeypatch.setattr(st, "device_summary", lambda *a: reads.append(a) or summary(*a))
    st.create_tasks([new("d1")])
    assert reads == []
    told = []
    st.on_written = lambda kind, rows: told.append((kind, dict(rows)))
    [task_id] = st.create_tasks([new("d1")])
    assert reads == [("d1",)]
    assert [kind for kind, _ in told] == ["task", "device"]
    assert told[0][1][task_id]["status"] == tml.PENDING
    assert told[1][1]["d1"]["pending_count"] == 2


def test_a_chatty_task_writes_every_hundred_lines(st, db_path):
    task_id = claimed_task(st)
    for n in range(tml.MAX_BUFFERED_LINES + 5):
        st.add_log(task_id, f"line {n}")
    assert len(disk_log(db_path, task_id)) == tml.MAX_BUFFERED_LINES
    assert len(st.task_log(task_id)) == tml.MAX_BUFFERED_LINES + 5


def test_lines_logged_during_reads_and_writes_are_seen_once(st):
    """A runner thread logs while another thread writes and a third reads the log: the
    reader sees every line so far exactly once, in order."""
    task_id = claimed_task(st)
    stop = threading.Event()
    seen_bad = []

    def logger(index):
        if index == 0:
            for n in range(300):
                st.add_log(task_id, f"{n}")
            stop.set()
        elif index == 1:
            while not stop.is_set():
                st.create_tasks([new("d2")])
        else:
            while not stop.is_set():
                lines = [int(r["line"]) for r in st.task_log(task_id)]
                if lines != list(range(len(lines))):
                    seen_bad.append(lines)

    assert run_threads(3, logger) == []
    assert seen_bad == []
    st.finish(task_id, ok=True)
    assert [r["line"] for r in st.task_log(task_id)] == [str(n) for n in range(300)]


# ---------------------------------------------------------------------------
# counters, devices, the WAL
# ---------------------------------------------------------------------------

def assert_counts_match(st):
    real = {tuple(r) for r in st.query(
        "SELECT serial, script_name, source, COALESCE(username, ''), status, COUNT(*)"
        " FROM tasks GROUP BY 1, 2, 3, 4, 5")}
    kept = {tuple(r) for r in st.query("SELECT * FROM task_counts WHERE n != 0")}
    assert kept == real
    by_status = dict(st.query("SELECT status, COUNT(*) FROM tasks GROUP BY status"))
    stats = st.stats()
    assert stats["total"] == sum(by_status.values())
    for status, name in tml.STATUS_TEXT.items():
        assert stats[name] == by_status.get(status, 0)


def test_every_upsert_of_the_schema_names_its_conflict_target():
    """sqlite before 3.35 (Raspberry Pi OS 11 has 3.34) refuses ON CONFLICT DO UPDATE
    without a conflict target: a new file there would stop at the first such trigger."""
    for number, migration in enumerate(tml.MIGRATIONS, 1):
        assert "ON CONFLICT DO UPDATE" not in " ".join(migration.split()), number


def test_an_older_file_gets_the_one_statement_count_move(db_path, clock):
    """Schema 8 replaces the trigger that moves a task between counts (an UPDATE and an
    INSERT) with one statement of two rows; a file of schema 7 keeps its counts right."""
    st = tml.Store(db_path, clock)
    first, second = st.create_tasks([new("d1"), new("d1", username="alice")])
    assert st.claim_next("d1", T0 + 1)["id"] == first
    st.close()
    older = next(m for m in tml.MIGRATIONS[:7] if "CREATE TRIGGER task_counts_update" in m)
    trigger = older[older.index("CREATE TRIGGER task_counts_update"):]
    trigger = trigger[:trigger.index("END;") + 4]
    raw = sqlite3.connect(db_path)
    raw.executescript(f"DROP TRIGGER task_counts_update; {trigger} PRAGMA user_version=7;")
    raw.close()
    st = tml.Store(db_path, clock)
    try:
        assert st.schema_version() == len(tml.MIGRATIONS) == 8
        sql = st.query_one("SELECT sql FROM sqlite_master WHERE name='task_counts_update'")
        assert "excluded.n" in sql[0]
        assert st.finish(first, ok=True) == "completed"
        assert st.claim_next("d1", T0 + 2)["id"] == second
        assert st.finish(second, ok=False, error="x", allow_auto_retry=False) == "failed"
        assert_counts_match(st)
        assert st.stats() == {"total": 2, "pending": 0, "running": 0, "completed": 1,
                              "failed": 1}
    finally:
        st.close()


PHONES = ("d1", "d2", "d3")


def brute_force_due_times(st):
    """The due time of every phone by one plain query over all its pending tasks."""
    return dict(st.query(
        "SELECT t.serial, MIN(MAX(t.start_time, COALESCE(d.last_task_end, 0) +"
        " t.rest_seconds)) FROM tasks t LEFT JOIN devices d ON d.serial = t.serial"
        " WHERE t.status=0 AND t.external = 0 GROUP BY t.serial"))


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from(PHONES), hs.integers(-2, 2),
                          hs.integers(0, 50), hs.integers(0, 30), hs.booleans(),
                          hs.sampled_from([None, 20, 60])), max_size=25),
       hs.lists(hs.tuples(hs.sampled_from(["claim", "finish", "other_connection",
                                           "expire", "worker", "lease", "create",
                                           "create_external"]),
                          hs.sampled_from(PHONES)), max_size=10))
def test_due_times_equal_a_plain_query(tasks, events):
    """The cached, per-phone due times against one query over every pending task, with
    priorities, start times and rests mixed, after claims, ends and foreign writes;
    workers' (external) tasks naming a phone are never in its due time, expiries and
    lease expiries keep the due times and the counters right."""
    with tempfile.TemporaryDirectory() as folder:
        clock = FakeClock(T0)
        path = Path(folder) / "due.db"
        st, other = tml.Store(path, clock), tml.Store(path, clock)
        try:
            for serial in PHONES:
                st.upsert_device(serial, state="device")
            st.create_tasks([new(serial, priority=p, start_time=T0 + start,
                                 rest_seconds=rest, external=external,
                                 expire_at=expiry and T0 + expiry)
                             for serial, p, start, rest, external, expiry in tasks])
            assert st.due_times() == brute_force_due_times(st)
            for event, serial in events:
                clock.advance(7)
                if event == "claim":
                    st.claim_next(serial, clock.now)
                elif event == "finish":
                    running = st.query_one("SELECT id FROM tasks WHERE serial=? AND"
                                           " status=1", (serial,))
                    if running:
                        st.finish(running[0], ok=True)
                elif event == "expire":
                    st.expire_pending(clock.now)
                elif event == "worker":
                    st.worker_claim("w1", ["echo"], 10, clock.now)
                elif event == "lease":
                    st.expire_leases(clock.now)
                elif event.startswith("create"):
                    st.create_tasks([new(serial, start_time=clock.now - 1, priority=3,
                                         external=event == "create_external")])
                else:
                    other.create_tasks([new(serial, start_time=clock.now + 3)])
                assert st.due_times() == brute_force_due_times(st)
                assert_counts_match(st)
        finally:
            st.close()
            other.close()


def test_unchanged_device_refresh_writes_nothing(st, clock):
    st.upsert_device("d1", state="device", model="Pixel", battery=80, last_seen=clock.now)
    changes = st._writer.total_changes
    clock.advance(tml.LAST_SEEN_PRECISION / 2)
    st.upsert_device("d1", model="Pixel", battery=80, last_seen=clock.now)
    assert st._writer.total_changes == changes
    st.upsert_device("d1", battery=79, last_seen=clock.now)
    assert st.get_device("d1")["battery"] == 79
    clock.advance(tml.LAST_SEEN_PRECISION)
    st.upsert_device("d1", last_seen=clock.now)
    assert st.get_device("d1")["last_seen"] == clock.now


def test_new_databases_use_small_pages(st):
    assert st.query_one("PRAGMA page_size")[0] == tml.PAGE_SIZE


def test_a_big_old_file_keeps_its_pages(db_path, clock, monkeypatch, open_store):
    make_schema_1_database(db_path, clock)
    monkeypatch.setattr(tml, "ADOPT_PAGE_SIZE_UP_TO", 1024)
    st = open_store()
    assert st.query_one("PRAGMA page_size")[0] == 4096
    assert st.stats()["total"] == 6


def test_the_wal_stays_bounded(db_path, clock, monkeypatch):
    monkeypatch.setattr(tml, "WAL_AUTOCHECKPOINT", 50)
    monkeypatch.setattr(tml, "JOURNAL_SIZE_LIMIT", 64 * 1024)
    st = tml.Store(db_path, clock)
    try:
        wal = db_path.with_name(db_path.name + "-wal")
        frame = tml.PAGE_SIZE + 24
        sizes = []
        for n in range(600):
            st.create_tasks([new(f"d{n % 7}")])
            sizes.append(wal.stat().st_size)
        # each commit adds a few frames past the checkpoint threshold at most
        assert max(sizes) <= 32 + (tml.WAL_AUTOCHECKPOINT + 20) * frame
        assert st.stats()["total"] == 600
    finally:
        st.close()


SERIALS, SCRIPTS, USERS = ("d1", "d2", "d3"), ("echo", "follow"), (None, "alice", "bob")
operation = hs.one_of(
    hs.tuples(hs.just("create"), hs.lists(hs.tuples(hs.sampled_from(SERIALS),
                                                    hs.sampled_from(SCRIPTS),
                                                    hs.sampled_from(("api", "ui")),
                                                    hs.sampled_from(USERS),
                                                    hs.booleans()), min_size=1, max_size=4)),
    hs.tuples(hs.just("claim"), hs.sampled_from(SERIALS)),
    hs.tuples(hs.sampled_from(["complete", "fail", "stop", "cancel", "retry", "delete"]),
              hs.integers(1, 30)),
    hs.tuples(hs.sampled_from(["retry_all", "recover", "clear_completed", "clear_failed"]),
              hs.none()),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs.lists(operation, max_size=40))
def test_counters_equal_a_real_count_after_any_operations(tmp_path_factory, ops):
    clock = FakeClock(T0)
    # as the server's: reads kept until its next commit, so each op must be seen
    st = tml.Store(tmp_path_factory.mktemp("counts") / "c.db", clock, sole_writer=True)
    try:
        for name, arg in ops:
            if name == "create":
                st.create_tasks([new(serial, script_name=script, source=source,
                                     username=user, auto_retry=auto)
                                 for serial, script, source, user, auto in arg])
            elif name == "claim":
                st.claim_next(arg, clock.now + 3600)
            elif name in ("complete", "fail", "stop"):
                st.finish(arg, ok=name == "complete", error=name,
                          allow_auto_retry=name != "stop")
            elif name == "cancel":
                st.cancel_pending(arg)
            elif name == "retry":
                st.retry(arg)
            elif name == "delete":
                st.delete_task(arg)
            elif name == "retry_all":
                st.retry_all()
            elif name == "recover":
                st.recover_interrupted()
            else:
                st.clear([tml.COMPLETED if name == "clear_completed" else tml.FAILED])
            clock.advance(1)
            real = dict(st.query("SELECT status, COUNT(*) FROM tasks GROUP BY status"))
            assert st.stats() == {"total": sum(real.values())} | {
                text: real.get(number, 0) for number, text in tml.STATUS_TEXT.items()}
            assert st.list_tasks(serial="d1")[1] == st.query_one(
                "SELECT COUNT(*) FROM tasks WHERE serial='d1'")[0]
            text, total = st.task_page_json(page_size=5)
            assert (json.loads(text), total) == page_in_python(st, page_size=5)
        assert_counts_match(st)
        assert st.due_times() == brute_force_due_times(st)
        for serial in SERIALS:
            st.upsert_device(serial, state="device")
        assert {d["serial"]: d["pending_count"] for d in st.list_devices()} == {
            serial: st.query_one(f"SELECT COUNT(*) FROM tasks NOT INDEXED WHERE serial=?"
                                 f" AND status={tml.PENDING} AND external = 0",
                                 (serial,))[0] for serial in SERIALS}
        for serial in SERIALS:
            for user in USERS[1:]:
                for statuses in ([], [tml.PENDING], [tml.COMPLETED, tml.FAILED]):
                    _, total = st.list_tasks(serial=serial, username=user,
                                             statuses=statuses)
                    marks = ",".join(map(str, statuses or range(4)))
                    assert total == st.query_one(
                        f"SELECT COUNT(*) FROM tasks WHERE serial=? AND username=? AND"
                        f" status IN ({marks})", (serial, user))[0]
        for statuses in ([0], [1], [2], [3], [0, 1], [2, 3]):
            for serial in (None, "d2"):
                found, total = st.list_tasks(statuses=statuses, serial=serial, page_size=5,
                                             created_from=T0 + 3 if serial else None)
                marks = ",".join(map(str, statuses))
                plain = [r[0] for r in st.query(
                    f"SELECT id FROM tasks NOT INDEXED WHERE status IN ({marks}) AND"
                    f" (? IS NULL OR serial = ? AND created_at >= ?) ORDER BY id DESC",
                    (serial, serial, T0 + 3))]
                assert [r["id"] for r in found] == plain[:5] and total == len(plain)
        _, total = st.list_tasks(created_from=T0 + 5, created_to=T0 + 20, serial="d1")
        assert total == st.query_one("SELECT COUNT(*) FROM tasks WHERE serial='d1' AND"
                                     " created_at BETWEEN ? AND ?", (T0 + 5, T0 + 20))[0]
    finally:
        st.close()


def test_closing_the_store_writes_what_waits_in_memory(open_store, db_path):
    st = open_store()
    task_id = claimed_task(st)
    st.add_log(task_id, "last words")
    st.set_progress(task_id, 30, "a third")
    st.close()
    assert disk_log(db_path, task_id) == ["last words"]
    assert on_disk(db_path, "SELECT progress FROM tasks WHERE id=?", (task_id,)) == [(30,)]


@pytest.mark.parametrize("returning", [True, False])
def test_claim_returns_the_running_row_with_or_without_returning(st, monkeypatch,
                                                                 returning):
    if returning and not tml.SQLITE_HAS_RETURNING:
        pytest.skip(f"sqlite {sqlite3.sqlite_version} has no RETURNING")
    monkeypatch.setattr(tml, "SQLITE_HAS_RETURNING", returning)
    first, second = st.create_tasks([new("d1"), new("d1")])
    row = st.claim_next("d1", T0 + 5)
    assert (row["id"], row["status"], row["started_at"]) == (first, tml.RUNNING, T0 + 5)
    assert dict(row) == dict(st.get_task(first))
    assert st.claim_next("d1", T0 + 6) is None               # one running per device
    assert st.get_task(second)["status"] == tml.PENDING


def test_migrations_keep_the_tasks_of_a_version_1_database(tmp_path):
    """A box upgraded in place: its tasks survive, the new columns take their defaults."""
    import sqlite3
    path = tmp_path / "old.db"
    conn = sqlite3.connect(str(path))
    for statement in tml._split_sql(tml.MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO tasks (serial, script_name, script_config, status, start_time,"
                 " created_at) VALUES ('d1', 'echo', '{}', 1, 1, 1)")
    conn.commit()
    conn.close()
    store = tml.Store(path)
    try:
        assert store.schema_version() == len(tml.MIGRATIONS) >= 2
        row = store.get_task(1)
        assert row["status"] == tml.RUNNING and row["external"] == 0
        assert row["callback_url"] is None and row["creator"] is None
        with store.write() as w:                       # the per-phone rule still holds
            with pytest.raises(sqlite3.IntegrityError):
                w.execute("INSERT INTO tasks (serial, script_name, script_config, status,"
                          " start_time, created_at) VALUES ('d1', 'echo', '{}', 1, 1, 1)")
    finally:
        store.close()


# ---------------------------------------------------------------------------
# issue 9's store with issue 10's operations
# ---------------------------------------------------------------------------

def test_workers_tasks_are_listed_and_counted_but_are_no_phones(st, clock):
    """An external task naming a phone shows in GET /task by status and in the counts,
    but is not the phone's running task, pending task or due time."""
    st.upsert_device("d1", state="device")
    phone, worker = st.create_tasks([new("d1", start_time=T0 + 50),
                                     new("d1", external=True, start_time=T0)])
    assert st.due_times() == {"d1": T0 + 50}
    assert {r["id"] for r in st.list_tasks(statuses=[tml.PENDING])[0]} == {phone, worker}
    assert st.worker_claim("w1", ["echo"], 30, T0 + 1)["id"] == worker
    assert [r["id"] for r in st.list_tasks(statuses=[tml.RUNNING])[0]] == [worker]
    assert st.running_count() == 1
    device = st.list_devices()[0]
    assert (device["running_task_id"], device["pending_count"]) == (None, 1)
    assert st.claim_next("d1", T0 + 50)["id"] == phone        # the phone is not busy
    assert st.list_devices()[0]["running_task_id"] == phone
    assert_counts_match(st)
    st.create_tasks([new("d1", external=True), new("d1"), new("d1", external=True)])
    assert st.list_devices("d1")[0]["pending_count"] == 1


def test_lease_and_expiry_ends_keep_the_counters_and_due_times(st, clock):
    st.upsert_device("d1", state="device")
    soon, later = st.create_tasks([new("d1", start_time=T0 + 10, expire_at=T0 + 5),
                                   new("d1", start_time=T0 + 20)])
    worker = st.create_tasks([new("", external=True, max_retry_count=0)])[0]
    assert st.due_times() == {"d1": T0 + 10}
    st.worker_claim("w1", ["echo"], 30, T0)
    assert st.expire_pending(T0 + 6) == [soon]
    assert st.due_times() == {"d1": T0 + 20}
    assert st.expire_leases(T0 + 31) == [(worker, "failed")]
    assert st.stats() == {"total": 3, "pending": 1, "running": 0, "completed": 0,
                          "failed": 2}
    assert st.list_tasks(statuses=[tml.FAILED])[1] == 2
    assert_counts_match(st)


@pytest.mark.parametrize("returning", [True, False])
def test_the_gate_holds_back_with_or_without_returning(st, monkeypatch, returning):
    """The claim by UPDATE ... RETURNING still asks the account gate, once per account
    and script; a held-back task gets the reason as its message and stays pending."""
    if returning and not tml.SQLITE_HAS_RETURNING:
        pytest.skip(f"sqlite {sqlite3.sqlite_version} has no RETURNING")
    monkeypatch.setattr(tml, "SQLITE_HAS_RETURNING", returning)
    held, held_too, free = st.create_tasks([
        new("d1", username="alice", priority=2), new("d1", username="alice", priority=1),
        new("d1", username="bob")])
    asked = []

    def gate(row, now):
        asked.append(row["username"])
        return "alice: outside active hours" if row["username"] == "alice" else None

    row = st.claim_next("d1", T0 + 5, gate)
    assert (row["id"], row["status"]) == (free, tml.RUNNING)
    assert asked == ["alice", "bob"]
    for task_id in (held, held_too):
        task = st.get_task(task_id)
        assert (task["status"], task["message"]) == (tml.PENDING,
                                                    "alice: outside active hours")
    assert_counts_match(st)


def test_task_to_json_shows_the_operations_columns_from_a_row_or_a_live_dict(st, clock):
    task_id = st.create_tasks([new("d1", callback_url="http://127.0.0.1:9/cb",
                                   expire_at=T0 + 60, timeout=30, schedule_id=4,
                                   creator="ops")])[0]
    shown = tml.task_to_json(st.get_task(task_id))
    assert {k: shown[k] for k in ("callback_url", "expire_at", "timeout", "schedule_id",
                                  "creator", "worker_id", "lease_until")} == {
        "callback_url": "http://127.0.0.1:9/cb", "expire_at": tml.format_time(T0 + 60),
        "timeout": 30, "schedule_id": 4, "creator": "ops", "worker_id": None,
        "lease_until": None}
    st.claim_next("d1", T0 + 1)
    st.set_progress(task_id, 40, "half")                 # in memory: get_task gives a dict
    live = st.get_task(task_id)
    assert isinstance(live, dict)
    assert tml.task_to_json(live) == dict(shown, status=1, status_text="running",
                                          started_at=tml.format_time(T0 + 1),
                                          progress=40, message="half")
    assert st.list_tasks(creator="ops") == ([live], 1)
    assert st.list_tasks(creator="nobody") == ([], 0)


# ---------------------------------------------------------------------------
# issue 8's split moves call issue 10's task-end hooks once, after the commit
# ---------------------------------------------------------------------------

def test_every_final_move_calls_the_task_end_hooks_after_its_commit(st, db_path):
    seen = []
    st.on_task_end.append(lambda task_id, outcome: seen.append(
        (task_id, outcome, on_disk(db_path, "SELECT status FROM tasks WHERE id=?",
                                   (task_id,))[0][0])))
    done, failed, stopped = claimed_task(st, "d1"), claimed_task(st, "d2"), \
        claimed_task(st, "d3")
    [pending] = st.create_tasks([new("d4")])
    with st.write():                  # one outer transaction: nothing is told inside it
        assert st.finish(done, ok=True, result={"n": 1}) == "completed"
        assert st.fail(failed, "broke")
        assert seen == []
    assert st.stop(stopped, result={"partial": 1})
    assert st.cancel_pending(pending)
    # each hook saw its task's end already on disk (another connection's view)
    assert seen == [(done, "completed", tml.COMPLETED), (failed, "failed", tml.FAILED),
                    (stopped, "failed", tml.FAILED), (pending, "failed", tml.FAILED)]
    assert st.get_task(stopped)["result"] == '{"partial": 1}'
    assert st.get_task(stopped)["message"] == tml.STOPPED_BY_USER
    with pytest.raises(RuntimeError):
        with st.write():
            [again] = st.create_tasks([new("d5")])
            st.claim_next("d5", T0 + 1)
            st.complete(again)
            raise RuntimeError("rolled back")
    assert len(seen) == 4             # a rolled-back end is never announced
    assert_counts_match(st)


# ---------------------------------------------------------------------------
# issue 9's pages of tasks built by sqlite (GET /task)
# ---------------------------------------------------------------------------

#: Central European time with its summer time, as a POSIX rule (no tz database needed)
BERLIN = "CET-1CEST,M3.5.0,M10.5.0/3"
CONFIGS = [{"text": "héllo 🎉 \u2028 \"quoted\" \\ back\nslash", "n": 1.5, "big": 2 ** 62},
           {"nested": {"list": [1, None, {"deep": [True, False, "ü"]}], "empty": {}},
            "none": None},
           {"emoji": "👍🏽", "float": 1e-7, "neg": -0.25, "tab": "a\tb\x01"}]


@pytest.fixture
def berlin_time(monkeypatch):
    """The box in a timezone with summer time; format_time's cache forgets other zones."""
    monkeypatch.setenv("TZ", BERLIN)
    tml.time.tzset()
    tml._format_second.cache_clear()
    yield
    monkeypatch.undo()
    tml.time.tzset()
    tml._format_second.cache_clear()


def tasks_in_every_state(st, clock):
    """Tasks pending, running (progress in memory or not, a worker's), completed, failed,
    retried, with JSON configs and results of every kind, at fractional times."""
    clock.now = datetime.datetime(2026, 3, 29, 1, 59, 59).timestamp() + 0.9996
    ids = st.create_tasks([new(f"p{i}", script_config=CONFIGS[i % 3], username="u",
                               start_time=clock.now + i * 3600.4, priority=i,
                               callback_url="http://127.0.0.1:9/x", expire_at=clock.now
                               + 86400.7, timeout=30, creator="ops")
                           for i in range(9)])
    ids += st.create_tasks([new("w", external=True, script_config={"x": [1, 2]})])
    clock.now = datetime.datetime(2026, 10, 25, 2, 30, 0).timestamp() + 0.5
    for serial in ("p1", "p2", "p3", "p4", "p5"):
        assert st.claim_next(serial, clock.now + 86400 * 2)
    assert st.worker_claim("wk", ["echo"], 30, clock.now)["id"] == ids[-1]
    st.worker_progress(ids[-1], "wk", 20, "worker says ü", clock.now)
    st.complete(ids[1], {"done": ["ö", 1.25, None], "n": 10 ** 12})
    st.finish(ids[2], ok=False, error="boom \"x\"", result=None, allow_auto_retry=False)
    st.finish(ids[3], ok=False, error="once more", allow_auto_retry=False)
    st.retry(ids[3])
    st.set_progress(ids[4], 55, "in memory: ü")          # no write after: memory only
    return ids


def page_in_python(st, **filters):
    found, total = st.list_tasks(**filters)
    return [tml.task_to_json(row) for row in found], total


def test_a_page_built_by_sqlite_is_task_to_json_s(st, clock, berlin_time):
    tasks_in_every_state(st, clock)
    assert st.query_one(f"SELECT MIN({tml.TASK_TIMES_EXACT_SQL}) FROM tasks")[0] == 1
    assert st.get_task(5)["progress"] == 55 and st.query_one(
        "SELECT progress FROM tasks WHERE id=5")[0] != 55
    for filters in ({}, {"statuses": [tml.RUNNING]}, {"statuses": [0, 2, 3]},
                    {"serial": "p4"}, {"page": 2, "page_size": 3}, {"creator": "ops"},
                    {"page": 9}):
        text, total = st.task_page_json(**filters)
        shown, expected_total = page_in_python(st, **filters)
        assert (json.loads(text), total) == (shown, expected_total), filters
        assert [list(task) for task in json.loads(text)] == [list(t) for t in shown]
    statuses = {task["status_text"] for task in json.loads(st.task_page_json()[0])}
    assert statuses == {"pending", "running", "completed", "failed"}


def test_a_page_builds_again_only_the_tasks_that_changed(st, db_path, clock):
    """Each task's JSON is kept at its revision: a change by this store, by another
    writer of the file, or a task deleted, shows on the next page; the rest is kept."""
    ids = st.create_tasks([new("d1") for _ in range(6)])
    first = json.loads(st.task_page_json()[0])
    assert set(st._task_json) == set(ids)
    built = []
    real = st._tasks_json
    st._tasks_json = lambda missing: built.append(sorted(missing)) or real(missing)
    st.claim_next("d1", T0 + 1)                        # ids[0] runs: never kept
    st.finish(ids[0], ok=True, result={"n": 1})
    other = sqlite3.connect(str(db_path))                # another writer of the file
    with other:
        other.execute("UPDATE tasks SET message='from elsewhere' WHERE id=?", (ids[3],))
    other.close()
    st.delete_task(ids[5])
    shown = {task["id"]: task for task in json.loads(st.task_page_json()[0])}
    assert built == [[ids[0], ids[3]]]
    assert (shown[ids[0]]["status_text"], shown[ids[0]]["result"]) == ("completed", {"n": 1})
    assert shown[ids[3]]["message"] == "from elsewhere" and ids[5] not in shown
    assert [shown[i] for i in (ids[2], ids[1])] == [t for t in first if t["id"] in ids[1:3]]
    assert (json.loads(st.task_page_json()[0]), st.list_tasks()[1]) == page_in_python(st)


def test_kept_json_is_bounded_in_characters_and_big_tasks_are_not_kept(st, monkeypatch):
    """A config can be near the 1 MB body limit: such tasks, and pages of them, are
    built each time; the rest are kept up to KEPT_TASKS_JSON characters in all."""
    monkeypatch.setattr(tml, "KEPT_TASKS_JSON", 5000)
    st.sole_writer = True
    big = st.create_tasks([new("d1", script_config={"text": "x" * 300_000})])[0]
    small = st.create_tasks([new("d1", script_config={"text": f"t{i}"}) for i in range(30)])
    page, _ = st.task_page_json(page_size=100)
    assert len(page) > 300_000 and big not in st._task_json
    assert 0 < st._task_json_chars <= 5000 and set(st._task_json) < set(small)
    assert st._task_json_chars == sum(len(j) for _, j in st._task_json.values())
    assert not [key for key in st._cache if key[0] == "page"]          # not kept either
    assert (json.loads(st.task_page_json(page_size=100)[0]), 31) == \
        page_in_python(st, page_size=100)


def test_pages_are_cut_from_one_read_until_the_next_commit(st, monkeypatch):
    """A client going through the pages reads sqlite once per window of them (twice as
    deep as the page asked for), again after a commit; past PAGE_WINDOW, once a page."""
    monkeypatch.setattr(tml, "PAGE_WINDOW", 150)
    st.sole_writer = True
    st.create_tasks([new("d1" if i % 3 else "d2") for i in range(250)])
    reads = []
    real = st._listed
    st._listed = lambda sql, params: reads.append(params[-2:]) or real(sql, params)
    for page in range(1, 11):
        assert (json.loads(st.task_page_json(page=page)[0]), 250) == \
            page_in_python(st, page=page)
    assert reads == [[100, 0], [150, 0], [20, 140], [20, 160], [20, 180]]
    d2 = [json.loads(st.task_page_json(serial="d2", page=page)[0]) for page in (1, 4)]
    assert [d2, reads[5:]] == [[page_in_python(st, serial="d2", page=page)[0]
                                for page in (1, 4)], [[100, 0]]]
    assert json.loads(st.task_page_json(serial="d2", page=6)[0]) == []   # 84 in all
    assert len(reads) == 6                               # the window held them all
    st.create_tasks([new("d1")])                         # a commit: read again
    assert (json.loads(st.task_page_json(page=2)[0]), 251) == page_in_python(st, page=2)
    assert reads[6:] == [[100, 0]]


@pytest.mark.parametrize("when", [datetime.datetime(1960, 7, 1, 12, 0, 0, 500000),
                                  datetime.datetime(2040, 7, 1, 12, 0, 0, 999000)])
def test_a_page_with_times_sqlite_shows_otherwise_is_built_in_python(st, clock,
                                                                     berlin_time, when):
    """sqlite 3.40 takes the local time of a date outside 1971-2037 from another year's
    offset (summer time lost): such a page is built as task_to_json builds it."""
    tasks_in_every_state(st, clock)
    st.create_tasks([new("far", start_time=when.timestamp(), expire_at=when.timestamp())])
    text, total = st.task_page_json()
    assert json.loads(text)[0]["start_time"] == when.strftime("%Y-%m-%d %H:%M:%S")
    assert (json.loads(text), total) == page_in_python(st)


def test_format_time_in_sql_equals_format_time(st, berlin_time):
    """Fractional, whole, negative-free and NULL epochs across both summer-time changes."""
    base = datetime.datetime(2026, 3, 29, 0, 0, 0).timestamp()
    epochs = [None, 31536000, 2145916799] + [
        base + hour * 1800 + frac for hour in range(8) for frac in (0, 0.4, 0.9996, 0.99999)]
    base = datetime.datetime(2026, 10, 25, 0, 0, 0).timestamp()
    epochs += [base + hour * 1800 + frac for hour in range(8) for frac in (0, 0.9996)]
    for epoch in epochs:
        assert st.query_one(f"SELECT {tml._time_sql('?1')}", (epoch,))[0] == \
            tml.format_time(epoch), epoch


# ---------------------------------------------------------------------------
# issue 9's reads kept until the next commit (the server is the file's sole writer)
# ---------------------------------------------------------------------------

def test_kept_reads_follow_every_commit_and_never_a_transaction(open_store):
    st = open_store(clock_=FakeClock(T0))
    st.sole_writer = True
    assert (st.stats()["total"], st.has_admin_key()) == (0, False)
    task_id = st.create_tasks([new("d1")])[0]
    assert (st.stats()["pending"], st.list_tasks(serial="d1")[1]) == (1, 1)
    st.add_api_key("boss", "admin", "hash")
    assert st.has_admin_key()
    with st.write() as conn:                       # a read inside a write sees the write
        conn.execute("DELETE FROM api_keys")
        assert not st.has_admin_key()
        conn.execute("ROLLBACK")                   # ... which may roll back
        conn.execute("BEGIN IMMEDIATE")
    assert st.has_admin_key()
    st.claim_next("d1", T0 + 1)
    assert (st.stats()["pending"], st.stats()["running"]) == (0, 1)
    assert json.loads(st.task_page_json()[0])[0]["progress"] == 0
    st.set_progress(task_id, 30, "in memory")          # no commit: the page changes too
    shown = json.loads(st.task_page_json()[0])[0]
    assert (shown["progress"], shown["message"]) == (30, "in memory")
    st.delete_task(task_id)
    assert st.stats()["total"] == st.list_tasks(serial="d1")[1] == 0
    assert st.task_page_json() == ("[]", 0)
    key_id = st.list_api_keys()[0]["id"]               # the keys have a count of their own
    st.create_tasks([new("d1")])
    assert st.has_admin_key()
    st.delete_api_key(key_id)
    assert not st.has_admin_key()
    st.add_api_key("viewer", "viewer", "hash2")
    assert not st.has_admin_key()
    st.add_api_key("boss", "admin", "hash3")
    assert st.has_admin_key()


def test_a_known_device_is_kept_until_a_device_comes_or_goes(open_store):
    """device_known (every POST /task) is read again after each commit that adds or
    removes a device, and only then: a task's write does not make it ask sqlite."""
    st = open_store(clock_=FakeClock(T0))
    st.sole_writer = True
    assert not st.device_known("d1")
    with st.write() as conn:                       # a device added, then rolled back
        conn.execute("INSERT INTO devices (serial, first_seen) VALUES ('d1', 0)")
        assert st.device_known("d1")               # the write's own read sees it
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
    assert not st.device_known("d1")
    st.upsert_device("d1", state="device")
    assert st.device_known("d1") and not st.device_known("d2")
    reads = []
    st._reader().set_trace_callback(reads.append)
    st.create_tasks([new("d1")])
    st.upsert_device("d1", state="offline")        # a change of the row, not of the rows
    assert st.device_known("d1") and not st.device_known("d2")
    assert not [sql for sql in reads if sql.startswith("SELECT 1 FROM devices")]
    st._reader().set_trace_callback(None)
    st.upsert_device("d2", state="device")
    assert st.device_known("d2")
    st.delete_task(st.list_tasks(serial="d1")[0][0]["id"])
    assert st.delete_device("d1")
    assert not st.device_known("d1") and st.device_known("d2")


def test_a_store_that_is_not_the_sole_writer_keeps_nothing(db_path):
    """Two stores on one file (two processes): each sees the other's commits."""
    first, second = tml.Store(db_path), tml.Store(db_path)
    try:
        assert first.stats()["total"] == 0 and not first.has_admin_key()
        second.create_tasks([new("d1")])
        second.add_api_key("boss", "admin", "hash")
        assert first.stats()["total"] == first.list_tasks(serial="d1")[1] == 1
        assert first.has_admin_key()
        assert not first.device_known("d9")
        second.upsert_device("d9", state="device")
        assert first.device_known("d9")
    finally:
        first.close()
        second.close()


def test_the_server_is_its_database_s_sole_writer(make_config, tmp_path):
    lite = tml.Server(make_config(db=tmp_path / "own.db"), with_devices=True)
    try:
        assert lite.store.sole_writer
    finally:
        lite.close()


def test_in_task_end_listeners_write_in_the_ending_transaction(st, db_path):
    """What a listener writes (an account's cooldown) is committed with the task's end,
    so no reader sees one without the other; a listener that fails takes back only its
    own writes, and the task still ends."""
    assert st.save_account("shop_a", "d1", "tiktok", "com.zhiliaoapp.musically", True,
                           create=True)
    seen_inside = []

    def cooldown(task_id, outcome):
        seen_inside.append(on_disk(db_path, "SELECT status FROM tasks WHERE id=?",
                                   (task_id,))[0][0])
        st.set_cooldown("shop_a", T0 + 3600)

    def broken(task_id, outcome):
        st.set_cooldown("shop_a", T0 + 99)
        raise RuntimeError("a bug in a listener")
    st.in_task_end += [cooldown, broken]
    task_id = claimed_task(st, "d1")
    assert st.fail(task_id, "account blocked: Try again later")
    assert seen_inside == [tml.RUNNING]           # not committed yet while it ran
    assert on_disk(db_path, "SELECT status FROM tasks WHERE id=?", (task_id,))[0][0] == \
        tml.FAILED
    assert on_disk(db_path, "SELECT cooldown_until FROM accounts WHERE username='shop_a'"
                   )[0][0] == T0 + 3600


def test_new_tasks_are_written_in_one_statement_unless_lines_wait_in_memory(st):
    """A lone INSERT is atomic by itself: no BEGIN and COMMIT around it, and it holds up
    to INSERT_ROWS tasks. More tasks are one transaction, all or none. While a task that
    runs here has lines waiting in memory, the create writes them too, in one
    transaction."""
    st.upsert_device("d1", state="device")
    st.upsert_device("d2", state="device")
    said = []
    st._writer.set_trace_callback(said.append)
    st.create_tasks([new("d1")])
    assert said[0].startswith("INSERT INTO tasks")     # (then its triggers' statements)
    assert not {"BEGIN", "COMMIT"} & {sql.split()[0] for sql in said}
    with pytest.raises(sqlite3.IntegrityError):    # a lone statement that fails leaves nothing
        st.create_tasks([new(None)])
    del said[:]
    with pytest.raises(sqlite3.IntegrityError):    # nor does one of several rows
        st.create_tasks([new("d2"), new(None)])
    assert {sql.split()[0] for sql in said} == {"INSERT"}          # and its triggers
    del said[:]
    with pytest.raises(sqlite3.IntegrityError):    # nor a transaction of several statements
        st.create_tasks([new("d2")] * tml.INSERT_ROWS + [new(None)])
    assert said[0] == "BEGIN IMMEDIATE" and said[-1] == "ROLLBACK"
    assert [r["serial"] for r in rows(st)] == ["d1"]
    del said[:]
    ids = st.create_tasks([new("d2")] * (tml.INSERT_ROWS + 1))
    assert said[0] == "BEGIN IMMEDIATE" and said[-1] == "COMMIT"
    assert ids == list(range(ids[0], ids[0] + tml.INSERT_ROWS + 1))
    assert [r["id"] for r in rows(st) if r["serial"] == "d2"] == ids
    running = st.claim_next("d1", st.clock() + 1)
    st.add_log(running["id"], "waits in memory")
    del said[:]
    st.create_tasks([new("d2")])
    assert said[0] == "BEGIN IMMEDIATE" and said[-1] == "COMMIT"
    st._writer.set_trace_callback(None)
    assert [r["line"] for r in st.query("SELECT line FROM task_log WHERE task_id=?",
                                        (running["id"],))] == ["waits in memory"]
    assert not st._writer.in_transaction


def test_time_range_totals_match_a_count_of_the_tasks(st, clock):
    """GET /task's time range adds whole hours from task_hours and counts the partial
    ones: on tasks spread over three days (a clock that once steps back, some deleted),
    every range gives the total and the page a plain scan gives, at hour boundaries,
    inside one hour, open on either side, and upside down."""
    rng = random.Random(5)
    for n in range(400):
        clock.now += rng.choice([1, 30, 600, 2400, 7200]) if n != 200 else -5000
        st.create_tasks([new(serial=rng.choice(["d1", "d2"]))])
    ids = [r[0] for r in st.query("SELECT id FROM tasks")]
    for task_id in rng.sample(ids, 60):
        st.delete_task(task_id)
    first = T0 - 3600
    bounds = [first + 3600 * h for h in range(80)] + [rng.uniform(first, clock.now)
                                                     for _ in range(60)]
    cases = [(rng.choice(bounds), rng.choice(bounds)) for _ in range(150)]
    cases += [(None, rng.choice(bounds)), (rng.choice(bounds), None), (T0 + 10, T0 + 20)]
    for low, high in cases:
        for serial in (None, "d2"):
            found, total = st.list_tasks(created_from=low, created_to=high, serial=serial,
                                         page_size=7)
            plain = [r[0] for r in st.query(
                "SELECT id FROM tasks NOT INDEXED WHERE created_at BETWEEN ? AND ?"
                " AND (? IS NULL OR serial = ?) ORDER BY id DESC",
                (-1e18 if low is None else low, 1e18 if high is None else high,
                 serial, serial))]
            assert total == len(plain), (low, high, serial)
            assert [r["id"] for r in found] == plain[:7], (low, high, serial)


@pytest.mark.parametrize("low, high", [(9.223372036854774e18, None), (None, -9.3e18),
                                       (1e300, 1e308), (-1e308, 1e308)])
def test_time_range_at_the_ends_of_the_numbers(st, low, high):
    """A range beyond sqlite's 64-bit integers is a range like another (the hours are
    bound as floats): nothing there, or everything."""
    st.create_tasks([new()])
    _, total = st.list_tasks(created_from=low, created_to=high)
    assert total == (1 if (low, high) == (-1e308, 1e308) else 0)
