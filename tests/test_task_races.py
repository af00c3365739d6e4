"""Task operations racing each other: never a 500, never a half-done change.

Each race starts both sides at a barrier, many rounds; the interleaving that used to
break (a delete landing between a change and the read of its answer, a delete landing
on a task the scheduler just claimed) is also forced deterministically.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import webtest

import tikmatrix_lite as tml
from farm import FakeClock, wait_until

API = tml.API_PREFIX
SCRIPTS = Path(__file__).resolve().parent / "fixtures" / "policy_scripts"
ROUNDS = 60


@pytest.fixture
def http(app, add_device):
    add_device("d1")
    return webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"})


def new_task(http, status=None):
    reply = http.post_json(API + "/task", {"serials": ["d1"], "script_name": "echo",
                                           "script_config": {"text": "x"}}).json
    task_id = reply["data"]["task_ids"][0]
    if status is not None:
        store = http.app.lite.store
        with store.write() as conn:
            conn.execute("UPDATE tasks SET status=? WHERE id=?", (status, task_id))
    return task_id


def race(first, second):
    """Run both at once (a barrier releases them together); their answers."""
    barrier = threading.Barrier(2)
    answers = [None, None]

    def side(i, call):
        barrier.wait(timeout=10)
        answers[i] = call()
    threads = [threading.Thread(target=side, args=(i, c)) for i, c in
               enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return answers


def request(http, method, path, body=None):
    def call():
        if body is None:
            return http.request(API + path, method=method, expect_errors=True)
        return http.request(API + path, method=method, body=tml.json.dumps(body).encode(),
                            content_type="application/json", expect_errors=True)
    return call


@pytest.mark.parametrize("status, method, path, batch", [
    (tml.FAILED, "POST", "/task/{}/retry", False),
    (tml.FAILED, "POST", "/task/batch/retry", True),
    (tml.PENDING, "POST", "/task/{}/stop", False),
    (tml.PENDING, "POST", "/task/batch/stop", True),
])
def test_an_operation_racing_delete_never_fails_the_server(http, status, method, path,
                                                            batch):
    for _ in range(ROUNDS):
        task_id = new_task(http, status)
        body = {"task_ids": [task_id]} if batch else None
        op, deleted = race(request(http, method, path.format(task_id), body),
                           request(http, "DELETE", f"/task/{task_id}"))
        assert op.status_int < 500 and deleted.status_int < 500, (op.json, deleted.json)
        assert op.json["code"] in (0, 40401), op.json
        assert deleted.json["code"] in (0, 40401), deleted.json
        assert http.app.lite.store.get_task(task_id) is None or \
            deleted.json["code"] == 40401


def test_a_delete_cannot_land_inside_a_retry(http):
    """The delete is let go once the retry has changed the task, before it answers: it
    lands before the retry reads its answer only if the retry is not one transaction."""
    store = http.app.lite.store
    task_id = new_task(http, tml.FAILED)
    real_retry, delete_called = store.retry, threading.Event()
    answers = {}

    def delete():
        delete_called.set()
        answers["delete"] = request(http, "DELETE", f"/task/{task_id}")()

    def retry_then_let_delete_go(tid):
        changed = real_retry(tid)
        thread = threading.Thread(target=delete)
        thread.start()
        assert delete_called.wait(10)
        answers["thread"] = thread
        return changed
    store.retry = retry_then_let_delete_go
    reply = http.post(API + f"/task/{task_id}/retry").json
    answers["thread"].join(timeout=30)
    assert reply["code"] == 0 and reply["data"]["status"] == tml.PENDING
    assert answers["delete"].json["code"] == 0 and store.get_task(task_id) is None


# -- a delete against the scheduler's claim ---------------------------------------------
@pytest.fixture
def lite(tmp_path):
    config = tml.Config(db=tmp_path / "r.db", scripts=SCRIPTS, adb_servers=["127.0.0.1:1"])
    lite = tml.Server(config, clock=FakeClock())       # never started: no adb needed
    lite.store.upsert_device("p1", state="device")
    with lite.devices._lock:
        lite.devices._state["p1"] = ("device", lite.devices.links[0])
    yield lite
    for script in lite.scripts.values():
        for name in ("RELEASE", "STARTED"):
            event = script.run.__globals__.get(name)
            if event is not None:
                event.set()
    wait_until(lambda: lite.runner.active_count() == 0, 15, "runner idle")
    lite.close()


def pending(lite, script):
    return lite.store.create_tasks([tml.NewTask(serial="p1", script_name=script,
                                                script_config={})])[0]


def claim_between_read_and_delete(lite):
    """The scheduler claims the task right after the delete has read it as pending."""
    real_get = lite.tasks.get

    def get(task_id):
        row = real_get(task_id)
        lite.tasks.get = real_get
        assert lite.runner.claim_and_start("p1", lite.clock()) is not None
        return row
    lite.tasks.get = get


def test_delete_of_a_task_being_claimed_stops_its_script(lite, caplog):
    caplog.set_level(logging.INFO, "tikmatrix_lite")
    task_id = pending(lite, "wait")
    claim_between_read_and_delete(lite)
    lite.tasks.delete(task_id)
    assert lite.store.get_task(task_id) is None
    wait_until(lambda: lite.runner.active_count() == 0, 15, "the script stopped")
    text = caplog.text
    assert "FOREIGN KEY" not in text and "runner failed" not in text, text


def test_a_script_still_running_after_its_delete_writes_nothing(lite, caplog):
    caplog.set_level(logging.INFO, "tikmatrix_lite")
    lite.tasks.stop_wait = 0                      # do not wait for the deaf script
    task_id = pending(lite, "hold")
    events = lite.scripts["hold"].run.__globals__
    assert lite.runner.claim_and_start("p1", lite.clock()) is not None
    assert events["STARTED"].wait(10)
    lite.tasks.delete(task_id)                    # the script is still in its long call
    assert lite.store.get_task(task_id) is None
    events["RELEASE"].set()
    wait_until(lambda: lite.runner.active_count() == 0, 15, "the script ended")
    assert lite.store.task_log(task_id) == []
    assert f"task {task_id} on p1: gone" in caplog.text
    assert "FOREIGN KEY" not in caplog.text and "runner failed" not in caplog.text
