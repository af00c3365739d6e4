"""The Store on its own, synchronously: schema, lifecycle compare-and-sets, concurrency."""
from __future__ import annotations

import json
import random
import sqlite3
import threading

import pytest

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
        tml.Lite(make_config(db=db_path), with_devices=False)


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
    st.set_progress(ids[0], 40, "halfway")
    before = {r["id"]: r for r in rows(st)}
    devices_before = [dict(r) for r in st.query("SELECT * FROM devices ORDER BY serial")]
    clock.advance(3600)
    assert sorted(st.recover_interrupted()) == [ids[0], ids[1]]
    after = {r["id"]: r for r in rows(st)}
    assert set(after) == set(before)
    for task_id in (ids[0], ids[1]):
        changed = {k for k in before[task_id] if before[task_id][k] != after[task_id][k]}
        assert changed == {"status", "end_time", "error", "message"}
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


def test_migration_2_keeps_the_tasks_of_a_version_1_database(tmp_path):
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
