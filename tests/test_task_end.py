"""SPEC 8.3, the end of a task: webhooks, expiry, timeout, retry-all and stopped tasks.

Webhooks go end to end: a real waitress server runs Lite, a real HTTP server on
127.0.0.1 receives the deliveries and checks their signature. The retry schedule and
expiry are driven synchronously on an injected clock.
"""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import queue
import threading
import urllib.request

import pytest

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock, Farm, wait_until

API = "/api/v1"
SECRET = "s3cret-for-tests"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST and answers with the
    statuses queued in ``answers`` (200 when empty). ``hold`` keeps requests waiting."""

    def __init__(self):
        self.received: "queue.Queue[dict]" = queue.Queue()
        self.answers: list = []
        self.hold = threading.Event()
        self.hold.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.put({"path": self.path, "headers": dict(self.headers),
                                       "body": body})
                receiver.hold.wait(30)
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 10) -> dict:
        return self.received.get(timeout=timeout)

    def close(self):
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class LiveServer:
    """Lite (no adb) behind a real waitress server on a free loopback port."""

    def __init__(self, config, clock=None):
        kwargs = {"with_devices": False}
        if clock is not None:
            kwargs["clock"] = clock
        self.lite = tml.Server(config, **kwargs)
        config.port = 0
        self.server = tml.make_server(config, self.lite)
        self.lite.start()
        self.url = f"http://127.0.0.1:{self.server.effective_port}{API}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def call(self, method: str, path: str, body=None, headers=None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def close(self):
        self.server.close()
        self.thread.join(5)
        self.lite.close()


@pytest.fixture
def live(make_config, receiver, add_device_to):
    servers = []

    def start(clock=None, **overrides):
        overrides.setdefault("webhooks", [receiver.url + "/global"])
        overrides.setdefault("webhook_secret", SECRET)
        server = LiveServer(make_config(host="127.0.0.1", **overrides), clock)
        servers.append(server)
        add_device_to(server.lite, "phone-1")
        return server
    yield start
    for server in servers:
        server.close()


@pytest.fixture
def add_device_to():
    def add(lite, serial):
        lite.store.upsert_device(serial, state="device")
    return add


def signature_ok(delivery: dict) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), delivery["body"],
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(delivery["headers"].get("X-TMLite-Signature", ""), expected)


# -- webhooks, end to end ---------------------------------------------------------------
def test_task_end_reaches_callback_url_and_global_webhook_signed(live, receiver):
    server = live()
    reply = server.call("POST", "/task", {
        "serials": ["phone-1"], "script_name": "echo", "script_config": {"text": "hi"},
        "callback_url": receiver.url + "/mine"})
    assert reply["code"] == 0, reply
    task_id = reply["data"]["task_ids"][0]
    assert server.call("POST", f"/task/{task_id}/stop")["code"] == 0

    got = {d["path"]: d for d in (receiver.next(), receiver.next())}
    assert set(got) == {"/mine", "/global"}
    ids = set()
    for delivery in got.values():
        headers = delivery["headers"]
        assert headers["Content-Type"] == "application/json"
        assert headers["X-TMLite-Event"] == "task.finished"
        assert signature_ok(delivery)
        ids.add(headers["X-TMLite-Delivery"])
        body = json.loads(delivery["body"])
        assert body["event"] == "task.finished"
        task = body["task"]
        assert task["id"] == task_id and task["status"] == 3
        assert task["error"] == "stopped by user" and task["message"] == "stopped by user"
        assert "log" not in task
    assert len(ids) == 2                              # each delivery has its own id

    listing = wait_until(lambda: (lambda items: items if all(
        i["last_status"] == "200" for i in items) and len(items) == 2 else None)(
        server.call("GET", "/webhook/deliveries")["data"]["items"]), 10, "deliveries logged")
    assert {i["url"] for i in listing} == {receiver.url + "/mine", receiver.url + "/global"}
    assert all(i["tries"] == 1 and i["next_try"] is None and i["event"] == "task.finished"
               for i in listing)


def test_tampered_body_fails_the_signature(live, receiver):
    server = live()
    task_id = server.call("POST", "/task", {"serials": ["phone-1"], "script_name": "echo",
                                            "script_config": {"text": "x"}})["data"][
        "task_ids"][0]
    server.call("POST", f"/task/{task_id}/stop")
    delivery = receiver.next()
    assert signature_ok(delivery)
    delivery["body"] = delivery["body"].replace(b'"status": 3', b'"status": 2')
    assert not signature_ok(delivery)


def test_no_secret_no_signature_header(live, receiver):
    server = live(webhook_secret=None)
    task_id = server.call("POST", "/task", {"serials": ["phone-1"], "script_name": "echo",
                                            "script_config": {"text": "x"}})["data"][
        "task_ids"][0]
    server.call("POST", f"/task/{task_id}/stop")
    assert "X-TMLite-Signature" not in receiver.next()["headers"]


def test_a_hanging_receiver_blocks_no_request(live, receiver):
    """The delivery thread is stuck in the receiver; the API still answers at once."""
    server = live()
    receiver.hold.clear()                            # the receiver holds every request
    first = server.call("POST", "/task", {"serials": ["phone-1"], "script_name": "echo",
                                          "script_config": {"text": "a"}})["data"]["task_ids"][0]
    server.call("POST", f"/task/{first}/stop")
    receiver.next()                                  # the delivery is in flight, held
    second = server.call("POST", "/task", {"serials": ["phone-1"], "script_name": "echo",
                                           "script_config": {"text": "b"}})
    assert second["code"] == 0
    stopped = server.call("POST", f"/task/{second['data']['task_ids'][0]}/stop")
    assert stopped["code"] == 0 and stopped["data"]["status"] == 3
    assert not receiver.hold.is_set()                # all of it while the receiver held
    receiver.hold.set()
    assert receiver.next()["headers"]["X-TMLite-Event"] == "task.finished"


# -- the retry schedule, on an injected clock ----------------------------------------------
@pytest.fixture
def hooks(make_app, make_config, receiver):
    clock = FakeClock(T0)
    app = make_app(make_config(webhooks=[receiver.url + "/g"], webhook_secret=SECRET), clock)
    app.lite.store.upsert_device("phone-1", state="device")
    return app.lite, clock


def _stop_new_task(lite):
    task_id = lite.store.create_tasks([tml.NewTask("phone-1", "echo", {"text": "x"})])[0]
    lite.tasks.stop(task_id)
    return task_id


def test_failed_deliveries_back_off_then_stop_at_two_hundred(hooks, receiver):
    lite, clock = hooks
    receiver.answers = [500, 503]
    _stop_new_task(lite)
    webhooks = lite.webhooks
    assert webhooks.deliver_due() == 1                 # try 1: 500
    row = lite.store.list_deliveries()[0]
    assert (row["tries"], row["last_status"], row["next_try"]) == (1, "500", T0 + 1)
    clock.advance(0.5)
    assert webhooks.deliver_due() == 0                 # not yet
    clock.advance(0.5)
    assert webhooks.deliver_due() == 1                 # try 2 after 1 s: 503
    row = lite.store.list_deliveries()[0]
    assert (row["tries"], row["last_status"], row["next_try"]) == (2, "503", T0 + 11)
    clock.advance(10)
    assert webhooks.deliver_due() == 1                 # try 3 after 10 s: 200, done
    row = lite.store.list_deliveries()[0]
    assert (row["tries"], row["last_status"], row["next_try"]) == (3, "200", None)
    clock.advance(3600)
    assert webhooks.deliver_due() == 0
    assert receiver.received.qsize() == 3
    metrics = lite.metrics.render([])
    assert 'tmlite_webhook_deliveries_total{outcome="retrying"} 2' in metrics
    assert 'tmlite_webhook_deliveries_total{outcome="delivered"} 1' in metrics


def test_a_dead_receiver_gets_five_tries_then_gives_up(hooks, receiver):
    lite, clock = hooks
    receiver.answers = [500] * 10
    _stop_new_task(lite)
    waits = []
    for _ in range(5):
        assert lite.webhooks.deliver_due() == 1
        row = lite.store.list_deliveries()[0]
        if row["next_try"] is not None:
            waits.append(row["next_try"] - clock.now)
            clock.advance(row["next_try"] - clock.now)
    assert waits == [1, 10, 60, 600]
    row = lite.store.list_deliveries()[0]
    assert row["tries"] == 5 and row["next_try"] is None and row["last_status"] == "500"
    clock.advance(86400)
    assert lite.webhooks.deliver_due() == 0


def test_unreachable_url_is_an_error_status_not_a_crash(make_app, make_config):
    import socket
    with socket.socket() as s:                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock(T0)
    app = make_app(make_config(webhooks=[f"http://127.0.0.1:{port}/x"]), clock)
    app.lite.store.upsert_device("phone-1", state="device")
    _stop_new_task(app.lite)
    assert app.lite.webhooks.deliver_due() == 1
    row = app.lite.store.list_deliveries()[0]
    assert row["last_status"].startswith("error:") and row["next_try"] == T0 + 1


def test_delivery_log_keeps_the_last_500(hooks):
    lite, _ = hooks
    lite.store.add_deliveries([(str(i), "task.finished", "http://127.0.0.1:9/", "{}")
                               for i in range(520)], T0)
    rows = lite.store.list_deliveries()
    assert len(rows) == 500 and rows[0]["delivery_id"] == "519"


# -- POST /task fields -----------------------------------------------------------------------
@pytest.fixture
def api(make_app, make_config, make_client):
    clock = FakeClock(T0)
    app = make_app(make_config(), clock)
    app.lite.store.upsert_device("phone-1", state="device")
    return app, make_client(app), clock


def post_task(client, **extra):
    body = {"serials": ["phone-1"], "script_name": "echo", "script_config": {"text": "x"},
            **extra}
    return client.post_json(API + "/task", body, expect_errors=True).json


@pytest.mark.parametrize("extra, field", [
    ({"callback_url": "ftp://x/y"}, "callback_url"),
    ({"callback_url": "not a url"}, "callback_url"),
    ({"callback_url": 5}, "callback_url"),
    ({"expire_in": 0}, "expire_in"), ({"expire_in": 10081}, "expire_in"),
    ({"expire_in": "5"}, "expire_in"),
    ({"expire_at": "2030-01-15 09:59:00"}, "expire_at"),        # in the past
    ({"expire_at": "tomorrow"}, "expire_at"),
    ({"expire_in": 5, "expire_at": "2030-01-16 00:00:00"}, "expire_in"),
    ({"timeout": 9}, "timeout"), ({"timeout": 86401}, "timeout"), ({"timeout": True}, "timeout"),
])
def test_bad_task_end_fields_are_40001_naming_the_field(api, extra, field):
    app, client, _ = api
    reply = post_task(client, **extra)
    assert reply["code"] == 40001 and reply["message"].startswith(field), reply
    assert app.lite.store.stats()["total"] == 0


def test_pending_task_expires_on_time_and_is_not_retried(api):
    app, client, clock = api
    reply = post_task(client, expire_in=1, auto_retry=True)
    task_id = reply["data"]["task_ids"][0]
    task = client.get(f"{API}/task/{task_id}").json["data"]
    assert task["expire_at"] == tml.format_time(T0 + 60)
    scheduler = app.lite.scheduler
    clock.advance(59)
    _, next_due = scheduler.tick()
    assert next_due == T0 + 60                         # it wakes right then, no polling
    assert client.get(f"{API}/task/{task_id}").json["data"]["status"] == 0
    clock.advance(1)
    scheduler.tick()
    task = client.get(f"{API}/task/{task_id}").json["data"]
    assert task["status"] == 3 and task["error"] == "expired" and task["message"] == "expired"
    assert task["retry_count"] == 0
    clock.advance(600)
    scheduler.tick()
    assert client.get(f"{API}/task/{task_id}").json["data"]["status"] == 3


def test_expire_at_is_box_local_time(api):
    app, client, clock = api
    task_id = post_task(client, expire_at="2030-01-15 12:00:00")["data"]["task_ids"][0]
    clock.advance(2 * 3600 - 1)
    app.lite.scheduler.tick()
    assert client.get(f"{API}/task/{task_id}").json["data"]["status"] == 0
    clock.advance(1)
    app.lite.scheduler.tick()
    assert client.get(f"{API}/task/{task_id}").json["data"]["error"] == "expired"


def test_retry_all_and_batch_retry_leave_stopped_tasks_alone(api):
    app, client, _ = api
    store = app.lite.store
    stopped = post_task(client)["data"]["task_ids"][0]
    client.post(f"{API}/task/{stopped}/stop")
    crashed = store.create_tasks([tml.NewTask("phone-1", "echo", {"text": "y"})])[0]
    store.claim_next("phone-1", T0)
    store.finish(crashed, ok=False, error="the app crashed")

    assert client.post(f"{API}/task/retry-all").json["data"] == {"retried_count": 1}
    assert store.get_task(crashed)["status"] == 0
    assert store.get_task(stopped)["status"] == 3
    batch = client.post_json(f"{API}/task/batch/retry", {"task_ids": [stopped]}).json["data"]
    assert batch["done"] == [] and "stopped by user" in batch["errors"][str(stopped)]
    assert client.post(f"{API}/task/{stopped}/retry").json["data"]["status"] == 0


# -- timeout, on the farm (real adb, simulated phone) ----------------------------------------
@pytest.fixture
def farm(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim, clock=FakeClock()).start()
    yield farm
    farm.close()


def test_running_task_past_its_timeout_is_stopped_and_auto_retried(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120}, timeout=10,
                          auto_retry=True)[0]
    farm.wait_status(task_id, 1)
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    _, next_due = farm.lite.scheduler.tick()
    row = farm.lite.store.get_task(task_id)
    assert next_due == pytest.approx(row["started_at"] + 10)
    farm.clock.advance(10)
    farm.wake()
    task = wait_until(lambda: (lambda t: t if t["retry_count"] == 1 else None)(
        farm.task(task_id)), 3, "timed out and back to pending")
    assert task["status"] == 0
    assert any("timed out after 10 s" in line for line in task["log"])


def test_device_online_and_a_task_ended_by_its_runner_reach_the_webhook(tmp_path, adb, sim,
                                                                        receiver):
    farm = Farm(tmp_path, adb, sim, webhooks=[receiver.url + "/farm"],
                webhook_secret=SECRET).start()
    try:
        phone = farm.add_phone()
        seen, online = {}, set()
        while "task.finished" not in seen:
            if phone.address in online and "task" not in seen:
                seen["task"] = farm.create([phone.address], "say", {"word": "hook"})[0]
            delivery = receiver.next(15)
            assert signature_ok(delivery)
            body = json.loads(delivery["body"])
            seen[body["event"]] = body
            if body["event"] == "device.online":
                online.add(body["device"]["serial"])
        task = seen["task.finished"]["task"]
        assert task["id"] == seen["task"] and task["status"] == 2
        assert task["result"] == {"said": "said hook"} and task["message"] == "completed"
    finally:
        farm.close()


def test_timeout_without_auto_retry_ends_failed_naming_the_timeout(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120}, timeout=30)[0]
    farm.wait_status(task_id, 1)
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    farm.clock.advance(29)
    farm.wake()
    assert farm.lite.scheduler.tick()[0] == [] and farm.task(task_id)["status"] == 1
    farm.clock.advance(1)
    farm.wake()
    task = farm.wait_status(task_id, 3, timeout=3)      # SPEC: stopped within 2 s
    assert task["error"] == "timed out after 30 s" and task["retry_count"] == 0
    assert task["message"] == "failed: timed out after 30 s"


def test_deliveries_still_due_survive_a_restart(make_config, receiver):
    config = make_config(webhooks=[receiver.url + "/after"])
    first = tml.Server(config, with_devices=False)
    first.store.upsert_device("phone-1", state="device")
    _stop_new_task(first)                               # queued, never sent: no thread
    first.close()
    again = tml.Server(config, with_devices=False)
    try:
        again.start()                                   # its delivery thread sends it
        delivery = receiver.next()
        assert delivery["path"] == "/after"
        assert json.loads(delivery["body"])["event"] == "task.finished"
    finally:
        again.close()


def test_without_deliveries_the_delivery_thread_never_starts(make_config):
    lite = tml.Server(make_config(), with_devices=False)
    try:
        lite.start()
        lite.store.upsert_device("phone-1", state="device")
        _stop_new_task(lite)                            # no callback_url, no --webhook
        assert lite.webhooks._thread.ident is None      # a thread and a connection saved
        assert lite.store.list_deliveries() == []
    finally:
        lite.close()
