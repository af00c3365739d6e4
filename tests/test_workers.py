"""SPEC 8.4, external workers: scripts with RUNNER = "external", leases, races.

The race and the life of a task go through a real waitress server; lease expiry is
driven synchronously on an injected clock.
"""
from __future__ import annotations

import threading

import pytest

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock
from test_task_end import LiveServer

API = "/api/v1"


@pytest.fixture
def live(make_config):
    server = LiveServer(make_config(host="127.0.0.1"))
    yield server
    server.close()


def new_job(server_or_client, **extra):
    body = {"script_name": "ext_job", "script_config": {"size": 3}, **extra}
    if isinstance(server_or_client, LiveServer):
        reply = server_or_client.call("POST", "/task", body)
    else:
        reply = server_or_client.post_json(f"{API}/task", body, expect_errors=True).json
    assert reply["code"] == 0, reply
    return reply["data"]["task_ids"][0]


def test_two_workers_racing_for_one_task_exactly_one_gets_it(live):
    task_id = new_job(live)
    barrier = threading.Barrier(2)
    answers = {}

    def worker(name):
        barrier.wait(10)
        answers[name] = live.call("POST", "/worker/next",
                                  {"worker_id": name, "script_names": ["ext_job"]})
    threads = [threading.Thread(target=worker, args=(n,)) for n in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert all(a["code"] == 0 for a in answers.values()), answers
    got = {n: a["data"] for n, a in answers.items() if a["data"] is not None}
    assert len(got) == 1
    (winner, task), = got.items()
    assert task["id"] == task_id and task["status"] == 1 and task["worker_id"] == winner


def test_a_task_from_next_to_complete_through_the_server(live):
    task_id = new_job(live)
    assert live.call("POST", "/worker/next", {"worker_id": "w", "script_names": ["echo"]})[
        "code"] == 40001                                  # not an external script
    task = live.call("POST", "/worker/next", {"worker_id": "w", "script_names": ["ext_job"],
                                              "lease_seconds": 60})["data"]
    assert task["id"] == task_id and task["script_config"] == {"size": 3}
    assert live.call("POST", "/worker/next", {"worker_id": "w2",
                                              "script_names": ["ext_job"]})["data"] is None
    other = live.call("POST", "/worker/progress", {"task_id": task_id, "worker_id": "w2",
                                                   "progress": 50})
    assert other["code"] == 40001 and "w2" in other["message"]
    progress = live.call("POST", "/worker/progress", {"task_id": task_id, "worker_id": "w",
                                                      "progress": 40, "message": "rendering"})
    assert progress["data"]["progress"] == 40 and progress["data"]["message"] == "rendering"
    done = live.call("POST", "/worker/complete", {"task_id": task_id, "worker_id": "w",
                                                  "result": {"url": "http://x/v.mp4"}})
    assert done["data"]["status"] == 2 and done["data"]["result"] == {"url": "http://x/v.mp4"}
    assert done["data"]["worker_id"] == "w"           # who did it stays on record
    assert live.call("POST", "/worker/complete", {"task_id": task_id, "worker_id": "w",
                                                  "result": None})["code"] == 40001


@pytest.fixture
def api(make_app, config, make_client):
    clock = FakeClock(T0)
    app = make_app(config, clock)
    return app, make_client(app), clock


def take(client, worker="w", lease=30):
    return client.post_json(f"{API}/worker/next", {
        "worker_id": worker, "script_names": ["ext_job"], "lease_seconds": lease}).json["data"]


def test_a_lease_that_runs_out_puts_the_task_back_then_fails_it_at_the_limit(api):
    app, client, clock = api
    task_id = new_job(client, max_retry_count=1)
    assert take(client)["id"] == task_id
    scheduler = app.lite.scheduler
    clock.advance(20)
    client.post_json(f"{API}/worker/progress", {"task_id": task_id, "worker_id": "w",
                                                "progress": 10})   # renews: until +50
    clock.advance(29)
    _, wake = scheduler.tick()
    assert wake == T0 + 50 and app.lite.store.get_task(task_id)["status"] == 1
    clock.advance(1)
    scheduler.tick()                                   # the worker died: lease ran out
    row = app.lite.store.get_task(task_id)
    assert row["status"] == 0 and row["retry_count"] == 1 and row["worker_id"] is None
    assert take(client, "w2")["id"] == task_id
    clock.advance(30)
    scheduler.tick()
    task = client.get(f"{API}/task/{task_id}").json["data"]
    assert task["status"] == 3 and task["error"] == "worker lease expired"


def test_fail_with_allow_retry_waits_then_pending_without_fails_for_good(api):
    app, client, clock = api
    again, final = new_job(client), new_job(client)
    take(client, "w")
    take(client, "w")
    reply = client.post_json(f"{API}/worker/fail", {"task_id": again, "worker_id": "w",
                                                    "error": "ffmpeg crashed",
                                                    "allow_retry": True}).json["data"]
    assert reply["status"] == 0 and reply["retry_count"] == 1
    start = app.lite.store.get_task(again)["start_time"]
    assert T0 + 5 <= start <= T0 + 60                  # the usual auto-retry wait
    reply = client.post_json(f"{API}/worker/fail", {"task_id": final, "worker_id": "w",
                                                    "error": "bad footage"}).json["data"]
    assert reply["status"] == 3 and reply["error"] == "bad footage"


def test_external_tasks_need_no_phone_and_runners_never_start_them(api):
    app, client, _ = api
    store = app.lite.store
    store.upsert_device("phone-1", state="device")
    bare = new_job(client)
    assert client.get(f"{API}/task/{bare}").json["data"]["serial"] == ""
    on_phone = new_job(client, serials=["phone-1"])
    assert store.claim_next("phone-1", T0 + 3600) is None          # never a phone's task
    reply = client.post_json(f"{API}/task", {"script_name": "echo", "script_config":
                                             {"text": "x"}}, expect_errors=True).json
    assert reply["code"] == 40001 and reply["message"].startswith("serials")
    assert {take(client, "a")["id"], take(client, "b")["id"]} == {bare, on_phone}
    assert store.running_count() == 2                  # two external tasks run at once


def test_a_timeout_on_an_external_task_is_refused_not_ignored(api):
    """SPEC 8.3's timeout stops a phone's script; a worker's task is bounded by its lease."""
    _, client, _ = api
    reply = client.post_json(f"{API}/task", {"script_name": "ext_job", "script_config":
                                             {"size": 3}, "timeout": 60},
                             expect_errors=True).json
    assert reply["code"] == 40001 and reply["message"].startswith("timeout: ext_job runs on "
                                                                  "an external worker")
    assert client.get(f"{API}/task/stats").json["data"]["total"] == 0


@pytest.mark.parametrize("body, field", [
    ({"script_names": ["ext_job"]}, "worker_id"),
    ({"worker_id": "w"}, "script_names"),
    ({"worker_id": "w", "script_names": []}, "script_names"),
    ({"worker_id": "w", "script_names": ["ext_job"], "lease_seconds": 29}, "lease_seconds"),
    ({"worker_id": "w", "script_names": ["ext_job"], "lease_seconds": 3601}, "lease_seconds"),
    ({"worker_id": "w", "script_names": ["nope"]}, "script_names[0]"),
])
def test_bad_worker_calls_are_40001(api, body, field):
    _, client, _ = api
    reply = client.post_json(f"{API}/worker/next", body, expect_errors=True).json
    assert reply["code"] == 40001 and reply["message"].startswith(field), reply


def test_a_script_cannot_be_external_and_have_run(tmp_path):
    path = tmp_path / "both.py"
    path.write_text("RUNNER = 'external'\ndef run(phone, task):\n    pass\n")
    with pytest.raises(tml.ScriptError, match="external"):
        tml.load_script(path)
    path.write_text("RUNNER = 'cloud'\n")
    with pytest.raises(tml.ScriptError, match="RUNNER"):
        tml.load_script(path)


def test_a_restart_leaves_a_workers_task_running_under_its_lease(make_app, config):
    clock = FakeClock(T0)
    first = make_app(config, clock)
    task_id = first.lite.store.create_tasks([tml.NewTask("", "ext_job", {"size": 1},
                                                         external=True)])[0]
    assert first.lite.store.worker_claim("w", ["ext_job"], 300, T0)["id"] == task_id
    first.lite.close()
    again = make_app(config, clock)
    again.lite.start()                                  # recovers interrupted phone tasks
    row = again.lite.store.get_task(task_id)
    assert row["status"] == 1 and row["worker_id"] == "w" and row["lease_until"] == T0 + 300
