"""SPEC 8.1, account safety: limits, active hours, cooldown after a block, resume.

On the farm (real adb server, simulated phones) with an injected clock: the test moves
the clock and wakes the scheduler; a waiting task must start on its own at the moment
the scheduler was told (``tick()``'s next wake), never by polling.
"""
from __future__ import annotations

import pytest

import tikmatrix_lite as tml
from conftest import T0
from farm import FakeClock, Farm, open_gate, wait_until

API = "/api/v1"
MIDNIGHT = tml._local_midnight(T0, days=1)


@pytest.fixture
def farm(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim, clock=FakeClock(T0),
                webhooks=["http://127.0.0.1:9/hook"]).start()
    yield farm
    farm.close()


def account(farm, username, serial, **safety):
    reply = farm.http.post_json(f"{API}/account", dict(
        username=username, serial=serial, platform="tiktok", **safety)).json
    assert reply["code"] == 0, reply
    return reply["data"]


def create(farm, username, script="follow", config=None, **extra):
    body = {"usernames": [username], "script_name": script, "script_config": config or {},
            **extra}
    reply = farm.http.post_json(f"{API}/task", body).json
    assert reply["code"] == 0, reply
    return reply["data"]["task_ids"][0]


def test_daily_limit_holds_the_task_with_a_reason_and_starts_it_at_midnight(farm):
    phone = farm.add_phone()
    account(farm, "shop_a", phone.address, limits={"follow": {"per_day": 1}})
    account(farm, "shop_b", phone.address)
    first = create(farm, "@shop_a")
    farm.wait_status(first, 2)
    farm.wait_idle(phone)
    second = create(farm, "shop_a")
    other = create(farm, "shop_b")
    assert farm.wait_status(other, 2)["status"] == 2           # other accounts go ahead
    waiting = wait_until(lambda: (lambda t: t if t["message"] else None)(
        farm.task(second)), 10, "the waiting reason")
    assert waiting["status"] == 0
    assert waiting["message"] == ("waiting: @shop_a reached its follow limit of 1 per day;"
                                  f" next at {tml.format_time(MIDNIGHT)}")
    # a busy phone's tasks are read when it is freed: the runner may still be ending
    # shop_b's task (status written first), so the phone must be idle before the look
    farm.wait_idle(phone)
    _, wake = farm.lite.scheduler.tick()
    assert wake == MIDNIGHT                                     # told when, not polled
    shown = farm.http.get(f"{API}/account/shop_a").json["data"]
    assert shown["counts"]["follow"] == {"last_hour": 1, "today": 1}
    assert shown["status"] == "ok" and shown["limits"] == {"follow": {"per_day": 1}}

    farm.clock.advance(MIDNIGHT - 1 - farm.clock.now)
    farm.wake()
    assert farm.lite.scheduler.tick()[0] == [] and farm.task(second)["status"] == 0
    farm.clock.advance(1)
    farm.wake()
    assert farm.wait_status(second, 2)["message"] == "completed"


def test_hourly_limit_frees_when_the_oldest_action_leaves_the_window(farm):
    phone = farm.add_phone()
    account(farm, "shop_a", phone.address, limits={"follow": {"per_hour": 2}})
    ids = []
    for minute in (0, 20):
        ids.append(create(farm, "shop_a"))
        farm.wait_status(ids[-1], 2)
        farm.wait_idle(phone)
        farm.clock.advance(20 * 60)
    third = create(farm, "shop_a")                             # at 10:40, two done
    wait_until(lambda: farm.task(third)["message"].startswith("waiting:"), 10, "waiting")
    assert "follow limit of 2 per hour" in farm.task(third)["message"]
    _, wake = farm.lite.scheduler.tick()
    assert wake == T0 + 3600                                    # 11:00: the 10:00 one leaves
    farm.clock.advance(wake - farm.clock.now)
    farm.wake()
    farm.wait_status(third, 2)


def test_active_hours_wrap_midnight_and_start_the_task_when_they_open(farm):
    phone = farm.add_phone()
    account(farm, "night", phone.address, active_hours="22:00-06:00")
    task_id = create(farm, "night")
    wait_until(lambda: farm.task(task_id)["message"].startswith("waiting:"), 10, "waiting")
    opens = T0 + 12 * 3600
    assert farm.task(task_id)["message"] == (
        "waiting: @night is outside its active hours 22:00-06:00; next at "
        f"{tml.format_time(opens)}")
    assert farm.lite.scheduler.tick()[1] == opens
    farm.clock.advance(opens - farm.clock.now)
    farm.wake()
    farm.wait_status(task_id, 2)


