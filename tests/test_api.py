"""The HTTP API (SPEC 2-4) through webtest, on a Lite without adb.

Every response is checked for its envelope: ``{"code", "message", "data"}`` with the HTTP
status equal to ``code // 100`` and never a traceback. Tasks stay pending (no device layer),
so the states a runner would reach are written straight into sqlite where a test needs them.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import re

import pytest

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock

API = "/api/v1"
ECHO = {"text": "hello"}
ECHO_DEFAULTS = {"text": "hello", "mode": "plain", "count": 1, "ratio": 0.5, "loud": False,
                 "tags": ["a"], "extra": {"k": 1}}
TASK_FIELDS = {"id", "serial", "username", "script_name", "script_config", "status",
               "status_text", "source", "priority", "start_time", "started_at", "end_time",
               "created_at", "progress", "message", "error", "result", "retry_count",
               "max_retry_count", "auto_retry"}
DEVICE_FIELDS = {"serial", "state", "model", "android_version", "battery", "adb_server",
                 "connection", "running_task_id", "pending_count", "last_seen",
                 "alias", "groups", "ime", "screen", "apps", "last_error"}
TIME_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32

#: SPEC 4.2 and 4.3, written out by hand (path parameters named as in the SPEC).
SPEC_ENDPOINTS = {
    ("POST", "/task"), ("GET", "/task"), ("GET", "/task/{id}"), ("DELETE", "/task/{id}"),
    ("DELETE", "/task/batch"), ("POST", "/task/{id}/stop"), ("POST", "/task/{id}/retry"),
    ("POST", "/task/retry-all"), ("GET", "/task/stats"), ("GET", "/license/check"),
    ("POST", "/task/batch/stop"), ("POST", "/task/batch/retry"), ("POST", "/task/clear"),
    ("GET", "/task/{id}/artifacts/{name}"), ("GET", "/device"), ("POST", "/device/connect"),
    ("POST", "/device/disconnect"), ("GET", "/device/{serial}/screenshot"),
    ("GET", "/account"), ("POST", "/account"), ("GET", "/account/{username}"),
    ("PUT", "/account/{username}"), ("DELETE", "/account/{username}"), ("GET", "/script"),
    ("GET", "/health"), ("GET", "/openapi.json"),
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

class Http:
    """Short calls on the webtest client; every response is returned, errors included."""

    def __init__(self, client):
        self.client = client

    def get(self, path, **kw):
        return self.client.get(API + path, expect_errors=True, **kw)

    def post(self, path, body=None, **kw):
        if body is None:
            return self.client.post(API + path, expect_errors=True, **kw)
        return self.client.post_json(API + path, body, expect_errors=True, **kw)

    def put(self, path, body, **kw):
        return self.client.put_json(API + path, body, expect_errors=True, **kw)

    def delete(self, path, body=None, **kw):
        if body is None:
            return self.client.delete(API + path, expect_errors=True, **kw)
        return self.client.delete_json(API + path, body, expect_errors=True, **kw)

    def raw(self, method, path, body: bytes, content_type="application/json", **kw):
        return self.client.request(API + path, method=method, body=body,
                                   content_type=content_type, expect_errors=True, **kw)


def assert_clean(resp):
    """No traceback, no file paths of the program in any response."""
    text = resp.body.decode("utf-8", "replace")
    assert "Traceback" not in text
    assert 'File "' not in text
    assert "tikmatrix_lite.py" not in text


def ok(resp):
    """The data of a success envelope."""
    assert_clean(resp)
    assert resp.status_int == 200, resp.body
    assert resp.content_type == "application/json"
    body = resp.json
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == 0 and body["message"] == "success"
    return body["data"]


def err(resp, code, *words):
    """An error envelope with this code, HTTP status code // 100, and words in its message."""
    assert_clean(resp)
    assert resp.content_type == "application/json", resp.body
    body = resp.json
    assert set(body) == {"code", "message", "data"}, body
    assert body["code"] == code, body
    assert resp.status_int == code // 100, (resp.status, body)
    assert body["data"] is None
    assert isinstance(body["message"], str) and body["message"]
    for word in words:
        assert word in body["message"], (word, body["message"])
    return body["message"]


@pytest.fixture
def http(client):
    return Http(client)


@pytest.fixture
def devices(add_device):
    """Two known devices: d1 online, d2 offline (offline devices take tasks too)."""
    add_device("d1", state="device")
    add_device("d2", state="offline")
    return ["d1", "d2"]


def create(http, serials=("d1",), script="echo", config=None, **extra):
    body = {"serials": list(serials), "script_name": script,
            "script_config": dict(ECHO) if config is None else config}
    body.update(extra)
    return ok(http.post("/task", body))["task_ids"]


def count_tasks(store):
    return store.query_one("SELECT COUNT(*) FROM tasks")[0]


def set_task(store, task_id, **columns):
    """Write task columns straight into sqlite (what a runner would have done)."""
    sets = ", ".join(f"{k}=?" for k in columns)
    with store.write() as conn:
        conn.execute(f"UPDATE tasks SET {sets} WHERE id=?", list(columns.values()) + [task_id])


def task(http, task_id):
    return ok(http.get(f"/task/{task_id}"))


def local(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timestamp()


@pytest.fixture
def clocked(make_app, config, make_client):
    """(http, clock, store) of an app whose clock the test moves."""
    clock = FakeClock(T0)
    application = make_app(config, clock=clock)
    return Http(make_client(application)), clock, application.lite.store


# ---------------------------------------------------------------------------
# simple endpoints
# ---------------------------------------------------------------------------

def test_license_check_exact(http):
    assert ok(http.get("/license/check")) == {
        "plan_name": "Lite", "api_enabled": True, "device_limit": 0,
        "message": "API access enabled"}


def test_health(http):
    data = ok(http.get("/health"))
    assert data["version"] == tml.__version__
    assert isinstance(data["uptime_seconds"], int) and data["uptime_seconds"] >= 0
    assert TIME_RE.fullmatch(data["server_time"])
    assert abs(local(data["server_time"]) - datetime.datetime.now().timestamp()) < 5
    assert isinstance(data["time_zone"], str) and data["time_zone"]
    assert data["database"]["ok"] is True
    assert data["database"]["schema_version"] == len(tml.MIGRATIONS)
    assert data["adb"]["enabled"] is False


def test_script_list_has_loaded_scripts_only(http):
    data = ok(http.get("/script"))
    names = [item["name"] for item in data["items"]]
    assert data["total"] == len(names)
    assert {"echo", "fanout", "instagram_only"} <= set(names)
    assert not {"_helper", "broken_syntax", "no_run"} & set(names)
    echo = next(item for item in data["items"] if item["name"] == "echo")
    assert echo["description"].startswith("Echo")
    assert echo["params"]["text"]["required"] is True
    assert echo["params"]["mode"]["choices"] == ["plain", "upper"]
    fanout = next(item for item in data["items"] if item["name"] == "fanout")
    assert fanout["expands"] is True and echo["expands"] is False
    insta = next(item for item in data["items"] if item["name"] == "instagram_only")
    assert insta["platforms"] == ["instagram"]


def test_broken_scripts_are_logged_and_left_out(make_app, config, caplog):
    with caplog.at_level("ERROR", logger="tikmatrix_lite"):
        application = make_app(config)
    text = caplog.text
    assert "broken_syntax.py" in text and "syntax error" in text
    assert "no_run.py" in text
    assert "_helper" not in text
    assert "echo" in application.lite.scripts
    assert "_helper" not in application.lite.scripts


def test_device_list_shape(http, add_device, store):
    add_device("d1", state="device", model="Pixel 7", android_version="14", battery=80,
               adb_server="127.0.0.1:5037", connection="usb", last_seen=T0)
    add_device("10.0.0.5:5555", state="offline", connection="tcp")
    ids = create(http, ["d1"]) + create(http, ["d1"]) + create(http, ["d1"])
    set_task(store, ids[0], status=1, started_at=T0)
    data = ok(http.get("/device"))
    assert data["total"] == 2
    by_serial = {d["serial"]: d for d in data["items"]}
    for item in data["items"]:
        assert set(item) == DEVICE_FIELDS
    d1 = by_serial["d1"]
    assert d1 == {"serial": "d1", "state": "device", "model": "Pixel 7",
                  "android_version": "14", "battery": 80, "adb_server": "127.0.0.1:5037",
                  "connection": "usb", "running_task_id": ids[0], "pending_count": 2,
                  "last_seen": tml.format_time(T0), "alias": "", "groups": [], "ime": None,
                  "screen": None, "apps": {}, "last_error": ""}
    tcp = by_serial["10.0.0.5:5555"]
    assert tcp["state"] == "offline" and tcp["connection"] == "tcp"
    assert tcp["running_task_id"] is None and tcp["pending_count"] == 0
    assert tcp["last_seen"] is None and tcp["battery"] is None


def test_device_list_empty(http):
    assert ok(http.get("/device")) == {"items": [], "total": 0}


@pytest.mark.parametrize("path", ["/device/connect", "/device/disconnect"])
def test_device_connect_without_device_layer(http, path):
    err(http.post(path, {"address": "10.0.0.5:5555"}), 50001, "device layer not available")
    err(http.post(path, {"address": "[fe80::1]:5555"}), 50001, "device layer not available")


@pytest.mark.parametrize("path", ["/device/connect", "/device/disconnect"])
@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:0", "10.0.0.5:70000", "",
                                     "a b:5555", ":5555", 5555, None, ["10.0.0.5:5555"],
                                     "host:55x"])
