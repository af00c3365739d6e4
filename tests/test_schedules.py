"""SPEC 8.2, schedules: days, times and jitter; each slot fires at most once, also across
restarts and clock changes; slots missed while the box was off are not made up.

The scheduler is driven synchronously (``tick()``) on an injected clock. T0 is Tuesday
2030-01-15 10:00 local time.
"""
from __future__ import annotations

import datetime
import random

import pytest

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock

API = "/api/v1"
SLOT = T0 + 30 * 60                                     # 10:30 the same day


@pytest.fixture
def farm_clock():
    return FakeClock(T0)


@pytest.fixture
def lite_app(make_app, config, farm_clock):
    app = make_app(config, farm_clock)
    app.lite.store.upsert_device("phone-1", state="device")
    return app


@pytest.fixture
def http(lite_app, make_client):
    return make_client(lite_app)


def schedule(http, **fields):
    body = {"name": "morning", "script_name": "echo", "script_config": {"text": "hi"},
            "serials": ["phone-1"], "times": ["10:30"], **fields}
    return http.post_json(f"{API}/schedule", body, expect_errors=True).json


def tasks_of(store, schedule_id):
    return store.query("SELECT * FROM tasks WHERE schedule_id=? ORDER BY id", (schedule_id,))


def test_a_slot_fires_once_at_its_time(lite_app, http, farm_clock):
    created = schedule(http, priority=5, timeout=60)
    assert created["code"] == 0, created
    data = created["data"]
    assert data["next_run"] == tml.format_time(SLOT) and data["last_run"] is None
    assert data["days"] == [1, 2, 3, 4, 5, 6, 7] and data["enabled"] is True
    store, scheduler = lite_app.lite.store, lite_app.lite.scheduler
    farm_clock.advance(SLOT - 1 - T0)
    _, wake = scheduler.tick()
    assert wake == SLOT and tasks_of(store, data["id"]) == []
    farm_clock.advance(1)
    scheduler.tick()
    made = tasks_of(store, data["id"])
    assert len(made) == 1
    assert made[0]["source"] == "schedule" and made[0]["priority"] == 5
    assert made[0]["timeout"] == 60
    for _ in range(3):
        farm_clock.advance(20)
        scheduler.tick()
    assert len(tasks_of(store, data["id"])) == 1
    shown = http.get(f"{API}/schedule/{data['id']}").json["data"]
    assert shown["last_run"] == tml.format_time(SLOT)
    assert shown["next_run"] == tml.format_time(SLOT + 86400)
    task = http.get(f"{API}/task/{made[0]['id']}").json["data"]
    assert task["source"] == "schedule" and task["schedule_id"] == data["id"]


def test_restart_just_after_a_slot_does_not_fire_it_again(make_app, config, farm_clock,
                                                          lite_app, http):
    schedule_id = schedule(http)["data"]["id"]
    farm_clock.advance(SLOT - T0)
    lite_app.lite.scheduler.tick()
    assert len(tasks_of(lite_app.lite.store, schedule_id)) == 1
    lite_app.lite.close()

    farm_clock.advance(30)                              # the box restarts 30 s later
    again = make_app(config, farm_clock)
    again.lite.start()
    again.lite.scheduler.tick()
    assert len(tasks_of(again.lite.store, schedule_id)) == 1
    assert again.lite.store.get_schedule(schedule_id)["next_run"] == SLOT + 86400


def test_a_box_switched_off_over_a_slot_does_not_make_it_up(make_app, config, farm_clock,
                                                            lite_app, http, caplog):
    schedule_id = schedule(http)["data"]["id"]
    lite_app.lite.close()
    farm_clock.advance(2 * 3600)                        # back on at 12:00
    again = make_app(config, farm_clock)
    _, wake = again.lite.scheduler.tick()
    assert tasks_of(again.lite.store, schedule_id) == []
    assert wake == SLOT + 86400                         # tomorrow's slot
    assert "missed" in caplog.text and "not made up" in caplog.text


def test_clock_set_back_after_a_slot_does_not_fire_it_twice(lite_app, http, farm_clock):
    schedule_id = schedule(http)["data"]["id"]
    farm_clock.advance(SLOT - T0)
    lite_app.lite.scheduler.tick()
    farm_clock.now = T0                                 # NTP moves the clock back 30 min
    lite_app.lite.scheduler.tick()
    farm_clock.now = SLOT + 1
    lite_app.lite.scheduler.tick()
    assert len(tasks_of(lite_app.lite.store, schedule_id)) == 1


def test_days_are_iso_weekdays(lite_app, http):
    data = schedule(http, days=[1], times=["09:00", "18:00"])["data"]   # Mondays
    monday = datetime.datetime(2030, 1, 21, 9, 0).timestamp()
    assert data["next_run"] == tml.format_time(monday)
    assert data["times"] == ["09:00", "18:00"]
    today = schedule(http, days=[2], times=["09:00", "18:00"])["data"]  # Tuesday: 18:00
    assert today["next_run"] == tml.format_time(T0 + 8 * 3600)


