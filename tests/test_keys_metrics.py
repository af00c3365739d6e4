"""SPEC 8.5 keys and roles, 8.6 metrics, and the small items of issue 10: status names,
full start times, case-insensitive usernames, one log line per request."""
from __future__ import annotations

import logging

import pytest

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock

API = "/api/v1"


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_app, make_config, make_client):
    app = make_app(make_config(api_key="root-key"))
    app.lite.store.upsert_device("phone-1", state="device")
    return app, make_client(app)


def new_key(client, name, role, auth=None):
    reply = client.post_json(f"{API}/apikey", {"name": name, "role": role},
                             headers=auth or bearer("root-key"), expect_errors=True).json
    assert reply["code"] == 0, reply
    return reply["data"]


def test_roles_viewer_reads_operator_works_admin_manages_keys(keyed):
    app, client = keyed
    viewer, operator = new_key(client, "dash", "viewer"), new_key(client, "ops", "operator")
    assert viewer["key"] != operator["key"] and viewer["role"] == "viewer"
    body = {"serials": ["phone-1"], "script_name": "echo", "script_config": {"text": "x"}}

    assert client.get(f"{API}/task", headers=bearer(viewer["key"])).json["code"] == 0
    refused = client.post_json(f"{API}/task", body, headers=bearer(viewer["key"]),
                               expect_errors=True)
    assert refused.status_int == 403 and refused.json["code"] == 40301
    made = client.post_json(f"{API}/task", body, headers={"X-API-Key": operator["key"]}).json
    assert made["code"] == 0
    assert client.get(f"{API}/apikey", headers=bearer(operator["key"]),
                      expect_errors=True).json["code"] == 40301
    admin_made = client.post_json(f"{API}/task", body, headers=bearer("root-key")).json
    task = client.get(f"{API}/task/{made['data']['task_ids'][0]}",
                      headers=bearer("root-key")).json["data"]
    assert task["creator"] == "ops"
    mine = client.get(f"{API}/task?creator=admin", headers=bearer("root-key")).json["data"]
    assert [t["id"] for t in mine["items"]] == admin_made["data"]["task_ids"]

    listing = client.get(f"{API}/apikey", headers=bearer("root-key")).json["data"]
    assert listing["total"] == 2 and all("key" not in k and "key_hash" not in k
                                         for k in listing["items"])
    stored = app.lite.store.query("SELECT key_hash FROM api_keys")
    assert viewer["key"] not in {r[0] for r in stored}             # stored hashed
    assert client.delete(f"{API}/apikey/{viewer['id']}", headers=bearer("root-key")).json[
        "code"] == 0
    assert client.get(f"{API}/task", headers=bearer(viewer["key"]),
                      expect_errors=True).json["code"] == 40101


def test_keys_count_only_once_an_admin_key_exists(app, client, caplog):
    made = client.post_json(f"{API}/apikey", {"name": "ops", "role": "operator"}).json["data"]
    assert client.get(f"{API}/task").json["code"] == 0             # still open: no admin
    admin = client.post_json(f"{API}/apikey", {"name": "boss", "role": "admin"}).json["data"]
    with caplog.at_level(logging.WARNING):
        refused = client.get(f"{API}/task", expect_errors=True)
    assert refused.json["code"] == 40101
    assert "rejected GET /api/v1/task" in caplog.text and admin["key"] not in caplog.text
    assert client.get(f"{API}/task", headers=bearer(made["key"])).json["code"] == 0
    assert client.get(f"{API}/apikey", headers=bearer(admin["key"])).json["data"]["total"] == 2


@pytest.mark.parametrize("body, field", [
    ({"role": "admin"}, "name"), ({"name": "x"}, "role"), ({"name": "x", "role": "root"}, "role"),
    ({"name": " ", "role": "viewer"}, "name"),
])
def test_bad_key_requests_are_40001(client, body, field):
    reply = client.post_json(f"{API}/apikey", body, expect_errors=True).json
    assert reply["code"] == 40001 and reply["message"].startswith(field)


def test_metrics_in_prometheus_text_with_the_same_access_rules(keyed):
    app, client = keyed
    refused = client.get("/metrics", expect_errors=True)
    assert refused.json["code"] == 40101
    lite = app.lite
    task_id = lite.store.create_tasks([tml.NewTask("phone-1", "echo", {"text": "x"})])[0]
    lite.store.claim_next("phone-1", lite.clock())
    lite.store.finish(task_id, ok=True, result={})
    lite._count_device_call("shell:uiautomator dump /sdcard/x.xml", 0.2)
    text = client.get("/metrics", headers=bearer("root-key")).text
    assert 'tmlite_tasks{status="completed"} 1' in text
    assert 'tmlite_tasks{status="pending"} 0' in text
    assert 'tmlite_phones{state="device"} 1' in text
    assert 'tmlite_tasks_finished_total{outcome="completed",script="echo"} 1' in text
    assert "tmlite_task_run_seconds_count 1" in text
    assert 'tmlite_device_call_seconds_bucket{le="0.25"} 1' in text
    assert "tmlite_window_dumps_total 1" in text
    assert "tmlite_event_streams_open 0" in text
    for line in text.splitlines():                      # every sample line is well formed
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


# -- small items -------------------------------------------------------------------------------
@pytest.fixture
def timed(make_app, config, make_client):
    clock = FakeClock(T0)                               # 10:00 local
    app = make_app(config, clock)
    app.lite.store.upsert_device("phone-1", state="device")
    return app, make_client(app)


def post(client, **extra):
    body = {"serials": ["phone-1"], "script_name": "echo", "script_config": {"text": "x"},
            **extra}
    return client.post_json(f"{API}/task", body, expect_errors=True).json