def test_device_connect_bad_address(http, path, address):
    body = {} if address is None else {"address": address}
    err(http.post(path, body), 40001, "address")


def test_device_screenshot(http, add_device):
    add_device("d1")
    err(http.get("/device/d1/screenshot"), 50001, "device layer not available")
    err(http.get("/device/nope/screenshot"), 40401, "nope")


# ---------------------------------------------------------------------------
# POST /task
# ---------------------------------------------------------------------------

def test_create_task_serials_mode(http, devices, store):
    data = ok(http.post("/task", {"serials": ["d1", "d2"], "script_name": "echo",
                                  "script_config": {"text": "hello"}}))
    assert data["created_count"] == 2 and len(data["task_ids"]) == 2
    assert data["task_ids"] == sorted(data["task_ids"])
    assert count_tasks(store) == 2
    first, second = (task(http, i) for i in data["task_ids"])
    assert TASK_FIELDS | {"log", "artifacts"} <= set(first)
    assert (first["serial"], second["serial"]) == ("d1", "d2")
    assert first["script_name"] == "echo"
    assert first["script_config"] == ECHO_DEFAULTS
    assert first["status"] == 0 and first["status_text"] == "pending"
    assert first["source"] == "api" and first["username"] is None
    assert first["priority"] == 0
    assert first["retry_count"] == 0 and first["max_retry_count"] == 3
    assert first["auto_retry"] is False
    assert first["progress"] == 0 and first["message"] == "" and first["error"] == ""
    assert first["result"] is None
    assert first["started_at"] is None and first["end_time"] is None
    assert TIME_RE.fullmatch(first["created_at"])
    assert first["start_time"] == first["created_at"]          # absent start_time: now
    assert first["log"] == [] and first["artifacts"] == []


def test_create_task_fills_defaults_and_keeps_values(http, devices):
    config = {"text": "hi", "mode": "upper", "count": 10, "ratio": 1, "loud": True,
              "tags": ["x", "y"], "extra": {"a": [1]}, "note": "n", "undeclared": 7}
    [task_id] = create(http, config=config)
    assert task(http, task_id)["script_config"] == config
    [task_id] = create(http, config={"text": "hi", "count": 3.0, "loud": 1, "mode": None})
    stored = task(http, task_id)["script_config"]
    assert stored["count"] == 3 and isinstance(stored["count"], int)
    assert stored["loud"] is True                     # 0/1 accepted for switches
    assert stored["mode"] == "plain"                  # null means "use the default"


def test_create_task_usernames_mode_with_and_without_at(http, add_account):
    add_account("alice", "d1")
    add_account("bob", "d2")
    data = ok(http.post("/task", {"usernames": ["@alice", "bob"], "script_name": "echo",
                                  "script_config": ECHO}))
    assert data["created_count"] == 2
    got = {(t["serial"], t["username"]) for t in map(lambda i: task(http, i),
                                                     data["task_ids"])}
    assert got == {("d1", "alice"), ("d2", "bob")}


def test_create_task_multi_account(http, add_account, add_device, store):
    add_account("alice", "d1")
    add_account("carol", "d1")
    add_account("dave", "d1", enabled=False)
    add_account("insta", "d1", platform="instagram")
    add_account("bob", "d2")
    ids = create(http, ["d1", "d2"], enable_multi_account=True)
    got = sorted((t["serial"], t["username"]) for t in (task(http, i) for i in ids))
    assert got == [("d1", "alice"), ("d1", "carol"), ("d1", "insta"), ("d2", "bob")]
    # an Instagram-only script takes the device's Instagram accounts only
    ids = create(http, ["d1"], script="instagram_only", config={}, enable_multi_account=True)
    assert [task(http, i)["username"] for i in ids] == ["insta"]
    # a device without an enabled account is refused, naming it; nothing is created
    add_device("d3")
    add_account("erin", "d4", enabled=False)
    before = count_tasks(store)
    for serials, culprit in ((["d1", "d3"], "serials[1]"), (["d4"], "serials[0]")):
        message = err(http.post("/task", {"serials": serials, "script_name": "echo",
                                          "script_config": ECHO,
                                          "enable_multi_account": True}), 40001, culprit)
        assert serials[-1] in message
    err(http.post("/task", {"serials": ["d2"], "script_name": "instagram_only",
                            "script_config": {}, "enable_multi_account": True}),
        40001, "serials[0]", "d2")
    assert count_tasks(store) == before


def test_multi_account_off_makes_one_task_per_device(http, add_account):
    add_account("alice", "d1")
    add_account("carol", "d1")
    ids = create(http, ["d1"])
    assert len(ids) == 1 and task(http, ids[0])["username"] is None


@pytest.mark.parametrize("hhmm, expected", [
    ("10:30", "2030-01-15 10:30:00"),        # later today
    ("23:59", "2030-01-15 23:59:00"),
    ("09:15", "2030-01-16 09:15:00"),        # passed: tomorrow
    ("10:00", "2030-01-16 10:00:00"),        # this very minute has begun: tomorrow
    ("00:00", "2030-01-16 00:00:00"),
    ("7:05", "2030-01-16 07:05:00"),
    ("", "2030-01-15 10:00:00"),             # empty: now
])
def test_start_time_next_occurrence(clocked, hhmm, expected):
    http, clock, store = clocked
    store.upsert_device("d1", state="device")
    [task_id] = create(http, start_time=hhmm)
    item = task(http, task_id)
    assert item["start_time"] == expected
    assert item["created_at"] == "2030-01-15 10:00:00"


