"""The scheduler, end to end: real adb server, simulated phones, Lite's own threads.

Start times and rest intervals are tested with an injected clock: the test moves the
clock and wakes the scheduler instead of sleeping.
"""
import pytest

from farm import FakeClock, Farm, open_gate, wait_until


@pytest.fixture
def farm(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim, clock=FakeClock()).start()
    yield farm
    farm.close()


def said(phone):
    """The words the say/gate scripts echoed on a phone, in order."""
    return [argv[-1] for argv in phone.commands("echo") if argv[1] in ("said", "entered")]


def test_three_phones_run_at_once_one_task_each(farm):
    phones = [farm.add_phone(model=f"Phone {i}") for i in range(3)]
    first = [farm.create([p.address], "gate", {"word": f"first-{i}"})[0]
             for i, p in enumerate(phones)]
    second = [farm.create([p.address], "gate", {"word": f"second-{i}"})[0]
              for i, p in enumerate(phones)]

    for task_id in first:                      # all three hold their phone together
        farm.wait_status(task_id, 1)
    stats = farm.http.get("/api/v1/task/stats").json["data"]
    assert stats["running"] == 3 and stats["pending"] == 3
    for task_id in second:                     # the second task of each phone waits
        assert farm.task(task_id)["status"] == 0

    for phone in phones:
        open_gate(phone)
    for task_id in first + second:
        assert farm.wait_status(task_id, (2, 3))["status"] == 2
    for i, phone in enumerate(phones):
        assert said(phone) == [f"first-{i}", f"second-{i}"]


def test_priority_then_start_time_then_id(farm):
    phone = farm.add_phone()
    ids = farm.lite.store.create_tasks([                      # one transaction: all seen at once
        farm_task(phone, "low-a", 0), farm_task(phone, "high", 50),
        farm_task(phone, "low-b", 0), farm_task(phone, "mid", 10)])
    farm.wake()
    for task_id in ids:
        farm.wait_status(task_id, 2)
    assert said(phone) == ["high", "mid", "low-a", "low-b"]


def farm_task(phone, word, priority=0, start=0.0, script="say"):
    import tikmatrix_lite as t
    return t.NewTask(serial=phone.address, script_name=script, script_config={"word": word},
                     priority=priority, start_time=start)


def test_start_time_waits_for_the_clock(farm):
    phone = farm.add_phone()
    clock = farm.clock
    later = farm.lite.store.create_tasks([farm_task(phone, "later", 99, clock.now + 3600)])[0]
    now = farm.create([phone.address], "say", {"word": "now"})[0]
    farm.wait_status(now, 2)
    assert farm.task(later)["status"] == 0 and said(phone) == ["now"]

    clock.advance(3599)
    farm.wake()
    assert farm.lite.scheduler.tick()[0] == []               # one second early: nothing
    clock.advance(1)
    farm.wake()
    assert farm.wait_status(later, 2)["result"] == {"said": "said later"}
    assert said(phone) == ["now", "later"]


def test_start_time_hhmm_is_the_next_occurrence(farm):
    phone = farm.add_phone()
    ids = farm.create([phone.address], "say", {"word": "tomorrow"}, start_time="00:00")
    task = farm.task(ids[0])
    assert task["status"] == 0 and task["start_time"].endswith("00:00:00")
    farm.clock.advance(24 * 3600)
    farm.wake()
    farm.wait_status(ids[0], 2)


def test_rest_interval_between_tasks_of_a_phone(farm):
    phone = farm.add_phone()
    ids = farm.create([phone.address], "say", {"word": "one"}, min_interval=2,
                      max_interval=2)
    ids += farm.create([phone.address], "say", {"word": "two"}, min_interval=2,
                       max_interval=2)
    farm.wait_status(ids[0], 2)
    farm.wait_idle(phone)
    assert farm.task(ids[1])["status"] == 0                  # resting 2 minutes
    _, next_due = farm.lite.scheduler.tick()
    assert next_due == pytest.approx(farm.clock.now + 120, abs=1)
    farm.clock.advance(121)
    farm.wake()
    farm.wait_status(ids[1], 2)
    assert said(phone) == ["one", "two"]


def test_max_running_caps_tasks_across_phones(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim, clock=FakeClock(), max_running=1).start()
    try:
        phones = [farm.add_phone(), farm.add_phone()]
        ids = [farm.create([p.address], "gate", {"word": f"w{i}"})[0]
               for i, p in enumerate(phones)]
        first = wait_until(lambda: [i for i in ids if farm.task(i)["status"] == 1], 10,
                           "one running task")
        assert len(first) == 1 and farm.lite.store.running_count() == 1
        other = [i for i in ids if i not in first][0]
        assert farm.task(other)["status"] == 0
        for phone in phones:
            open_gate(phone)
        farm.wait_status(first[0], 2)
        farm.wait_status(other, 2)
    finally:
        farm.close()


def test_offline_phone_keeps_its_tasks_waiting(farm):
    phone = farm.add_phone()
    phone.unplug()
    wait_until(lambda: not farm.lite.devices.is_online(phone.address), 10, "offline")
    ids = farm.create([phone.address], "say", {"word": "patient"})
    devices = {d["serial"]: d for d in farm.http.get("/api/v1/device").json["data"]["items"]}
    assert devices[phone.address]["state"] in ("offline", "disconnected")
    assert devices[phone.address]["pending_count"] == 1
    assert farm.task(ids[0])["status"] == 0
    phone.replug()
    farm.adb.run("disconnect", phone.address)
    farm.adb.connect(phone.address)
    farm.wait_status(ids[0], 2, timeout=20)


def test_auto_retry_runs_again_after_a_random_wait(farm):
    phone = farm.add_phone()
    ids = farm.create([phone.address], "flaky", {}, auto_retry=True, max_retry_count=2)
    task = wait_until(lambda: (lambda t: t if t["retry_count"] == 1 else None)(
        farm.task(ids[0])), 10, "first auto-retry")
    assert task["status"] == 0 and task["error"] == ""
    assert "auto-retry 1/2" in " ".join(task["log"])
    farm.wait_idle(phone)
    _, next_due = farm.lite.scheduler.tick()
    assert 5 <= next_due - farm.clock.now <= 60
    farm.clock.advance(61)
    farm.wake()
    wait_until(lambda: farm.task(ids[0])["retry_count"] == 2, 10, "second auto-retry")
    farm.clock.advance(61)
    farm.wake()
    task = farm.wait_status(ids[0], 3)
    assert task["error"] == "the app crashed" and task["retry_count"] == 2
    assert [a[-1] for a in phone.commands("echo") if a[1] == "flaky"] == ["0", "1", "2"]
