"""Live events (SPEC 7.1): the hub, the stream over a real waitress server, and that
open streams never starve the API."""
from __future__ import annotations

import socket
import threading

import pytest

import tikmatrix_lite as tl
from farm import wait_until
from live_server import EventReader, serve


@pytest.fixture
def hub(tmp_path):
    store = tl.Store(tmp_path / "h.db")
    yield tl.EventHub(store, size=5)
    store.close()


def test_store_commits_become_numbered_events(hub):
    store = hub.store
    store.upsert_device("P1", state="device")
    [task_id] = store.create_tasks([tl.NewTask(serial="P1", script_name="echo",
                                               script_config={})])
    events = hub.wait_after(hub.first_id - 1, 0)
    kinds = [(k, tl.json.loads(d).get("id") or tl.json.loads(d).get("serial"))
             for _, k, d in events]
    assert ("device", "P1") in kinds and ("task", task_id) in kinds
    ids = [i for i, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    last = hub.last_id
    store.set_progress(task_id, 50, "half")          # pending: no change, still announced
    store.claim_next("P1", store.clock())
    store.set_progress(task_id, 40, "going")
    after = hub.wait_after(last, 0)
    tasks = [tl.json.loads(d) for _, k, d in after if k == "task"]
    assert tasks[-1]["progress"] == 40 and tasks[-1]["status_text"] == "running"
    assert tasks[-1]["message"] == "going"
    devices = [tl.json.loads(d) for _, k, d in after if k == "device"]
    assert devices[-1]["running_task_id"] == task_id


def test_an_account_cooling_down_and_resumed_is_an_account_event(hub):
    """SPEC 7.1's account event carries issue 10's cooldown (AccountSafety and
    POST /account/{username}/resume both go through Store.set_cooldown)."""
    store = hub.store
    store.upsert_device("P1", state="device")
    store.save_account("shop", "P1", "tiktok", "com.zhiliaoapp.musically", True, True)
    last = hub.last_id
    until = store.clock() + 3600
    store.set_cooldown("shop", until)
    [(_, kind, data)] = hub.wait_after(last, 0)
    assert kind == "account"
    assert tl.json.loads(data) == {"username": "shop", "status": "cooldown", "serial": "P1",
                                   "cooldown_until": tl.format_time(until)}
    last = hub.last_id
    store.set_cooldown("shop", None)
    [(_, kind, data)] = hub.wait_after(last, 0)
    assert tl.json.loads(data)["status"] == "enabled"
    assert tl.json.loads(data)["cooldown_until"] is None


def test_a_rolled_back_write_announces_nothing(hub):
    store = hub.store
    before = hub.last_id
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            conn.execute("INSERT INTO devices (serial, first_seen) VALUES ('X', 0)")
            store._note("device", "X")
            raise RuntimeError("boom")
    assert hub.last_id == before


def test_ring_keeps_the_newest_and_a_stale_id_is_missed(hub):
    for n in range(8):
        hub.publish("task", {"id": n})
    assert len(hub.wait_after(0, 0)) == 5            # ring of 5
    assert hub.missed(hub.first_id)                  # events after it fell out
    assert not hub.missed(hub.last_id - 2)
    assert hub.missed(hub.last_id + 10)              # an id from another run


def test_wait_after_wakes_on_publish_without_polling(hub):
    got = []
    after = hub.last_id
    t = threading.Thread(target=lambda: got.extend(hub.wait_after(after, 30)))
    t.start()
    hub.publish("material", {"id": 1, "used_count": 0})
    t.join(10)
    assert not t.is_alive() and got[0][1] == "material"


def test_the_stream_replays_missed_events_then_goes_live(config):
    with serve(config, with_devices=False) as srv:
        store = srv.lite.store
        store.upsert_device("P1", state="device")
        first = srv.lite.events.last_id
        store.upsert_device("P2", state="device")
        reader = EventReader(srv.port, headers={"Last-Event-ID": str(first)})
        try:
            event = reader.next()
            assert event["event"] == "device" and event["data"]["serial"] == "P2"
            assert event["id"] == first + 1
            status, reply = srv.request("POST", "/api/v1/account", {
                "username": "@shop", "serial": "P1", "platform": "tiktok"})
            assert reply["code"] == 0
            event = reader.until(lambda e: e["event"] == "account")
            assert event["data"] == {"username": "shop", "status": "enabled",
                                     "cooldown_until": None, "serial": "P1"}
        finally:
            reader.close()
        # ?after= works too, and a stale id gets a reset
        reader = EventReader(srv.port, path=f"/api/v1/events?after={first}")
        try:
            assert reader.next()["data"]["serial"] == "P2"
        finally:
            reader.close()
        reader = EventReader(srv.port, path="/api/v1/events?after=5")
        try:
            assert reader.next()["event"] == "reset"
        finally:
            reader.close()
        status, reply = srv.request("GET", "/api/v1/events?after=x")
        assert status == 400 and reply["message"].startswith("after:")


def test_open_streams_never_starve_the_api(config):
    """Every stream slot taken: the API still answers, and one stream more is refused
    with a clear error instead of queueing behind the others."""
    with serve(config, with_devices=False) as srv:
        readers = []
        try:
            for _ in range(tl.EVENT_STREAMS):
                readers.append(EventReader(srv.port))
            # each stream has started (its first line sent) before we ask the API
            for r in readers:
                assert r.response.status == 200
            for _ in range(tl.API_THREADS * 2):
                status, reply = srv.request("GET", "/api/v1/task/stats", timeout=10)
                assert status == 200 and reply["code"] == 0
            status, reply = srv.request("GET", "/api/v1/events", timeout=10)
            assert status == 500 and "too many event streams" in reply["message"]
            srv.lite.store.upsert_device("P9", state="device")
            for r in readers:
                assert r.next()["data"]["serial"] == "P9"
        finally:
            for r in readers:
                r.close()


def test_the_pool_runs_one_thread_more_per_open_stream(config):
    """The API keeps its API_THREADS threads whatever streams are open, and no thread
    runs for a stream that is not open: idle ones in the pool cost every request."""
    with serve(config, with_devices=False) as srv:
        pool = srv.server.task_dispatcher

        def running():
            with pool.lock:
                return len(pool.threads) - pool.stop_count
        assert running() == tl.API_THREADS
        clients = []
        try:
            for _ in range(3):
                client = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                clients.append(client)
                client.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: lite\r\n\r\n")
                assert client.recv(64).startswith(b"HTTP/1.1 200")
            assert running() == tl.API_THREADS + 3      # set before the stream's headers
            for _ in range(tl.API_THREADS * 2):
                status, reply = srv.request("GET", "/api/v1/task/stats", timeout=10)
                assert status == 200 and reply["code"] == 0
        finally:
            for client in clients:
                client.close()
        # a stream notices its client left when a write fails: events make it write
        wait_until(lambda: srv.lite.events.publish("ping", {}) and
                   running() == tl.API_THREADS, 10, "the streams' threads gone")


def test_a_created_task_is_told_as_written_and_before_any_later_commit(hub):
    """A new task's event is made from what the create wrote, and its phone's from the
    row as the create left it, read by the writer (no read back after the commit); both
    are published under the write lock, so a claim waiting for the lock meanwhile comes
    after them and the last events say running."""
    store = hub.store
    store.upsert_device("P1", state="device")
    claimed, claimers, under_lock = [], [], []
    told_written = store.on_written

    def on_written(kind, rows):             # the create's rows, told after its commit
        if not claimers:                    # a claim now waits for the create's lock
            claimers.append(threading.Thread(target=lambda: claimed.append(
                store.claim_next("P1", store.clock()))))
            claimers[0].start()
        told_written(kind, rows)
        under_lock.append(store._write_lock._is_owned())
    store.on_written = on_written
    last = hub.last_id
    [task_id] = store.create_tasks([tl.NewTask(serial="P1", script_name="echo",
                                               script_config={}, username="shop",
                                               message="starts at 10:00")])
    claimers[0].join(10)
    store.on_written = told_written
    assert claimed and claimed[0]["id"] == task_id
    assert under_lock == [True, True]                  # the task's rows, then the phone's
    told = [(k, tl.json.loads(d)) for _, k, d in hub.wait_after(last, 0)]
    assert [(k, t.get("status_text"), t.get("pending_count")) for k, t in told] == [
        ("task", "pending", None), ("device", None, 1), ("task", "running", None),
        ("device", None, 0)]
    with store.write() as conn:             # the same rows read back, as they were then
        conn.execute("UPDATE tasks SET status=0, message='starts at 10:00' WHERE id=?",
                     (task_id,))
    assert told[0][1] == hub.describe("task", task_id)
    assert told[1][1] == hub.describe("device", "P1")