def test_start_time_absent_is_now(clocked):
    http, clock, store = clocked
    store.upsert_device("d1", state="device")
    clock.advance(90)
    [task_id] = create(http)
    assert task(http, task_id)["start_time"] == "2030-01-15 10:01:30"
    assert store.get_task(task_id)["start_time"] == clock.now


@pytest.mark.parametrize("value", ["25:00", "24:00", "10:60", "1030", "10:3", "abc",
                                   "10:30:00", "-1:00", 1030, 10.5, True, ["10:30"]])
def test_bad_start_time(http, devices, store, value):
    err(http.post("/task", {"serials": ["d1"], "script_name": "echo", "script_config": ECHO,
                            "start_time": value}), 40001, "start_time")
    assert count_tasks(store) == 0


def test_intervals_accepted_and_stored(http, devices, store):
    [task_id] = create(http, min_interval=2, max_interval=5)
    item = task(http, task_id)
    assert (item["min_interval"], item["max_interval"]) == (2, 5)
    assert 120 <= store.get_task(task_id)["rest_seconds"] <= 300
    [task_id] = create(http, min_interval=0, max_interval=1440)
    assert 0 <= store.get_task(task_id)["rest_seconds"] <= 1440 * 60
    [task_id] = create(http, min_interval=7, max_interval=7)
    assert store.get_task(task_id)["rest_seconds"] == 420
    [task_id] = create(http)
    assert store.get_task(task_id)["rest_seconds"] == 0


@pytest.mark.parametrize("extra, field", [
    ({"min_interval": -1}, "min_interval"), ({"max_interval": 1441}, "max_interval"),
    ({"min_interval": 1441, "max_interval": 1441}, "min_interval"),
    ({"min_interval": "5"}, "min_interval"), ({"max_interval": 2.5}, "max_interval"),
    ({"min_interval": True}, "min_interval"),
    ({"min_interval": 10, "max_interval": 5}, "min_interval"),
    ({"min_interval": 1}, "min_interval"),          # max defaults to 0: min > max
    ({"priority": -101}, "priority"), ({"priority": 101}, "priority"),
    ({"priority": "5"}, "priority"), ({"priority": True}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"max_retry_count": 0}, "max_retry_count"), ({"max_retry_count": 11}, "max_retry_count"),
    ({"max_retry_count": "3"}, "max_retry_count"),
    ({"auto_retry": "yes"}, "auto_retry"), ({"auto_retry": 1}, "auto_retry"),
    ({"enable_multi_account": "true"}, "enable_multi_account"),
    ({"enable_multi_account": 0}, "enable_multi_account"),
])
def test_bad_task_options(http, devices, store, extra, field):
    body = {"serials": ["d1"], "script_name": "echo", "script_config": ECHO, **extra}
    message = err(http.post("/task", body), 40001, field)
    assert message.startswith(field)
    assert count_tasks(store) == 0


def test_priority_retry_and_auto_retry_options(http, devices):
    for priority in (-100, 0, 100):
        [task_id] = create(http, priority=priority)
        assert task(http, task_id)["priority"] == priority
    for limit in (1, 10):
        [task_id] = create(http, max_retry_count=limit)
        assert task(http, task_id)["max_retry_count"] == limit
    [task_id] = create(http, auto_retry=True)
    assert task(http, task_id)["auto_retry"] is True


def test_script_expansion_targets_times_devices(http, devices, add_account, store):
    ids = create(http, ["d1", "d2"], script="fanout",
                 config={"targets": ["u1", "u2", "u3"]})
    assert len(ids) == 6 and count_tasks(store) == 6
    tasks = [task(http, i) for i in ids]
    pairs = sorted((t["serial"], t["script_config"]["target"]) for t in tasks)
    assert pairs == sorted((s, u) for s in ("d1", "d2") for u in ("u1", "u2", "u3"))
    assert all(t["script_config"]["access_method"] == "direct" for t in tasks)
    # by accounts, too: 2 targets x 2 accounts
    add_account("alice", "d1")
    add_account("bob", "d2")
    data = ok(http.post("/task", {"usernames": ["alice", "@bob"], "script_name": "fanout",
                                  "script_config": {"targets": ["x", "y"]}}))
    assert data["created_count"] == 4 == len(data["task_ids"])


@pytest.mark.parametrize("targets, words", [
    ([], ["script_config.targets", "at least one"]),
    (["ok", "forbidden"], ["script_config.targets", "forbidden"]),
])
def test_script_validate_names_the_field(http, devices, store, targets, words):
    err(http.post("/task", {"serials": ["d1"], "script_name": "fanout",
                            "script_config": {"targets": targets}}), 40001, *words)
    assert count_tasks(store) == 0


def test_unknown_serial_names_the_culprit_and_creates_nothing(http, devices, store):
    create(http, ["d1"])
    before = count_tasks(store)
    err(http.post("/task", {"serials": ["d1", "nope"], "script_name": "echo",
                            "script_config": ECHO}), 40001, "serials[1]", "nope")
    err(http.post("/task", {"serials": ["nope", "d1"], "script_name": "fanout",
                            "script_config": {"targets": ["a", "b"]}}),
        40001, "serials[0]", "nope")
    assert count_tasks(store) == before


def test_culprit_index_counts_duplicates(http, devices, store):
    """The index in the message is the position in the request, duplicates included."""
    err(http.post("/task", {"serials": ["d1", "d1", "nope"], "script_name": "echo",
                            "script_config": ECHO}), 40001, "serials[2]", "nope")
    assert count_tasks(store) == 0


def test_usernames_mode_culprits(http, add_account, store):
    add_account("alice", "d1")
    add_account("off", "d1", enabled=False)
    add_account("tiko", "d2", platform="tiktok")
    cases = [
        ({"usernames": ["alice", "@ghost"]}, "echo", ["usernames[1]", "ghost"]),
        ({"usernames": ["alice", "off"]}, "echo", ["usernames[1]", "off", "disabled"]),
        ({"usernames": ["@tiko"]}, "instagram_only", ["usernames[0]", "tiko", "tiktok"]),
        ({"usernames": ["alice", 3]}, "echo", ["usernames[1]"]),
        ({"usernames": ["not valid!"]}, "echo", ["usernames[0]"]),
    ]
    for target, script, words in cases:
        body = {"script_name": script, "script_config": ECHO if script == "echo" else {},
                **target}
        err(http.post("/task", body), 40001, *words)
    assert count_tasks(store) == 0


@pytest.mark.parametrize("body, field", [
    ({"serials": ["d1"], "usernames": ["alice"]}, "serials"),
    ({}, "serials"),
    ({"serials": []}, "serials"),
    ({"usernames": []}, "serials"),
    ({"serials": "d1"}, "serials"),
    ({"serials": {"d1": 1}}, "serials"),
    ({"serials": [1]}, "serials[0]"),
    ({"serials": ["d1", None]}, "serials[1]"),
    ({"usernames": "alice"}, "usernames"),
])
def test_bad_targets(http, devices, add_account, store, body, field):
    add_account("alice", "d1")
    err(http.post("/task", {"script_name": "echo", "script_config": ECHO, **body}),
        40001, field)
    assert count_tasks(store) == 0


@pytest.mark.parametrize("name", [None, ""])
def test_missing_script_name_is_40002(http, devices, name):
    body = {"serials": ["d1"], "script_config": ECHO}
    if name is not None:
        body["script_name"] = name
    err(http.post("/task", body), 40002, "script_name")


@pytest.mark.parametrize("name", ["nope", "like", "message", "super_marketing", "profile",
                                  "scrape_user", "broken_syntax", "no_run", "_helper",
                                  "ECHO", "../echo"])