def test_start_time_takes_a_full_date_and_a_past_time_says_tomorrow(timed):
    app, client = timed
    full = post(client, start_time="2030-01-20 08:15")["data"]["task_ids"][0]
    task = client.get(f"{API}/task/{full}").json["data"]
    assert task["start_time"] == "2030-01-20 08:15:00" and task["message"] == ""
    later = client.get(f"{API}/task/{post(client, start_time='11:00')['data']['task_ids'][0]}"
                        ).json["data"]
    assert later["start_time"] == "2030-01-15 11:00:00" and later["message"] == ""
    past = client.get(f"{API}/task/{post(client, start_time='09:00')['data']['task_ids'][0]}"
                      ).json["data"]
    assert past["start_time"] == "2030-01-16 09:00:00"
    assert past["message"].startswith("starts tomorrow at 2030-01-16 09:00:00")
    bad = post(client, start_time="2030-02-30 10:00")
    assert bad["code"] == 40001 and bad["message"].startswith("start_time")


def test_status_filter_takes_names(timed):
    app, client = timed
    ids = [post(client)["data"]["task_ids"][0] for _ in range(3)]
    app.lite.tasks.stop(ids[0])
    assert [t["id"] for t in client.get(f"{API}/task?status=failed").json["data"]["items"]] \
        == [ids[0]]
    both = client.get(f"{API}/task?status=pending,failed").json["data"]
    assert both["total"] == 3
    assert client.get(f"{API}/task?status=Pending,3").json["data"]["total"] == 3
    assert client.get(f"{API}/task?status=done", expect_errors=True).json["code"] == 40001


def test_usernames_are_one_account_whatever_the_case(timed):
    app, client = timed
    store = app.lite.store
    assert store.save_account("NASA", "phone-1", "tiktok", "com.zhiliaoapp.musically",
                              True, True)
    reply = client.post_json(f"{API}/task", {"usernames": ["@nasa", "Nasa", "NASA"],
                                             "script_name": "echo",
                                             "script_config": {"text": "x"}}).json
    assert reply["data"]["created_count"] == 1                     # one account
    for name in ("nasa", "@NaSa"):
        assert client.get(f"{API}/task", params={"username": name}).json["data"]["total"] == 1


def test_one_log_line_per_request_without_the_key(make_app, make_config, make_client, caplog):
    app = make_app(make_config(api_key="very-secret"))
    client = make_client(app)
    with caplog.at_level(logging.INFO, logger="tikmatrix_lite.http"):
        client.get(f"{API}/task/stats?x=1", headers=bearer("very-secret"))
        client.get(f"{API}/nope", headers=bearer("very-secret"), expect_errors=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "tikmatrix_lite.http"]
    assert len(lines) == 2
    assert lines[0].startswith("127.0.0.1 GET /api/v1/task/stats?x=1 200 ")
    assert lines[0].endswith(" ms") and lines[1].split()[3] == "404"
    assert "very-secret" not in caplog.text


def test_log_file_is_rotated(tmp_path):
    path = tmp_path / "lite.log"
    try:
        tml.setup_logging("info", path)
        logging.getLogger("tikmatrix_lite").info("hello file")
        handler = next(h for h in logging.getLogger().handlers
                       if hasattr(h, "maxBytes"))
        assert handler.maxBytes == 10 * 1024 * 1024 and handler.backupCount == 3
        handler.flush()
        assert "hello file" in path.read_text()
    finally:
        for h in logging.getLogger().handlers:
            h.close()
        logging.getLogger().handlers.clear()
    with pytest.raises(tml.ConfigError, match="cannot write log file"):
        tml.setup_logging("info", tmp_path / "missing-folder" / "x.log")


def test_follow_targets_differing_only_in_case_are_one_task():
    from pathlib import Path
    script = tml.load_scripts(Path(__file__).resolve().parent.parent / "scripts")["follow"]
    configs = script.expand_config(script.check_config(
        {"target_users": ["@NASA", "nasa", "NatGeo", "natgeo"]}))
    assert [c["target_user"] for c in configs] == ["NASA", "NatGeo"]


def test_refused_address_is_a_warning_naming_it(client, caplog):
    with caplog.at_level(logging.WARNING):
        reply = client.get(f"{API}/task", extra_environ={"REMOTE_ADDR": "8.8.8.8"},
                           expect_errors=True)
    assert reply.json["code"] == 40301
    assert "refused GET /api/v1/task from 8.8.8.8" in caplog.text


def test_a_viewer_key_only_reads_the_farm_view(keyed):
    """Roles guard issue 12's endpoints too: a viewer may read phones, materials and
    screens, not drive a phone, rename it or upload; an operator may."""
    app, client = keyed
    viewer, operator = new_key(client, "wall", "viewer"), new_key(client, "hands", "operator")
    as_viewer, as_operator = bearer(viewer["key"]), bearer(operator["key"])
    for path in ("/device", "/material", "/schedule", "/webhook/deliveries"):
        assert client.get(API + path, headers=as_viewer).json["code"] == 0, path
    for method, path, body in (
            ("POST", "/device/phone-1/input", {"action": "key", "key": "HOME"}),
            ("PUT", "/device/phone-1", {"alias": "a"}),
            ("POST", "/material", None), ("DELETE", "/device/phone-1", None)):
        reply = client.request(API + path, method=method, headers=as_viewer,
                               body=b"{}" if body is None else
                               __import__("json").dumps(body).encode(),
                               content_type="application/json", expect_errors=True)
        assert reply.status_int == 403 and reply.json["code"] == 40301, (method, path)
    renamed = client.put_json(f"{API}/device/phone-1", {"alias": "shelf"},
                              headers=as_operator).json
    assert renamed["code"] == 0 and renamed["data"]["alias"] == "shelf"