def test_a_block_puts_the_account_into_cooldown_until_resumed(farm):
    phone = farm.add_phone()
    account(farm, "shop_a", phone.address, cooldown_hours=6)
    blocked = create(farm, "shop_a", "blocked", auto_retry=True)
    task = farm.wait_status(blocked, 3)
    assert task["error"] == "account blocked: Try again later"
    assert task["retry_count"] == 0                            # no auto-retry on a block
    shown = farm.http.get(f"{API}/account/shop_a").json["data"]
    assert shown["status"] == "cooldown"
    assert shown["cooldown_until"] == tml.format_time(T0 + 6 * 3600)
    wait_until(lambda: {"account.cooldown", "task.finished"} <= {
        r["event"] for r in farm.lite.store.list_deliveries()}, 10, "both webhooks queued")
    cooldown = next(r for r in farm.lite.store.list_deliveries()
                    if r["event"] == "account.cooldown")
    sent = __import__("json").loads(cooldown["body"])
    assert sent["account"]["username"] == "shop_a" and sent["account"]["status"] == "cooldown"

    farm.wait_idle(phone)
    later = create(farm, "shop_a")
    wait_until(lambda: farm.task(later)["message"].startswith("waiting:"), 10, "waiting")
    assert "cooldown" in farm.task(later)["message"]
    assert farm.lite.scheduler.tick()[1] == T0 + 6 * 3600
    resumed = farm.http.post(f"{API}/account/shop_a/resume").json["data"]
    assert resumed["status"] == "ok" and resumed["cooldown_until"] is None
    farm.wait_status(later, 2)


def test_device_mode_counts_against_the_phones_only_account(farm):
    phone = farm.add_phone()
    account(farm, "solo", phone.address, limits={"follow": {"per_day": 1}})
    first = farm.create([phone.address], "follow", {})[0]
    farm.wait_status(first, 2)
    farm.wait_idle(phone)
    second = farm.create([phone.address], "follow", {})[0]
    wait_until(lambda: farm.task(second)["message"].startswith("waiting: @solo"), 10,
               "device-mode task held by the account's limit")


def test_stopped_warmup_keeps_its_partial_result_and_counts(farm):
    phone = farm.add_phone()
    account(farm, "warm", phone.address)
    task_id = create(farm, "warm", "account_warmup", {"likes": 3})
    wait_until(lambda: farm.task(task_id)["progress"] == 50, 10, "warm-up watching")
    farm.http.post(f"{API}/task/{task_id}/stop")
    task = farm.wait_status(task_id, 3)
    assert task["result"] == {"likes": 3, "follows": 0, "comments": 0}
    assert task["message"] == "stopped by user"
    farm.wait_idle(phone)                    # the runner has counted what the task did
    counts = farm.http.get(f"{API}/account/warm").json["data"]["counts"]
    assert counts["like"]["today"] == 3


def test_completed_message_says_so_not_the_last_progress_line(farm):
    phone = farm.add_phone()
    account(farm, "warm", phone.address)
    task_id = create(farm, "warm", "account_warmup", {"likes": 1})
    wait_until(lambda: farm.task(task_id)["progress"] == 50, 10, "warm-up watching")
    open_gate(phone)
    assert farm.wait_status(task_id, 2)["message"] == "completed"


# -- the API's checks, without phones ------------------------------------------------------
@pytest.mark.parametrize("fields, field", [
    ({"limits": []}, "limits"),
    ({"limits": {"jump": {"per_day": 1}}}, "limits.jump"),
    ({"limits": {"follow": {}}}, "limits.follow"),
    ({"limits": {"follow": {"per_week": 1}}}, "limits.follow"),
    ({"limits": {"follow": {"per_day": -1}}}, "limits.follow.per_day"),
    ({"limits": {"follow": {"per_day": "9"}}}, "limits.follow.per_day"),
    ({"active_hours": "9-17"}, "active_hours"),
    ({"active_hours": "25:00-06:00"}, "active_hours"),
    ({"cooldown_hours": -1}, "cooldown_hours"), ({"cooldown_hours": "1"}, "cooldown_hours"),
])
def test_bad_safety_fields_are_40001_and_change_nothing(client, add_account, fields, field):
    add_account("shop_a", "phone-1")
    reply = client.put_json(f"{API}/account/shop_a", fields, expect_errors=True).json
    assert reply["code"] == 40001 and reply["message"].startswith(field), reply
    shown = client.get(f"{API}/account/shop_a").json["data"]
    assert shown["limits"] is None and shown["active_hours"] is None
    assert shown["cooldown_hours"] == 24


def test_account_shows_safety_fields_and_resume_of_unknown_is_404(client, add_account):
    add_account("shop_a", "phone-1")
    reply = client.put_json(f"{API}/account/shop_a", {
        "limits": {"follow": {"per_hour": 5, "per_day": 30}}, "active_hours": "09:00-21:00",
        "cooldown_hours": 12}).json["data"]
    assert reply["limits"] == {"follow": {"per_hour": 5, "per_day": 30}}
    assert reply["active_hours"] == "09:00-21:00" and reply["cooldown_hours"] == 12
    assert reply["status"] == "ok" and reply["cooldown_until"] is None
    assert set(reply["counts"]) >= {"follow", "unfollow", "comment", "post", "like"}
    assert client.put_json(f"{API}/account/shop_a", {"enabled": False}).json["data"][
        "limits"] == {"follow": {"per_hour": 5, "per_day": 30}}        # kept when not sent
    assert client.post(f"{API}/account/nobody/resume", expect_errors=True).json[
        "code"] == 40401