def test_unsupported_script_is_40003(http, devices, store, name):
    err(http.post("/task", {"serials": ["d1"], "script_name": name, "script_config": {}}),
        40003)
    assert count_tasks(store) == 0


def test_like_is_40003_although_the_file_exists(http, devices, scripts_dir):
    assert (scripts_dir / "like.py").is_file()
    err(http.post("/task", {"serials": ["d1"], "script_name": "like", "script_config": {}}),
        40003, "like")


@pytest.mark.parametrize("name", [5, ["echo"], True])
def test_script_name_wrong_type(http, devices, name):
    err(http.post("/task", {"serials": ["d1"], "script_name": name, "script_config": ECHO}),
        40001, "script_name")


@pytest.mark.parametrize("script_config, words", [
    (None, ["script_config", "required"]),
    ([1], ["script_config", "object"]),
    ("text=hi", ["script_config", "object"]),
    (5, ["script_config", "object"]),
    ({}, ["script_config.text", "required"]),
    ({"text": None}, ["script_config.text", "required"]),
    ({"text": 5}, ["script_config.text", "str"]),
    ({"text": "x" * 51}, ["script_config.text", "50"]),
    ({"text": "hi", "count": "3"}, ["script_config.count", "int"]),
    ({"text": "hi", "count": 2.5}, ["script_config.count", "int"]),
    ({"text": "hi", "count": True}, ["script_config.count"]),
    ({"text": "hi", "count": 0}, ["script_config.count", "at least 1"]),
    ({"text": "hi", "count": 11}, ["script_config.count", "at most 10"]),
    ({"text": "hi", "ratio": 1.5}, ["script_config.ratio", "at most"]),
    ({"text": "hi", "ratio": -0.1}, ["script_config.ratio", "at least"]),
    ({"text": "hi", "ratio": "0.5"}, ["script_config.ratio", "float"]),
    ({"text": "hi", "mode": "loud"}, ["script_config.mode", "plain"]),
    ({"text": "hi", "mode": 1}, ["script_config.mode"]),
    ({"text": "hi", "loud": "yes"}, ["script_config.loud", "bool"]),
    ({"text": "hi", "loud": 2}, ["script_config.loud", "bool"]),
    ({"text": "hi", "tags": "a,b"}, ["script_config.tags", "list"]),
    ({"text": "hi", "tags": ["a", 1]}, ["script_config.tags[1]", "str"]),
    ({"text": "hi", "extra": []}, ["script_config.extra", "dict"]),
    ({"text": "hi", "note": ["n"]}, ["script_config.note", "str"]),
])
def test_bad_script_config(http, devices, store, script_config, words):
    body = {"serials": ["d1"], "script_name": "echo"}
    if script_config is not None:
        body["script_config"] = script_config
    message = err(http.post("/task", body), 40001, *words)
    assert message.startswith(words[0])
    assert count_tasks(store) == 0


def test_non_finite_numbers_are_refused(http, devices, store):
    """NaN/Infinity are not JSON: accepting them stores a task whose JSON is invalid."""
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = ('{"serials": ["d1"], "script_name": "echo", "script_config": '
               '{"text": "hi", "extra": {"x": %s}, "ratio": 0.5}}' % literal)
        err(http.raw("POST", "/task", raw.encode()), 40001)
    assert count_tasks(store) == 0


def test_script_config_null_for_script_without_params(http, devices):
    err(http.post("/task", {"serials": ["d1"], "script_name": "instagram_only"}),
        40001, "script_config")
    [task_id] = create(http, script="instagram_only", config={})
    assert task(http, task_id)["script_config"] == {}


def test_offline_devices_take_tasks(http, devices):
    [task_id] = create(http, ["d2"])
    assert task(http, task_id)["status"] == 0


# ---------------------------------------------------------------------------
# GET /task
# ---------------------------------------------------------------------------

@pytest.fixture
def listed(clocked):
    """Tasks created at known times with known fields; returns (http, ids by name, clock)."""
    http, clock, store = clocked
    for serial in ("d1", "d2"):
        store.upsert_device(serial, state="device")
    store.save_account("alice", "d1", "tiktok", "com.zhiliaoapp.musically", True, True)
    ids = {}
    ids["a"] = create(http, ["d1"])[0]                              # T0
    clock.advance(100)
    ids["b"] = create(http, ["d2"], script="fanout", config={"targets": ["x"]})[0]  # T0+100
    clock.advance(100)
    ids["c"] = ok(http.post("/task", {"usernames": ["@alice"], "script_name": "echo",
                                      "script_config": ECHO}))["task_ids"][0]  # T0+200
    clock.advance(100)
    ids["d"] = create(http, ["d2"])[0]                              # T0+300
    set_task(store, ids["b"], status=2)
    set_task(store, ids["c"], status=3)
    set_task(store, ids["d"], status=1, source="ui")
    return http, ids, clock


def listing(http, query=""):
    data = ok(http.get("/task" + query))
    assert set(data) == {"items", "total", "page", "page_size"}
    return data


def ids_of(data):
    return [item["id"] for item in data["items"]]


def test_list_newest_first_and_item_shape(listed):
    http, ids, _ = listed
    data = listing(http)
    assert ids_of(data) == [ids["d"], ids["c"], ids["b"], ids["a"]]
    assert (data["total"], data["page"], data["page_size"]) == (4, 1, 20)
    detail = task(http, ids["c"])
    item = next(i for i in data["items"] if i["id"] == ids["c"])
    assert TASK_FIELDS <= set(item)
    assert item == {k: v for k, v in detail.items() if k not in ("log", "artifacts")}


@pytest.mark.parametrize("query, names", [
    ("?status=0", ["a"]), ("?status=1", ["d"]), ("?status=2", ["b"]), ("?status=3", ["c"]),
    ("?status=2,3", ["c", "b"]), ("?status=0,1,2,3", ["d", "c", "b", "a"]),
    ("?status=3,%200", ["c", "a"]),
    ("?serial=d2", ["d", "b"]), ("?serial=zz", []),
    ("?script_name=fanout", ["b"]), ("?script_name=echo", ["d", "c", "a"]),
    ("?source=ui", ["d"]), ("?source=api", ["c", "b", "a"]),
    ("?username=alice", ["c"]), ("?username=%40alice", ["c"]), ("?username=bob", []),
    ("?serial=d2&status=2", ["b"]),
])
def test_list_filters(listed, query, names):
    http, ids, _ = listed
    data = listing(http, query)
    assert ids_of(data) == [ids[n] for n in names]
    assert data["total"] == len(names)


@pytest.mark.parametrize("query, names", [
    (f"?start_timestamp={T0 + 100:.0f}", ["d", "c", "b"]),
    (f"?end_timestamp={T0 + 100:.0f}", ["b", "a"]),
    (f"?start_timestamp={T0 + 50:.0f}&end_timestamp={T0 + 250:.0f}", ["c", "b"]),
    (f"?start_timestamp={T0 + 1000:.0f}", []),
    (f"?start_timestamp={T0 + 199.5}", ["d", "c"]),
])
def test_list_creation_time_filters(listed, query, names):
    http, ids, _ = listed
    assert ids_of(listing(http, query)) == [ids[n] for n in names]


@pytest.mark.parametrize("query, field", [
    ("?status=4", "status"), ("?status=a", "status"), ("?status=1,x", "status"),
    ("?status=-1", "status"),
    ("?page=0", "page"), ("?page=-1", "page"), ("?page=x", "page"), ("?page=1.5", "page"),
    ("?page_size=0", "page_size"), ("?page_size=-5", "page_size"),
    ("?page_size=abc", "page_size"), ("?page_size=2.0", "page_size"),
    ("?start_timestamp=yesterday", "start_timestamp"), ("?end_timestamp=nan", "end_timestamp"),
    ("?start_timestamp=inf", "start_timestamp"),
])
def test_list_bad_query(listed, query, field):
    http, _, _ = listed
    assert err(http.get("/task" + query), 40001, field).startswith(field)