def test_jitter_is_drawn_per_slot_and_the_slot_fires_at_its_jittered_time(lite_app, http,
                                                                          farm_clock):
    lite_app.lite.schedules.rng = random.Random(7)
    data = schedule(http, jitter_minutes=30)["data"]
    row = lite_app.lite.store.get_schedule(data["id"])
    assert row["next_slot"] == SLOT and SLOT <= row["next_run"] <= SLOT + 1800
    farm_clock.now = row["next_run"] - 1
    lite_app.lite.scheduler.tick()
    assert tasks_of(lite_app.lite.store, data["id"]) == []
    farm_clock.now = row["next_run"]
    lite_app.lite.scheduler.tick()
    assert len(tasks_of(lite_app.lite.store, data["id"])) == 1
    after = lite_app.lite.store.get_schedule(data["id"])
    assert after["next_slot"] == SLOT + 86400
    assert after["next_run"] - after["next_slot"] != row["next_run"] - row["next_slot"]


def test_run_now_makes_the_tasks_and_leaves_the_slots(lite_app, http):
    data = schedule(http)["data"]
    reply = http.post(f"{API}/schedule/{data['id']}/run").json["data"]
    assert reply["created_count"] == 1
    task = http.get(f"{API}/task/{reply['task_ids'][0]}").json["data"]
    assert task["source"] == "schedule" and task["status"] == 0
    shown = http.get(f"{API}/schedule/{data['id']}").json["data"]
    assert shown["next_run"] == data["next_run"] and shown["last_run"] == tml.format_time(T0)


def test_update_disable_list_and_delete(lite_app, http, farm_clock):
    data = schedule(http)["data"]
    changed = http.put_json(f"{API}/schedule/{data['id']}", {"times": ["11:00"],
                                                             "enabled": False}).json["data"]
    assert changed["times"] == ["11:00"] and changed["enabled"] is False
    assert changed["next_run"] is None and changed["script_config"] == {"text": "hi"}
    farm_clock.advance(2 * 3600)
    lite_app.lite.scheduler.tick()
    assert tasks_of(lite_app.lite.store, data["id"]) == []          # disabled: no slot
    listing = http.get(f"{API}/schedule").json["data"]
    assert listing["total"] == 1
    assert http.delete(f"{API}/schedule/{data['id']}").json["code"] == 0
    assert http.get(f"{API}/schedule/{data['id']}", expect_errors=True).json["code"] == 40401


@pytest.mark.parametrize("fields, code, field", [
    ({"name": None}, 40001, "name"),
    ({"times": []}, 40001, "times"),
    ({"times": ["24:00"]}, 40001, "times[0]"),
    ({"times": "10:00"}, 40001, "times"),
    ({"days": [0]}, 40001, "days[0]"),
    ({"days": []}, 40001, "days"),
    ({"days": [8]}, 40001, "days[0]"),
    ({"jitter_minutes": 121}, 40001, "jitter_minutes"),
    ({"script_config": {"text": 5}}, 40001, "script_config.text"),   # as POST /task would
    ({"serials": ["nope"]}, 40001, "serials[0]"),
    ({"timeout": 5}, 40001, "timeout"),
    ({"script_name": "nope"}, 40003, ""),
])
def test_a_bad_schedule_is_refused_at_once(lite_app, http, fields, code, field):
    reply = schedule(http, **fields)
    assert reply["code"] == code and reply["message"].startswith(field), reply
    assert lite_app.lite.store.list_schedules() == []


def test_a_slot_a_minute_late_still_fires_once(lite_app, http, farm_clock):
    schedule_id = schedule(http)["data"]["id"]
    farm_clock.now = SLOT + 60                          # a busy box, not a switched-off one
    lite_app.lite.scheduler.tick()
    lite_app.lite.scheduler.tick()
    assert len(tasks_of(lite_app.lite.store, schedule_id)) == 1


def test_a_schedule_of_phone_groups_makes_a_task_on_each_phone_of_them(lite_app, http):
    """SPEC 8.2 with issue 12's groups: a schedule names groups, its tasks go to their
    phones (looked up when the slot fires)."""
    store = lite_app.lite.store
    store.upsert_device("phone-2", state="device", groups='["shelf"]')
    store.upsert_device("phone-1", groups='["shelf"]')
    data = schedule(http, serials=None, groups=["shelf"])["data"]
    assert data["groups"] == ["shelf"]
    reply = http.post(f"{API}/schedule/{data['id']}/run").json["data"]
    assert sorted(t["serial"] for t in tasks_of(store, data["id"])) == ["phone-1", "phone-2"]
    assert reply["created_count"] == 2
    refused = schedule(http, serials=None, groups=["nobody"])
    assert refused["code"] == 40001 and refused["message"].startswith("groups")
