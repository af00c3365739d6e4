"""SPEC 7.3 on simulated phones: input from the farm view reaches the phone (text through
its input method, quoted), a running task is protected unless taken over, and live
screens are shared between viewers and kept within the --screen-fps budget."""
from __future__ import annotations

import threading

import pytest

from farm import Farm, wait_until

API = "/api/v1"


@pytest.fixture
def farm(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim, screen_fps=2.0).start()
    yield farm
    farm.close()


def post_input(farm, serial, body, status=200):
    return farm.http.post_json(f"{API}/device/{serial}/input", body, status=status).json


def test_device_fields_after_identify(farm):
    phone = farm.add_phone(ime="fastinput")
    wait_until(lambda: farm.lite.store.get_device(phone.address)["screen"], 10, "described")
    d = next(d for d in farm.http.get(API + "/device").json["data"]["items"]
             if d["serial"] == phone.address)
    assert d["screen"] == "1080x2400"
    assert d["ime"] == "com.github.tikmatrix/.FastInputIME"
    assert isinstance(d["apps"], dict) and d["last_error"] == ""


def test_tap_swipe_key_and_text_reach_the_phone(farm):
    phone = farm.add_phone(ime="fastinput")
    assert post_input(farm, phone.address, {"action": "tap", "x": 10, "y": 20})["code"] == 0
    assert ["input", "tap", "10", "20"] in phone.commands("input")
    post_input(farm, phone.address, {"action": "swipe", "x1": 1, "y1": 2, "x2": 3,
                                     "y2": 4, "duration_ms": 250})
    assert ["input", "swipe", "1", "2", "3", "4", "250"] in phone.commands("input")
    post_input(farm, phone.address, {"action": "key", "key": "APP_SWITCH"})
    assert ["input", "keyevent", "KEYCODE_APP_SWITCH"] in phone.commands("input")
    text = "héllo 世界 $(reboot); 🙂"
    post_input(farm, phone.address, {"action": "text", "text": text})
    broadcasts = [c for c in phone.commands("am") if "ADB_INPUT_TEXT" in c]
    assert broadcasts, phone.commands("am")
    assert not any("reboot" in " ".join(c) for c in phone.commands() if c[0] != "am")
    # the phone got its own keyboard back
    assert phone.settings["secure"]["default_input_method"] != \
        "com.github.tikmatrix/.FastInputIME"


def test_text_without_input_method_is_ascii_only(farm):
    phone = farm.add_phone()
    reply = post_input(farm, phone.address, {"action": "text", "text": "日本"}, status=400)
    assert reply["code"] == 40001 and "input method" in reply["message"]


def test_a_running_task_is_protected_unless_taken_over(farm):
    phone = farm.add_phone()
    task = farm.create([phone.address], "gate")[0]
    farm.wait_status(task, 1)
    reply = post_input(farm, phone.address, {"action": "key", "key": "HOME"}, status=400)
    assert reply["code"] == 40001 and f"task {task}" in reply["message"]
    assert ["input", "keyevent", "KEYCODE_HOME"] not in phone.commands("input")
    post_input(farm, phone.address, {"action": "key", "key": "HOME", "take_over": True})
    assert farm.task(task)["error"] == "stopped by user"
    assert ["input", "keyevent", "KEYCODE_HOME"] in phone.commands("input")


def screencaps(phone):
    return len(phone.commands("screencap"))


def test_viewers_share_captures(farm):
    phone = farm.add_phone()
    phone.clear_log()
    url = f"{API}/device/{phone.address}/screenshot?max_age_ms=60000"
    first = farm.http.get(url)
    assert first.content_type == "image/png" and first.body.startswith(b"\x89PNG")
    for _ in range(5):                                   # five more viewers, one capture
        assert farm.http.get(url).body == first.body
    assert screencaps(phone) == 1
    farm.http.get(f"{API}/device/{phone.address}/screenshot")   # no max_age: fresh
    assert screencaps(phone) == 2


def test_concurrent_viewers_wait_for_one_capture(farm):
    phone = farm.add_phone()
    phone.clear_log()
    barrier = threading.Barrier(6)
    bodies = []

    def view():
        barrier.wait()
        bodies.append(farm.lite.screens.frame(phone.address, "png", 60000)[0].data)
    threads = [threading.Thread(target=view) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(bodies) == 6 and len(set(bodies)) == 1
    assert screencaps(phone) == 1


def test_budget_gives_the_opened_phone_the_larger_share(farm):
    a, b, c = farm.add_phone(), farm.add_phone(), farm.add_phone()
    screens = farm.lite.screens                     # 2 frames/s across the box
    for p in (a, b):
        screens.frame(p.address, "png", view="grid")
    screens.frame(c.address, "png", view="focus")
    focus = screens.interval(c.address, True)
    grid = screens.interval(a.address, False)
    assert focus == pytest.approx(1 / (2 * 0.6))
    assert grid == pytest.approx(2 / (2 * 0.4))
    assert focus < grid
    # within its interval a tile gets the shared frame and when to ask again
    phone_caps = screencaps(a)
    reply = farm.http.get(f"{API}/device/{a.address}/screenshot?view=grid")
    assert screencaps(a) == phone_caps
    assert 0 < int(reply.headers["X-Next-Frame-Ms"]) <= grid * 1000


def test_jpeg_falls_back_to_png_where_the_phone_cannot(farm):
    phone = farm.add_phone()
    reply = farm.http.get(f"{API}/device/{phone.address}/screenshot?format=jpeg")
    assert reply.content_type == "image/png"              # phonesim has no screencap -j
    reply = farm.http.get(f"{API}/device/{phone.address}/screenshot?format=jpeg")
    assert ["screencap", "-j"] in phone.commands("screencap")
    assert phone.commands("screencap").count(["screencap", "-j"]) == 1   # asked once