def test_list_page_beyond_its_limit_says_what_is_wrong(listed):
    """A page number above the allowed maximum must not be reported as 'at least 1'."""
    http, _, _ = listed
    message = err(http.get("/task?page=999999999999"), 40001, "page")
    assert "at least" not in message


def test_pagination(http, devices, store):
    ids = []
    for _ in range(25):
        ids += create(http, ["d1"])
    newest_first = list(reversed(ids))
    first = listing(http)
    assert (first["total"], first["page"], first["page_size"]) == (25, 1, 20)
    assert ids_of(first) == newest_first[:20]
    second = listing(http, "?page=2")
    assert ids_of(second) == newest_first[20:]
    assert ids_of(listing(http, "?page=3")) == [] and listing(http, "?page=3")["total"] == 25
    small = listing(http, "?page_size=7&page=3")
    assert ids_of(small) == newest_first[14:21] and small["page_size"] == 7
    big = listing(http, "?page_size=100")
    assert big["page_size"] == 100 and len(big["items"]) == 25
    clamped = listing(http, "?page_size=1000")
    assert clamped["page_size"] == 100 and len(clamped["items"]) == 25


def test_page_size_is_clamped_to_100(http, devices, store):
    tasks = [tml.NewTask(serial="d1", script_name="echo", script_config=ECHO)] * 130
    store.create_tasks(tasks)
    data = listing(http, "?page_size=101")
    assert data["page_size"] == 100 and len(data["items"]) == 100 and data["total"] == 130
    assert len(listing(http, "?page_size=100&page=2")["items"]) == 30


# ---------------------------------------------------------------------------
# GET /task/{id}, route order
# ---------------------------------------------------------------------------

def test_task_detail_log_and_artifacts(clocked, config):
    http, clock, store = clocked
    store.upsert_device("d1")
    [task_id] = create(http)
    store.add_log(task_id, "started on d1")
    clock.advance(61)
    store.add_log(task_id, "50% halfway")
    folder = config.artifacts_dir / str(task_id)
    folder.mkdir(parents=True)
    (folder / "screenshot.png").write_bytes(PNG)
    (folder / "ui_dump.xml").write_text("<hierarchy/>")
    item = task(http, task_id)
    assert item["log"] == ["2030-01-15 10:00:00 started on d1",
                           "2030-01-15 10:01:01 50% halfway"]
    assert item["artifacts"] == [f"{API}/task/{task_id}/artifacts/screenshot.png",
                                 f"{API}/task/{task_id}/artifacts/ui_dump.xml"]
    # the URLs it gives work
    resp = http.client.get(item["artifacts"][0])
    assert resp.status_int == 200 and resp.body == PNG
    assert resp.content_type == "image/png"
    resp = http.client.get(item["artifacts"][1])
    assert resp.status_int == 200 and resp.body == b"<hierarchy/>"
    assert "xml" in resp.content_type


@pytest.mark.parametrize("path", ["/task/12345", "/task/0", "/task/-1",
                                  "/task/99999999999999999999"])
def test_task_detail_absent(http, path):
    err(http.get(path), 40401)


def test_literal_routes_win_over_task_id(http, devices, store):
    ids = create(http, ["d1", "d2"])
    set_task(store, ids[1], status=3, error="boom")
    assert ok(http.get("/task/stats")) == {"total": 2, "pending": 1, "running": 0,
                                           "completed": 0, "failed": 1}
    assert ok(http.post("/task/retry-all")) == {"retried_count": 1}
    assert ok(http.delete("/task/batch", {"task_ids": [ids[0]]})) == {
        "deleted_count": 1, "errors": {}}
    err(http.get("/task/batch"), 40501)
    err(http.post("/task/batch", {"task_ids": [ids[1]]}), 40501)
    err(http.get("/task/retry-all"), 40501)
    err(http.delete("/task/stats"), 40501)
    err(http.get("/task/clear"), 40501)
    assert count_tasks(store) == 1


# ---------------------------------------------------------------------------
# delete, stop, retry
# ---------------------------------------------------------------------------

def test_delete_task_and_its_artifacts(http, devices, store, config):
    ids = create(http, ["d1", "d2"])
    folder = config.artifacts_dir / str(ids[0])
    folder.mkdir(parents=True)
    (folder / "screenshot.png").write_bytes(PNG)
    store.add_log(ids[0], "line")
    assert ok(http.delete(f"/task/{ids[0]}")) == {"deleted": ids[0]}
    assert not folder.exists()
    assert store.get_task(ids[0]) is None and store.get_task(ids[1]) is not None
    assert store.task_log(ids[0]) == []
    err(http.get(f"/task/{ids[0]}"), 40401)
    err(http.delete(f"/task/{ids[0]}"), 40401)


def test_delete_running_task_without_runner(http, devices, store):
    [task_id] = create(http)
    set_task(store, task_id, status=1, started_at=T0)
    ok(http.delete(f"/task/{task_id}"))
    assert count_tasks(store) == 0


def test_delete_batch(http, devices, store):
    ids = create(http, ["d1", "d2"]) + create(http, ["d1"])
    data = ok(http.delete("/task/batch", {"task_ids": [ids[0], 999999, ids[2], ids[0]]}))
    assert data == {"deleted_count": 2, "errors": {"999999": "task not found"}}
    assert [r["id"] for r in store.query("SELECT id FROM tasks")] == [ids[1]]


@pytest.mark.parametrize("body, field", [
    ({}, "task_ids"), ({"task_ids": "1"}, "task_ids"), ({"task_ids": ["1"]}, "task_ids[0]"),
    ({"task_ids": [1, 2.5]}, "task_ids[1]"), ({"task_ids": [True]}, "task_ids[0]"),
    ({"task_ids": None}, "task_ids"),
])
@pytest.mark.parametrize("method, path", [("DELETE", "/task/batch"),
                                          ("POST", "/task/batch/stop"),
                                          ("POST", "/task/batch/retry")])
def test_batch_bad_bodies(http, method, path, body, field):
    resp = http.raw(method, path, json.dumps(body).encode())
    assert err(resp, 40001, field).startswith(field)


@pytest.mark.parametrize("method, path", [("DELETE", "/task/batch"),
                                          ("POST", "/task/batch/stop"),
                                          ("POST", "/task/batch/retry")])
def test_batch_with_an_id_sqlite_cannot_hold(http, devices, store, method, path):
    """An id beyond 64 bits is a client error (40001 naming it, or 'task not found'),
    never an internal error."""
    [task_id] = create(http)
    resp = http.raw(method, path, json.dumps({"task_ids": [2 ** 70]}).encode())
    assert_clean(resp)
    assert resp.json["code"] != 50001, resp.json
    assert resp.status_int < 500


def test_stop_pending(http, devices, store):
    [task_id] = create(http, auto_retry=True)
    data = ok(http.post(f"/task/{task_id}/stop"))
    assert data["id"] == task_id
    assert (data["status"], data["status_text"], data["error"]) == (3, "failed",
                                                                    "stopped by user")
    assert TIME_RE.fullmatch(data["end_time"])
    assert store.get_task(task_id)["status"] == 3
    err(http.post(f"/task/{task_id}/stop"), 40001, "failed")


