"""The scheduler, end to end: real adb server, simulated phones, Lite's own threads.

The scheduling rules themselves (priority, start time, rest, auto-retry) are tested
synchronously, without adb, in test_scheduling_policy.py; these check that the rules
hold with real phones and the scheduler's own thread. Time moves by an injected clock.
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


def test_start_time_hhmm_is_the_next_occurrence(farm):
    phone = farm.add_phone()
    ids = farm.create([phone.address], "say", {"word": "tomorrow"}, start_time="00:00")
    task = farm.task(ids[0])
    assert task["status"] == 0 and task["start_time"].endswith("00:00:00")
    farm.clock.advance(24 * 3600)
    farm.wake()
    farm.wait_status(ids[0], 2)


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