def test_stop_finished_is_40001(http, devices, store):
    ids = create(http, ["d1", "d2"])
    set_task(store, ids[0], status=2, end_time=T0)
    set_task(store, ids[1], status=3, end_time=T0, error="boom")
    err(http.post(f"/task/{ids[0]}/stop"), 40001, "completed")
    err(http.post(f"/task/{ids[1]}/stop"), 40001, "failed")
    assert store.get_task(ids[0])["status"] == 2
    assert store.get_task(ids[1])["error"] == "boom"


def test_stop_running_without_runner(http, devices, store):
    [task_id] = create(http, auto_retry=True, max_retry_count=5)
    set_task(store, task_id, status=1, started_at=T0)
    data = ok(http.post(f"/task/{task_id}/stop"))
    assert (data["status"], data["error"]) == (3, "stopped by user")
    assert data["retry_count"] == 0          # a stop by the user is never auto-retried


def test_stop_absent(http):
    err(http.post("/task/4242/stop"), 40401)
    err(http.post("/task/4242/retry"), 40401)


def test_retry(http, devices, store):
    [task_id] = create(http, max_retry_count=2)
    set_task(store, task_id, status=3, error="boom", end_time=T0, progress=40,
             message="half", result='{"x": 1}')
    data = ok(http.post(f"/task/{task_id}/retry"))
    assert (data["status"], data["status_text"]) == (0, "pending")
    assert data["retry_count"] == 1 and data["error"] == ""
    assert data["end_time"] is None and data["result"] is None
    err(http.post(f"/task/{task_id}/retry"), 40001, "pending")        # not failed
    set_task(store, task_id, status=3, error="boom again")
    assert ok(http.post(f"/task/{task_id}/retry"))["retry_count"] == 2
    set_task(store, task_id, status=3, error="boom a third time")
    err(http.post(f"/task/{task_id}/retry"), 40001, "limit")           # 2/2
    row = store.get_task(task_id)
    assert (row["status"], row["retry_count"], row["error"]) == (3, 2, "boom a third time")


def test_retry_refused_for_completed_and_running(http, devices, store):
    ids = create(http, ["d1", "d2"])
    set_task(store, ids[0], status=2)
    set_task(store, ids[1], status=1)
    err(http.post(f"/task/{ids[0]}/retry"), 40001, "completed")
    err(http.post(f"/task/{ids[1]}/retry"), 40001, "running")


def test_retry_all_counts(http, devices, store):
    ids = create(http, ["d1", "d2"]) + create(http, ["d1", "d2"]) + create(http, ["d1"])
    for task_id in ids[:3]:
        set_task(store, task_id, status=3, error="boom")
    set_task(store, ids[2], retry_count=3)                      # at its limit
    set_task(store, ids[3], status=2)
    assert ok(http.post("/task/retry-all")) == {"retried_count": 2}
    statuses = [store.get_task(i)["status"] for i in ids]
    assert statuses == [0, 0, 3, 2, 0]
    assert ok(http.post("/task/retry-all")) == {"retried_count": 0}


def test_stats(http, devices, store):
    ids = create(http, ["d1", "d2"]) + create(http, ["d1", "d2"]) + create(http, ["d1"])
    for task_id, status in zip(ids, (0, 1, 2, 3, 3)):
        set_task(store, task_id, status=status)
    assert ok(http.get("/task/stats")) == {"total": 5, "pending": 1, "running": 1,
                                           "completed": 1, "failed": 2}


def test_batch_stop_and_retry(http, devices, store):
    ids = create(http, ["d1", "d2"]) + create(http, ["d1"])
    set_task(store, ids[2], status=2)
    data = ok(http.post("/task/batch/stop", {"task_ids": [ids[0], ids[2], 777]}))
    assert data["done"] == [ids[0]]
    assert set(data["errors"]) == {str(ids[2]), "777"}
    assert data["errors"]["777"] == "task not found"
    assert "completed" in data["errors"][str(ids[2])]
    set_task(store, ids[2], status=3, error="the app crashed")
    data = ok(http.post("/task/batch/retry", {"task_ids": [ids[0], ids[1], ids[2], 777]}))
    assert data["done"] == [ids[2]]
    assert data["errors"]["777"] == "task not found"
    assert "pending" in data["errors"][str(ids[1])]
    assert "stopped by user" in data["errors"][str(ids[0])]      # SPEC 8.3: left alone
    assert store.get_task(ids[2])["status"] == 0
    assert ok(http.post("/task/batch/stop", {"task_ids": []})) == {"done": [], "errors": {}}


def test_clear_deletes_only_finished_tasks(http, devices, store, config):
    ids = create(http, ["d1", "d2"]) + create(http, ["d1", "d2"]) + create(http, ["d1"])
    for task_id, status in zip(ids, (0, 1, 2, 3, 2)):
        set_task(store, task_id, status=status)
    folder = config.artifacts_dir / str(ids[3])
    folder.mkdir(parents=True)
    (folder / "ui_dump.xml").write_text("<x/>")
    assert ok(http.post("/task/clear", {"status": [2]})) == {"deleted_count": 2}
    assert sorted(r[0] for r in store.query("SELECT id FROM tasks")) == ids[:2] + [ids[3]]
    assert ok(http.post("/task/clear", {"status": [2, 3]})) == {"deleted_count": 1}
    assert not folder.exists()
    assert sorted(r[0] for r in store.query("SELECT id FROM tasks")) == ids[:2]


@pytest.mark.parametrize("body, field", [
    ({}, "status"), ({"status": None}, "status"), ({"status": 2}, "status"),
    ({"status": [0]}, "status[0]"), ({"status": [2, 1]}, "status[1]"),
    ({"status": ["2"]}, "status[0]"), ({"status": [4]}, "status[0]"),
])
def test_clear_refuses_unfinished_or_bad_status(http, devices, store, body, field):
    ids = create(http, ["d1", "d2"])
    set_task(store, ids[1], status=2)
    assert err(http.post("/task/clear", body), 40001, field).startswith(field)
    assert count_tasks(store) == 2


# ---------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------

def test_artifact_download_and_refusals(http, devices, config, tmp_path):
    [task_id] = create(http)
    folder = config.artifacts_dir / str(task_id)
    folder.mkdir(parents=True)
    (folder / "screenshot.png").write_bytes(PNG)
    (tmp_path / "secret.txt").write_text("top secret")
    resp = http.get(f"/task/{task_id}/artifacts/screenshot.png")
    assert resp.status_int == 200 and resp.body == PNG and resp.content_type == "image/png"
    err(http.get(f"/task/{task_id}/artifacts/missing.png"), 40401)
    err(http.get(f"/task/{task_id + 1}/artifacts/screenshot.png"), 40401)
    for name in ("..%2f..%2fetc%2fpasswd", "..%2f..%2fsecret.txt", "..%2ft.db",
                 "..", "%2e%2e", "..%5c..%5csecret.txt", "%2fetc%2fpasswd"):
        resp = http.get(f"/task/{task_id}/artifacts/{name}")
        err(resp, 40401)
        assert b"root:" not in resp.body and b"top secret" not in resp.body


# ---------------------------------------------------------------------------
# accounts
# ---------------------------------------------------------------------------

def test_account_crud(http, add_device):
    add_device("d1")
    add_device("d2")
    created = ok(http.post("/account", {"username": "@Alice", "serial": "d1",
                                        "platform": "tiktok"}))
    assert {k: created[k] for k in ("username", "serial", "platform", "package",
                                    "enabled")} == {
        "username": "Alice", "serial": "d1", "platform": "tiktok",
        "package": "com.zhiliaoapp.musically", "enabled": True}
    insta = ok(http.post("/account", {"username": "bob", "serial": "d2",
                                      "platform": "instagram", "enabled": False}))
    assert insta["package"] == "com.instagram.android" and insta["enabled"] is False
    custom = ok(http.post("/account", {"username": "carol", "serial": "d1",
                                       "platform": "tiktok",
                                       "package": "com.ss.android.ugc.trill"}))
    assert custom["package"] == "com.ss.android.ugc.trill"

    data = ok(http.get("/account"))
    assert data["total"] == 3 and [a["username"] for a in data["items"]] == [
        "Alice", "bob", "carol"]
    assert [a["username"] for a in ok(http.get("/account?serial=d1"))["items"]] == [
        "Alice", "carol"]
    assert ok(http.get("/account/@alice"))["username"] == "Alice"      # @ and case
    assert ok(http.get("/account/ALICE"))["serial"] == "d1"

    changed = ok(http.put("/account/alice", {"enabled": False, "serial": "d2"}))
    assert (changed["enabled"], changed["serial"], changed["platform"]) == (False, "d2",
                                                                          "tiktok")
    changed = ok(http.put("/account/alice", {"platform": "instagram"}))
    assert changed["package"] == "com.instagram.android"              # follows platform
    assert changed["enabled"] is False                                 # unchanged

    assert ok(http.delete("/account/@Alice")) == {"deleted": "Alice"}
    err(http.get("/account/alice"), 40401)
    err(http.delete("/account/alice"), 40401)
    err(http.put("/account/alice", {"enabled": True}), 40401)
    assert ok(http.get("/account"))["total"] == 2


@pytest.mark.parametrize("body, field", [
    ({"username": "alice", "serial": "zz", "platform": "tiktok"}, "serial"),
    ({"username": "alice", "serial": "d1", "platform": "facebook"}, "platform"),
    ({"username": "alice", "serial": "d1"}, "platform"),
    ({"username": "alice", "platform": "tiktok"}, "serial"),
    ({"serial": "d1", "platform": "tiktok"}, "username"),
    ({"username": "a b", "serial": "d1", "platform": "tiktok"}, "username"),
    ({"username": "@", "serial": "d1", "platform": "tiktok"}, "username"),
    ({"username": 5, "serial": "d1", "platform": "tiktok"}, "username"),
    ({"username": "alice", "serial": "d1", "platform": "tiktok", "package": "no package"},
     "package"),
    ({"username": "alice", "serial": "d1", "platform": "tiktok", "enabled": "yes"},
     "enabled"),
    ({"username": "alice", "serial": ["d1"], "platform": "tiktok"}, "serial"),
])
def test_account_bad_fields(http, add_device, body, field):
    add_device("d1")
    assert err(http.post("/account", body), 40001, field).startswith(field)
    assert ok(http.get("/account"))["total"] == 0


def test_account_usernames_are_unique(http, add_device):
    add_device("d1")
    ok(http.post("/account", {"username": "alice", "serial": "d1", "platform": "tiktok"}))
    for name in ("alice", "@alice", "ALICE"):
        err(http.post("/account", {"username": name, "serial": "d1",
                                   "platform": "instagram"}), 40001, "username", "exists")
    assert ok(http.get("/account"))["total"] == 1


@pytest.mark.parametrize("body, field", [
    ({"serial": "zz"}, "serial"), ({"platform": "myspace"}, "platform"),
    ({"enabled": 1}, "enabled"), ({"package": "x"}, "package"),
])
def test_account_bad_update(http, add_device, body, field):
    add_device("d1")
    ok(http.post("/account", {"username": "alice", "serial": "d1", "platform": "tiktok"}))
    err(http.put("/account/alice", body), 40001, field)
    assert ok(http.get("/account/alice"))["serial"] == "d1"


# ---------------------------------------------------------------------------
# OpenAPI
# ---------------------------------------------------------------------------

def _generic(path):
    return re.sub(r"\{\w+\}", "{}", re.sub(r"<(\w+)(:\w+)?>", "{}", path))


def test_openapi_document_covers_every_route(app, http):
    resp = http.get("/openapi.json")
    assert resp.status_int == 200 and resp.content_type == "application/json"
    assert_clean(resp)
    doc = resp.json
    assert "code" not in doc                       # the document itself, not enveloped
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    documented = {(method.upper(), _generic(path)) for path, ops in doc["paths"].items()
                  for method in ops}
    # every route bottle serves
    served = {(r.method, _generic(r.rule)) for r in app.api.app.routes
              if r.rule.startswith(API + "/")}           # the page (GET /) is no API
    assert served and served <= documented
    # every route the API declared
    declared = {(r["method"], _generic(API + r["path"])) for r in app.api.routes}
    assert declared == served
    # every endpoint of SPEC 4.2 and 4.3
    spec = {(m, _generic(API + p)) for m, p in SPEC_ENDPOINTS}
    assert spec <= documented, spec - documented
    for path, ops in doc["paths"].items():
        assert path.startswith(API + "/")
        for op in ops.values():
            assert "200" in op["responses"]
            names = re.findall(r"\{(\w+)\}", path)
            assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == names


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

BODY_ENDPOINTS = [("POST", "/task"), ("POST", "/task/clear"), ("POST", "/task/batch/stop"),
                  ("POST", "/task/batch/retry"), ("DELETE", "/task/batch"),
                  ("POST", "/account"), ("POST", "/device/connect"),
                  ("POST", "/device/disconnect")]


@pytest.mark.parametrize("method, path", BODY_ENDPOINTS)
@pytest.mark.parametrize("raw", [b'{"serials": [', b"not json", b"", b"   ", b"[]",
                                 b'["a"]', b'"text"', b"12", b"null", b"true",
                                 b"\xff\xfe{}", b"{'a': 1}"])
def test_malformed_and_non_object_bodies(http, devices, store, method, path, raw):
    err(http.raw(method, path, raw), 40001, "body")
    assert count_tasks(store) == 0


def test_put_account_malformed_body(http, add_device):
    add_device("d1")
    ok(http.post("/account", {"username": "alice", "serial": "d1", "platform": "tiktok"}))
    for raw in (b"[1]", b"{", b"7"):
        err(http.raw("PUT", "/account/alice", raw), 40001, "body")


@pytest.mark.parametrize("method, path", [
    ("GET", "/nope"), ("POST", "/nope"), ("DELETE", "/task/1/nope"), ("GET", "/tasks"),
    ("GET", "/task/abc"), ("GET", "/api/v2/task"), ("GET", "/task/1/artifacts"),
    ("PATCH", "/nowhere"),
])
def test_unknown_routes_are_40401(client, method, path):
    full = path if path.startswith("/api/v2") or path == "/" else API + path
    resp = client.request(full, method=method, expect_errors=True)
    err(resp, 40401)


@pytest.mark.parametrize("method, path", [
    ("PUT", "/task"), ("DELETE", "/task"), ("PATCH", "/task/1"), ("GET", "/task/1/stop"),
    ("POST", "/task/stats"), ("POST", "/license/check"), ("DELETE", "/device"),
    ("GET", "/device/connect"), ("POST", "/account/alice"), ("PUT", "/health"),
    ("POST", "/openapi.json"), ("GET", "/task/batch/stop"),
])
def test_wrong_method_is_40501(client, method, path):
    resp = client.request(API + path, method=method, expect_errors=True)
    err(resp, 40501)
    assert resp.headers.get("Allow")


@pytest.mark.parametrize("method, path", BODY_ENDPOINTS + [("PUT", "/account/alice"),
                                                           ("POST", "/nope")])
def test_body_over_one_mib_is_41301(http, devices, store, method, path):
    payload = json.dumps({"serials": ["d1"], "script_name": "echo",
                          "script_config": {"text": "hi", "extra": {"pad": "x" * (1 << 20)}}})
    resp = http.raw(method, path, payload.encode())
    err(resp, 41301)
    assert resp.status_int == 413
    assert count_tasks(store) == 0


def test_body_of_exactly_one_mib_is_read(http, devices, store):
    base = {"serials": ["d1"], "script_name": "echo",
            "script_config": {"text": "hi", "extra": {"pad": ""}}}
    pad = (1 << 20) - len(json.dumps(base).encode())
    base["script_config"]["extra"]["pad"] = "x" * pad
    raw = json.dumps(base).encode()
    assert len(raw) == 1 << 20
    ok(http.raw("POST", "/task", raw))
    assert count_tasks(store) == 1


def call_wsgi(app, raw, **environ_extra):
    """One raw WSGI call, for requests webtest will not make; returns (status, body)."""
    import io
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": API + "/task", "QUERY_STRING": "",
               "SERVER_NAME": "test", "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1",
               "wsgi.input": io.BytesIO(raw), "wsgi.url_scheme": "http",
               "CONTENT_TYPE": "application/json", "wsgi.errors": io.StringIO(),
               **environ_extra}
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = status

    body = json.loads(b"".join(app(environ, start_response)))
    assert int(seen["status"].split()[0]) == body["code"] // 100
    return seen["status"], body


def test_body_without_content_length_is_limited(app):
    """A body sent without Content-Length is still cut at 1 MiB (41301)."""
    status, body = call_wsgi(app, b'{"x": "' + b"y" * (2 << 20) + b'"}')
    assert body["code"] == 41301 and status.startswith("413")


@pytest.mark.parametrize("length", ["abc", "-1", "1e3"])
def test_bad_content_length(app, length):
    status, body = call_wsgi(app, b"{}", CONTENT_LENGTH=length)
    assert body["code"] == 40001 and "Content-Length" in body["message"]


def test_internal_errors_keep_details_in_the_log(http, app, monkeypatch, caplog):
    def explode():
        raise RuntimeError("secret detail /etc/shadow")
    monkeypatch.setattr(app.lite.store, "stats", explode)
    with caplog.at_level("ERROR", logger="tikmatrix_lite"):
        resp = http.get("/task/stats")
    message = err(resp, 50001)
    assert "secret" not in resp.text and "shadow" not in message
    assert "secret detail" in caplog.text


def test_wrong_types_never_reach_the_store(http, devices, store):
    """A tour of wrong types across endpoints: each is a 40001, nothing is written."""
    calls = [
        ("POST", "/task", {"serials": ["d1"], "script_name": "echo", "script_config": ECHO,
                           "priority": [1]}),
        ("POST", "/task", {"serials": ["d1"], "script_name": "echo", "script_config": ECHO,
                           "start_time": {"h": 1}}),
        ("POST", "/task", {"serials": [["d1"]], "script_name": "echo",
                           "script_config": ECHO}),
        ("POST", "/task/clear", {"status": {"2": True}}),
        ("POST", "/account", {"username": ["a"], "serial": "d1", "platform": "tiktok"}),
        ("POST", "/account", {"username": "a", "serial": "d1", "platform": ["tiktok"]}),
        ("POST", "/device/connect", {"address": {"host": "x"}}),
    ]
    for method, path, body in calls:
        err(http.raw(method, path, json.dumps(body).encode()), 40001)
    assert count_tasks(store) == 0
    assert ok(http.get("/account"))["total"] == 0


# ---------------------------------------------------------------------------
# access (SPEC 3)
# ---------------------------------------------------------------------------

@pytest.fixture
def keyed(make_app, make_config, make_client):
    application = make_app(make_config(api_key="s3cret"))
    return lambda remote="127.0.0.1", **env: make_client(application, remote, **env)


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
    {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"},
    {"Authorization": "Bearer "}, {"X-API-Key": "s3cret "}, {"X-API-Key": "S3CRET"},
    {"Authorization": "Bearer s3cret2"},
])
def test_api_key_missing_or_wrong(keyed, headers):
    c = keyed()
    err(c.get(API + "/task/stats", headers=headers, expect_errors=True), 40101)
    err(c.get(API + "/nope", headers=headers, expect_errors=True), 40101)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer s3cret"}, {"Authorization": "bearer s3cret"},
    {"X-API-Key": "s3cret"},
])
def test_api_key_accepted(keyed, headers):
    c = keyed()
    assert ok(c.get(API + "/task/stats", headers=headers))["total"] == 0
    err(c.get(API + "/nope", headers=headers, expect_errors=True), 40401)


def test_no_key_configured_needs_no_key(http):
    ok(http.get("/task/stats"))
    ok(http.get("/task/stats", headers={"Authorization": "Bearer anything"}))


@pytest.mark.parametrize("remote", ["8.8.8.8", "1.2.3.4", "2001:db8::1", "::ffff:8.8.8.8",
                                    "", "not-an-ip"])
def test_outside_allow_from_is_40301_first(keyed, remote):
    c = keyed(remote)
    good = {"Authorization": "Bearer s3cret"}
    err(c.get(API + "/task/stats", headers=good, expect_errors=True), 40301)
    err(c.get(API + "/task/stats", expect_errors=True), 40301)       # before the key check
    err(c.get(API + "/nope", headers=good, expect_errors=True), 40301)
    err(c.delete(API + "/task", headers=good, expect_errors=True), 40301)
    big = b"{" + b" " * (2 << 20) + b"}"
    err(c.post(API + "/task", params=big, headers=good, content_type="application/json",
               expect_errors=True), 40301)


def test_forbidden_client_changes_nothing(make_app, make_config, make_client):
    application = make_app(make_config())
    application.lite.store.upsert_device("d1")
    c = make_client(application, "8.8.8.8")
    err(c.post_json(API + "/task", {"serials": ["d1"], "script_name": "echo",
                                    "script_config": ECHO}, expect_errors=True), 40301)
    assert count_tasks(application.lite.store) == 0


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1",
                                    "10.1.2.3", "192.168.1.20", "172.16.5.5", "fe80::1",
                                    "fe80::1%eth0"])
def test_default_allow_from(keyed, remote):
    c = keyed(remote)
    ok(c.get(API + "/task/stats", headers={"X-API-Key": "s3cret"}))


def test_custom_allow_from(make_app, make_config, make_client):
    nets = [ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::/32")]
    application = make_app(make_config(allow_from=nets))
    for remote in ("10.1.2.3", "::ffff:10.1.9.9", "2001:db8::5"):
        ok(make_client(application, remote).get(API + "/health"))
    for remote in ("127.0.0.1", "10.2.0.1", "::1", "192.168.1.1"):
        err(make_client(application, remote).get(API + "/health", expect_errors=True),
            40301)


def test_null_clears_an_accounts_limits_and_active_hours(http, add_account):
    """SPEC 8.1: absent limits or hours mean none; a PUT with null clears them, a PUT
    without the field keeps them."""
    add_account("shop_a", "R1")
    body = {"limits": {"follow": {"per_day": 30}}, "active_hours": "09:00-18:00"}
    data = ok(http.put("/account/shop_a", body))
    assert data["limits"] == {"follow": {"per_day": 30}} and data["active_hours"] == "09:00-18:00"
    kept = ok(http.put("/account/shop_a", {"enabled": True}))
    assert kept["limits"] == {"follow": {"per_day": 30}} and kept["active_hours"] == "09:00-18:00"
    cleared = ok(http.put("/account/shop_a", {"limits": None, "active_hours": None}))
    assert cleared["limits"] is None and cleared["active_hours"] is None
